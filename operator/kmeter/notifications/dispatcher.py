"""The worker's notification deliverer: notifications topic → Kubernetes Events and webhooks.

It runs in the worker process as a task of its own, with its own consumer (group
:func:`kmeter.topics.notifications_consumer_group`, ``read_committed``), so delivery never
blocks evaluation: a slow or failing webhook delays only later notifications of its partition.
It delivers the notifications of this worker's Meter (``meter`` field); the Quota's webhook and
uid come from the current quota file, so a Quota gone gets no more webhooks.

**At least once.** A record's offset is committed only after its Event was posted (or failed)
and its webhook delivered (or given up, :mod:`.webhook`). A crash or rebalance in between
redelivers from the last commit: receivers deduplicate by the notification ``id``
(``X-Kmeter-Delivery``), and the Event of a redelivery rewrites the same Event. Notifications of
an aborted worker transaction are never seen (``read_committed``), so a threshold reaches the
receivers only once it has fired for good.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter

from kmeter import topics
from kmeter.kafka.admin import KafkaAdmin
from kmeter.kafka.clients import running
from kmeter.kafka.settings import KafkaSettings
from kmeter.kafka.topics import describe_topics
from kmeter.kube.client import KubeClient
from kmeter.notifications import webhook
from kmeter.notifications.events import post_event
from kmeter.worker.quotas import QuotaFile

log = logging.getLogger("kmeter.notifications")
TOPIC_CHECK_S = 10.0


class Dispatcher:
    """Delivers one Meter's notifications (see the module documentation)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        namespace: str,
        meter: str,
        quota_file: QuotaFile,
        secrets_dir: str,
        registry: CollectorRegistry,
        kube: KubeClient | None = None,
        waits: list[float] | None = None,
    ) -> None:
        self.kafka = kafka
        self.namespace = namespace
        self.meter = meter
        self.quota_file = quota_file
        self.secrets = webhook.SecretFiles(Path(secrets_dir))
        self.kube = kube
        self.waits = waits
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self.delivered = Counter(
            "kmeter_worker_notifications",
            "Quota notifications handled by channel (event, webhook) and result "
            "(delivered, failed, skipped).",
            ("channel", "result"),
            registry=registry,
        )

    async def _topic_exists(self) -> bool:
        """Whether the notifications topic exists (looked up without creating it)."""
        name = topics.notifications_topic(self.namespace)
        async with KafkaAdmin(self.kafka) as admin:
            return name in await describe_topics(admin, [name])

    async def run(self) -> None:
        """Deliver forever, reconnecting with backoff; cancel to stop. Waits for the
        notifications topic to exist first (the operator creates it with the Meter's)."""
        delay = 0.5
        while True:
            try:
                if not await self._topic_exists():
                    await asyncio.sleep(TOPIC_CHECK_S)
                    continue
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("notification delivery stopped (%r); resuming in %.1f s", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            topics.notifications_topic(self.namespace),
            **self.kafka.client_options(),
            group_id=topics.notifications_consumer_group(self.namespace, self.meter),
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_poll_interval_ms=900_000,  # a webhook may retry for minutes
        )
        async with running(consumer), aiohttp.ClientSession() as session:
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=100)
                for tp, records in batch.items():
                    for record in records:
                        await self._handle(session, record.value)
                        await consumer.commit(
                            {
                                TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                                    record.offset + 1, ""
                                )
                            }
                        )

    async def _handle(self, session: aiohttp.ClientSession, value: bytes | None) -> None:
        try:
            notification: dict[str, Any] = orjson.loads(value or b"")
            if not isinstance(notification, dict) or notification.get("kind") != "threshold":
                raise ValueError("not a threshold notification")
        except (orjson.JSONDecodeError, ValueError):
            self.delivered.labels("any", "skipped").inc()
            return
        if notification.get("meter") != self.meter:
            return  # another Meter's workers deliver it
        entry = self.quota_file.current.quotas.get(str(notification.get("quota")))
        uid = None if entry is None else entry.uid
        if self.kube is not None:
            try:
                await post_event(self.kube, notification, uid=uid, instance=self.instance)
            except Exception as error:
                self.delivered.labels("event", "failed").inc()
                log.warning("could not post the Event of %s: %s", notification.get("id"), error)
            else:
                self.delivered.labels("event", "delivered").inc()
        hook = None if entry is None else entry.webhook
        if hook is None:
            return
        secret_name, secret_key = hook.secret_name, hook.secret_key

        def key() -> bytes | None:
            if secret_name is None or secret_key is None:
                return None
            return self.secrets.key(secret_name, secret_key)

        def url() -> str:
            if hook.url is not None:
                return hook.url
            assert hook.url_secret_name is not None
            assert hook.url_secret_key is not None
            return self.secrets.url(hook.url_secret_name, hook.url_secret_key)

        target = (
            f"webhook {hook.url}"
            if hook.url is not None
            else f"webhook of Quota {notification.get('quota')} (URL in Secret "
            f"{hook.url_secret_name}/{hook.url_secret_key})"
        )
        body = value or b""
        delivered = await webhook.deliver(
            session,
            url,
            body,
            delivery=str(notification["id"]),
            key=key,
            waits=self.waits,
            target=target,
        )
        self.delivered.labels("webhook", "delivered" if delivered else "failed").inc()


async def kube_client() -> KubeClient | None:
    """Credentials for Events: the pod's ServiceAccount, else ``KUBECONFIG``; None: no Events."""
    import kopf  # noqa: PLC0415 - only for its login helpers, and only in the worker process

    settings = kopf.OperatorSettings()
    try:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
    except Exception as error:
        log.warning("no Kubernetes credentials (%s): no Events on Quotas", error)
        return None
    if info is None:
        log.warning("no Kubernetes credentials: no Events on Quotas")
        return None
    return KubeClient(info)
