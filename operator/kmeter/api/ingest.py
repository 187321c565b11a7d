"""``POST /api/v1/events``: usage events into the namespace's ingest topic, 204 once durable.

* **Content types** (as OpenMeter): ``application/cloudevents+json`` (one event object),
  ``application/cloudevents-batch+json`` (a JSON array of events), ``application/json`` (either).
  Anything else: 415.
* **All or nothing**: a body with any invalid event is refused whole with 400 and a
  ``validationErrors`` list naming each invalid event's index and field; nothing of it is
  produced. A client fixes or drops the bad events and sends the batch again.
* **Durable before 204**: every event is produced with ``acks=all`` by an idempotent producer
  and the answer waits for Kafka's acknowledgement of each. 204 therefore means every event is
  in the ingest topic's in-sync replicas. The record key is the event's ``subject`` (so a
  subject's events stay in order in one partition), the value the event as CloudEvents JSON with
  its ``time`` fixed (the ingest time when it had none).
* **Kafka unreachable** (or no acknowledgement within ``--produce-timeout``): 503 with
  ``Retry-After``. Some events of that request may have been written: the client sends the batch
  again, and the worker's deduplication by (``source``, ``id``) counts each event once — so
  producers must give events stable ids (docs/guarantees.md).
* **No ingest topic** for the namespace (no Meter there yet: the operator creates the topic with
  the first Meter): 409.
* **Limits**: a body of at most ``--max-body-bytes`` (default 4 MiB) and ``--max-batch``
  events (default 10,000); above: 413.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from kmeter import topics
from kmeter.api import metrics
from kmeter.api.auth import namespace_of
from kmeter.api.backends import EventSink
from kmeter.api.errors import ApiError
from kmeter.core.events import InvalidEventError, UsageEvent, decode_events, encode_event
from kmeter.kafka.clients import started
from kmeter.kafka.partitions import KeyPartitions
from kmeter.kafka.settings import KafkaSettings

log = logging.getLogger("kmeter.api.ingest")

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
CONTENT_TYPES = (SINGLE, BATCH, JSON)
RETRY_AFTER_SECONDS = 5
MAX_REPORTED = 100


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge in time or cannot be reached."""


class NoIngestTopic(Exception):
    """The namespace has no ingest topic (no Meter yet)."""


class Ingestor:
    """One idempotent producer (``acks=all``) shared by all requests."""

    def __init__(self, kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._starting = asyncio.Lock()
        self._partitions = KeyPartitions()

    async def _started(self) -> Any:
        async with self._starting:
            if self._producer is None:
                options = {**self.kafka.client_options(), "client_id": "kmeter-api"}
                producer = AIOKafkaProducer(
                    **options,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=2,
                    max_batch_size=512 * 1024,
                    max_request_size=8 * 1024 * 1024,
                )
                self._producer = await started(producer)
            return self._producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _partition_count(self, producer: Any, topic: str) -> int:
        """The topic's partitions in the producer's metadata, fetched when it has none yet;
        :class:`NoIngestTopic` when Kafka does not know the topic."""
        client = producer.client
        partitions = client.cluster.partitions_for_topic(topic)
        if partitions:
            return len(partitions)
        client.add_topic(topic)
        if not await client.force_metadata_update():
            raise KafkaUnavailable("no broker answered a metadata request")
        partitions = client.cluster.partitions_for_topic(topic)
        if not partitions:
            raise NoIngestTopic(topic)
        return len(partitions)

    async def produce(self, namespace: str, events: Sequence[UsageEvent]) -> None:
        """Write ``events`` to the namespace's ingest topic; return once Kafka acknowledged all.

        Raises :class:`KafkaUnavailable` or :class:`NoIngestTopic`.
        """
        topic = topics.ingest_topic(namespace)
        try:
            async with asyncio.timeout(self.timeout_s):
                producer = await self._started()
                count = await self._partition_count(producer, topic)
                began = time.perf_counter()
                send = producer.send
                # The partition send() would choose, without its murmur2 per event.
                choose = self._partitions.chooser(count)
                pending = []
                for event in events:
                    key = event.subject.encode()
                    value = encode_event(event)
                    try:
                        pending.append(await send(topic, value, key=key, partition=choose(key)))
                    except AssertionError:  # aiokafka's check that a given partition exists
                        raise KafkaUnavailable(
                            f"{topic} lost partitions while producing (deleted and created again?)"
                        ) from None
                await asyncio.gather(*pending)
                metrics.PRODUCE_SECONDS.observe(time.perf_counter() - began)
        except TimeoutError:
            raise KafkaUnavailable(f"no acknowledgement within {self.timeout_s:g} s") from None
        except KafkaConnectionError as error:
            raise KafkaUnavailable(str(error)) from None
        except KafkaError as error:
            log.warning("producing to %s failed: %r; recreating the producer", topic, error)
            await self._reset()
            raise KafkaUnavailable(str(error)) from None

    async def _reset(self) -> None:
        async with self._starting:
            producer, self._producer = self._producer, None
        if producer is not None:
            asyncio.create_task(producer.stop())  # noqa: RUF006 - let it flush in the background


def _validation_errors(problems: dict[int, Any], was_array: bool) -> list[dict[str, Any]]:
    errors = []
    for index, found in sorted(problems.items()):
        for problem in found:
            error: dict[str, Any] = {
                "field": problem.field,
                "code": "invalid_event",
                "message": problem.reason,
            }
            if was_array:
                error["index"] = index
            errors.append(error)
    return errors


def make_handler(ingestor: EventSink, max_batch: int) -> Any:
    """The aiohttp handler of ``POST /api/v1/events``."""

    async def ingest(request: web.Request) -> web.Response:
        namespace = namespace_of(request)
        # aiohttp says application/octet-stream for a request without the header
        content_type = request.content_type if "Content-Type" in request.headers else ""
        if content_type not in CONTENT_TYPES:
            raise ApiError(
                415,
                f"Content-Type {content_type or '(none)'} is not accepted; use "
                + ", ".join(CONTENT_TYPES),
            )
        body = await request.read()
        try:
            batch = decode_events(body, ingest_time=datetime.now(UTC))
        except InvalidEventError as error:
            metrics.EVENTS_REFUSED.labels("invalid").inc()
            raise ApiError(
                400,
                f"the body is not usable: {error}",
                extensions={"validationErrors": _validation_errors({0: error.problems}, False)},
            ) from None
        if content_type == SINGLE and batch.was_array:
            raise ApiError(400, f"body: {SINGLE} takes one event object; send arrays as {BATCH}")
        if content_type == BATCH and not batch.was_array:
            raise ApiError(400, f"body: {BATCH} takes a JSON array of events")
        size = len(batch.events) + len(batch.problems)
        if size > max_batch:
            metrics.EVENTS_REFUSED.labels("too_large").inc(size)
            raise ApiError(413, f"a batch has at most {max_batch} events, this one has {size}")
        if not batch.ok:
            metrics.EVENTS_REFUSED.labels("invalid").inc(size)
            messages = batch.messages()
            shown = "; ".join(messages[:20]) + ("; ..." if len(messages) > 20 else "")
            invalid = len(batch.problems)
            raise ApiError(
                400,
                f"{invalid} of {size} events are invalid, so none was accepted: {shown}",
                extensions={
                    "validationErrors": _validation_errors(dict(batch.problems), batch.was_array)[
                        :MAX_REPORTED
                    ]
                },
            )
        if batch.events:
            try:
                await ingestor.produce(namespace, batch.events)
            except KafkaUnavailable as error:
                metrics.EVENTS_REFUSED.labels("kafka_unavailable").inc(size)
                raise ApiError(
                    503,
                    f"Kafka did not acknowledge the events ({error}); none may be counted "
                    "twice: send the same events again",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                ) from None
            except NoIngestTopic:
                metrics.EVENTS_REFUSED.labels("no_topic").inc(size)
                raise ApiError(
                    409,
                    f"namespace {namespace!r} has no ingest topic yet: it is created with the "
                    "namespace's first Meter",
                ) from None
            metrics.EVENTS_INGESTED.labels(namespace).inc(len(batch.events))
        return web.Response(status=204)

    return ingest
