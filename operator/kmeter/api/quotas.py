"""The Quota endpoints, from the namespaces' decisions topics materialized in memory.

* ``GET /api/v1/quotas`` — the namespace's Quotas: ``{"items": [{"name", "meter", "limit",
  "period", "timeZone", "enforcement", "subjectsOver", "subjectsNear"}]}``, sorted by name.
* ``GET /api/v1/quotas/{quota}/subjects/{subject}`` — one subject's standing this period:
  ``used``, ``limit``, ``remaining``, ``periodStart``, ``resetsAt`` (the period's end),
  ``blocked``, plus ``quota``, ``subject``, ``enforcement`` and ``notified`` (the ``notifyAt``
  thresholds fired this period). A subject without usage this period has ``used: "0"`` and its
  limit. 404 for a Quota not in the namespace, or a subject the Quota does not apply to.

Numbers are exact decimals as JSON strings, times RFC 3339 UTC, as in the decisions records.
Both also answer under ``/api/v1/namespaces/{namespace}/`` (403 for another tenant's namespace,
as for Meters).

**Source.** :class:`QuotaMaterializer` reads ``kmeter.<ns>.quota-decisions`` — every partition,
assigned, ``read_committed``, from the beginning (it is compacted) — for every namespace that
has a Meter (the Meter materializer's list), keeping each Quota's policy and each subject's
latest decision (by ``evaluatedAt`` when one key appears in two partitions, which happens after
the ingest topic grows). A decision counts only while in force (``periodStart <= now <
periodEnd``): after the period, the subject starts from nothing, as at the sidecars. "Now" is
the wall clock plus ``KMETER_CLOCK_OFFSET_SECONDS`` (the testing knob the worker and the sidecar
honour). The Quotas are what the workers published (``policy/<quota>`` records): a Quota
appears once its Meter's worker has read it, and goes with the tombstone written when it is
removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from kmeter import decisions, topics
from kmeter.api.auth import namespace_of
from kmeter.api.encoding import dumps
from kmeter.api.errors import ApiError
from kmeter.api.materializer import Materializer
from kmeter.core.quota import period_at
from kmeter.core.windows import WindowSize, time_zone
from kmeter.decisions import QuotaPolicy, SubjectDecision
from kmeter.kafka.clients import running
from kmeter.kafka.settings import KafkaSettings
from kmeter.worker.quotas import clock_offset

log = logging.getLogger("kmeter.api.quotas")


@dataclass
class QuotaBook:
    """One namespace's Quotas: policies and the latest decision per (Quota, subject)."""

    policies: dict[str, QuotaPolicy] = field(default_factory=dict)
    decisions: dict[tuple[str, str], SubjectDecision] = field(default_factory=dict)
    unreadable: int = 0
    caught_up: bool = False
    """Whether the topic was read up to its end (as of when it was first assigned) once."""

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the decisions topic (a tombstone removes)."""
        if key is None:
            self.unreadable += 1
            return
        try:
            quota, subject = decisions.parse_key(key)
            if subject is None:
                if value is None:
                    self.policies.pop(quota, None)
                else:
                    self.policies[quota] = decisions.decode_policy(value)
                return
            if value is None:
                self.decisions.pop((quota, subject), None)
                return
            decision = decisions.decode_decision(value)
        except decisions.DecisionFormatError:
            self.unreadable += 1
            return
        current = self.decisions.get((quota, subject))
        if current is None or decision.evaluated_at >= current.evaluated_at:
            self.decisions[(quota, subject)] = decision

    def counts(self, quota: str, now: datetime) -> tuple[int, int]:
        """(subjects over, subjects near) of ``quota`` among decisions in force at ``now``."""
        over = near = 0
        for (name, _), decision in self.decisions.items():
            if name != quota or not decision.in_force(now):
                continue
            if decision.used >= decision.limit:
                over += 1
            elif any(threshold < 100 for threshold in decision.notified):
                near += 1
        return over, near


class QuotaViews(Protocol):
    """What the Quota endpoints read: a namespace's :class:`QuotaBook`, and the clock."""

    def book(self, namespace: str) -> QuotaBook | None: ...

    def now(self) -> datetime: ...


@dataclass
class _Follower:
    book: QuotaBook
    task: asyncio.Task[None] | None = None


class QuotaMaterializer:
    """Follows the decisions topic of every namespace the Meter materializer serves (the
    usage API), or of each namespace asked for with :meth:`follow` (the operator, for the
    Quotas' status)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        meters: Materializer | None = None,
        offset: timedelta | None = None,
    ) -> None:
        self.kafka = kafka
        self.meters = meters
        self.offset = clock_offset(os.environ) if offset is None else offset
        self.followers: dict[str, _Follower] = {}

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def book(self, namespace: str) -> QuotaBook | None:
        follower = self.followers.get(namespace)
        return None if follower is None else follower.book

    def follow(self, namespace: str) -> QuotaBook:
        """The namespace's book, following its decisions topic from now on."""
        follower = self.followers.get(namespace)
        if follower is None:
            follower = _Follower(QuotaBook())
            follower.task = asyncio.create_task(
                self._follow(namespace, follower.book), name=f"quota decisions {namespace}"
            )
            self.followers[namespace] = follower
        return follower.book

    def refresh(self) -> None:
        """Follow the namespaces that have Meters; stop following the others."""
        if self.meters is None:
            return
        wanted = {namespace for namespace, _ in self.meters.views}
        for namespace in list(self.followers):
            if namespace not in wanted:
                follower = self.followers.pop(namespace)
                if follower.task is not None:
                    follower.task.cancel()
        for namespace in wanted:
            self.follow(namespace)

    async def run(self, refresh_seconds: float) -> None:
        while True:
            self.refresh()
            await asyncio.sleep(refresh_seconds)

    async def close(self) -> None:
        tasks = [f.task for f in self.followers.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.followers.clear()

    async def _follow(self, namespace: str, book: QuotaBook) -> None:
        positions: dict[TopicPartition, int] = {}
        delay = 0.5
        while True:
            try:
                await self._read(topics.quota_decisions_topic(namespace), book, positions)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError, TimeoutError) as error:
                log.warning("reading the quota decisions of %s: %r", namespace, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _read(
        self, topic: str, book: QuotaBook, positions: dict[TopicPartition, int]
    ) -> None:
        consumer = AIOKafkaConsumer(
            **{**self.kafka.client_options(), "client_id": "kmeter-api"},
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        async with running(consumer):
            assigned: set[TopicPartition] = set()
            targets: dict[TopicPartition, int] = {}
            loop = asyncio.get_running_loop()
            checked = -1e9
            while True:
                if loop.time() - checked >= 5.0:
                    checked = loop.time()
                    found = await Materializer._partitions(consumer, topic)
                    if found is not None and found != assigned:
                        await Materializer._assign(consumer, found, positions)
                        assigned = found
                        targets = await consumer.end_offsets(list(found))
                if not assigned:
                    await asyncio.sleep(1.0)
                    continue
                batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
                for partition, records in batch.items():
                    for record in records:
                        book.apply(record.key, record.value)
                    positions[partition] = records[-1].offset + 1
                if not book.caught_up:
                    for partition in assigned:
                        positions[partition] = await consumer.position(partition)
                    book.caught_up = all(positions.get(tp, 0) >= end for tp, end in targets.items())


# --- the answers -------------------------------------------------------------------------------


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def quota_item(policy: QuotaPolicy, book: QuotaBook, now: datetime) -> dict[str, Any]:
    over, near = book.counts(policy.quota, now)
    return {
        "name": policy.quota,
        "meter": policy.meter,
        "limit": str(policy.limit),
        "period": policy.period,
        "timeZone": policy.time_zone,
        "enforcement": policy.enforcement,
        "subjectsOver": over,
        "subjectsNear": near,
    }


def subject_standing(
    policy: QuotaPolicy, decision: SubjectDecision | None, subject: str, now: datetime
) -> dict[str, Any]:
    """A subject's standing at ``now`` from its latest decision (if still in force)."""
    if decision is not None and decision.in_force(now):
        used, limit = decision.used, decision.limit
        start, end = decision.period_start, decision.period_end
        blocked, notified = decision.blocked, list(decision.notified)
    else:
        period = period_at(now, WindowSize(policy.period), time_zone(policy.time_zone))
        used, limit = Decimal(0), policy.limit_for(subject)
        start, end = period.start, period.end
        blocked, notified = False, []
    return {
        "quota": policy.quota,
        "subject": subject,
        "used": str(used),
        "limit": str(limit),
        "remaining": str(max(limit - used, Decimal(0))),
        "periodStart": _time(start),
        "resetsAt": _time(end),
        "blocked": blocked,
        "enforcement": policy.enforcement,
        "notified": notified,
    }


def _book(request: web.Request, views: QuotaViews) -> QuotaBook:
    namespace = namespace_of(request)
    return views.book(namespace) or QuotaBook()


def routes(views: QuotaViews) -> dict[str, Any]:
    """The handlers by OpenAPI operation id."""

    async def list_quotas(request: web.Request) -> web.Response:
        book = _book(request, views)
        now = views.now()
        items = [quota_item(book.policies[name], book, now) for name in sorted(book.policies)]
        return web.Response(body=dumps({"items": items}), content_type="application/json")

    async def get_quota_subject(request: web.Request) -> web.Response:
        namespace = namespace_of(request)
        book = views.book(namespace) or QuotaBook()
        name, subject = request.match_info["quota"], request.match_info["subject"]
        policy = book.policies.get(name)
        if policy is None:
            raise ApiError(404, f"there is no Quota {name!r} in namespace {namespace!r}")
        if not policy.applies_to(subject):
            raise ApiError(404, f"Quota {name!r} does not apply to subject {subject!r}")
        standing = subject_standing(
            policy, book.decisions.get((name, subject)), subject, views.now()
        )
        return web.Response(body=dumps(standing), content_type="application/json")

    return {"listQuotas": list_quotas, "getQuotaSubject": get_quota_subject}


def add_routes(app: web.Application, views: QuotaViews, prefixes: Iterable[str]) -> None:
    handlers = routes(views)
    for prefix in prefixes:
        app.router.add_get(f"{prefix}/quotas", handlers["listQuotas"])
        app.router.add_get(
            f"{prefix}/quotas/{{quota}}/subjects/{{subject}}", handlers["getQuotaSubject"]
        )
