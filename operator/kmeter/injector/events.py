"""Kubernetes Events that say why a pod was admitted without its sidecar, or with a warning.

An Event goes on the pod's controller (its ReplicaSet, Job, …) or, for a bare pod, on its
Namespace (:func:`kmeter.injector.review.workload_of`); ``kubectl get events -n <ns>`` shows
both. Type ``Warning``; reason ``InjectionRefused``, message ``pod <name>: kmeter sidecar not
injected: <why>`` (:data:`REFUSED`), or reason ``InjectionWarning``, message ``pod <name>:
kmeter sidecar injected, but: <warning>`` (:data:`WARNED`: an unknown ``kmeter.io/``
annotation, a typo most likely). The admission warning alone would not do: for a pod a
controller creates, it goes to the controller, and nobody reads it.

One Event per workload and reason: its name is derived from both, and it is written by
server-side apply (the Event is created or updated in one request), with a ``count`` kept
in memory. Writes of one Event are at least :data:`MIN_INTERVAL` seconds apart — a Deployment
scaled to 100 bad pods makes a handful of writes, not 100; the pods in between are counted
into the next write (``coalesced``). Each injector replica counts on its own, so with two
replicas ``count`` is each one's share, and the latest write wins: it is a lower bound.

Events are posted off the admission path (a task): the API server never waits for them, and a
failure to post is logged and counted, nothing more. Dry-run admissions post nothing (the
webhook declares ``sideEffects: NoneOnDryRun``). A 401 (the ServiceAccount token read at start
has expired) logs in again once and retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NamedTuple

from kmeter.injector import metrics
from kmeter.injector.review import Workload
from kmeter.kube.client import KubeApiError, KubeClient, resource_path


class EventKind(NamedTuple):
    """An Event's reason, and how its message begins."""

    reason: str
    lead: str


REFUSED: Final = EventKind("InjectionRefused", "kmeter sidecar not injected")
WARNED: Final = EventKind("InjectionWarning", "kmeter sidecar injected, but")
COMPONENT: Final = "kmeter-injector"
MIN_INTERVAL: Final = 30.0
MAX_MESSAGE: Final = 1024
MAX_TALLIES: Final = 10_000
log = logging.getLogger("kmeter.injector")


@dataclass
class _Tally:
    first: str
    count: int = 0
    last_write: float = float("-inf")


class EventPoster:
    """Posts (coalesced) Events through ``kube``; :meth:`post` never blocks the caller."""

    def __init__(
        self,
        kube: KubeClient,
        min_interval: float = MIN_INTERVAL,
        reconnect: Callable[[], Awaitable[KubeClient | None]] | None = None,
    ) -> None:
        self.kube = kube
        self.reconnect = reconnect
        self.min_interval = min_interval
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, workload: Workload, detail: str, kind: EventKind = REFUSED) -> None:
        """Record that ``workload``'s pod was refused (or injected) with ``detail`` (why, or the
        warning); write the Event soon."""
        name = event_name(workload, detail, kind)
        now = _timestamp()
        if len(self._tallies) >= MAX_TALLIES:
            self._forget_old()
        tally = self._tallies.setdefault((workload.namespace, name), _Tally(first=now))
        tally.count += 1
        if time.monotonic() - tally.last_write < self.min_interval:
            metrics.EVENTS.labels("coalesced").inc()
            return
        tally.last_write = time.monotonic()
        body = event_body(
            workload,
            detail,
            kind,
            name=name,
            first=tally.first,
            last=now,
            count=tally.count,
            instance=self.instance,
        )
        task = asyncio.get_running_loop().create_task(self._write(workload.namespace, name, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget_old(self) -> None:
        """Bound memory: forget Events not written for an hour (a later one starts anew)."""
        horizon = time.monotonic() - 3600
        for key in [key for key, tally in self._tallies.items() if tally.last_write < horizon]:
            del self._tallies[key]

    async def _write(self, namespace: str, name: str, body: dict[str, object]) -> None:
        path = resource_path("v1", "events", namespace, name)
        try:
            try:
                await self.kube.apply(path, body)
            except KubeApiError as error:
                # A ServiceAccount token read at start expires; log in again, once.
                if error.status != 401 or self.reconnect is None:
                    raise
                await self._reconnect()
                await self.kube.apply(path, body)
        except Exception as error:  # an Event is best effort, never fatal
            metrics.EVENTS.labels("failed").inc()
            log.warning("could not post Event %s/%s: %s", namespace, name, error)
        else:
            metrics.EVENTS.labels("posted").inc()

    async def _reconnect(self) -> None:
        assert self.reconnect is not None
        fresh = await self.reconnect()
        if fresh is not None:
            old, self.kube = self.kube, fresh
            await old.close()

    async def close(self) -> None:
        await self.kube.close()

    async def drain(self, within: float = 5.0) -> None:
        """Wait (a bounded time) for Events being written."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within)


def event_name(workload: Workload, detail: str, kind: EventKind = REFUSED) -> str:
    """``<object>.kmeter-<hash>``: one Event per workload, kind and detail."""
    involved = workload.involved_object
    key = f"{involved.get('uid', '')}\0{kind.reason}\0{detail}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{str(involved['name'])[:200]}.kmeter-{digest}"


def event_body(
    workload: Workload,
    detail: str,
    kind: EventKind = REFUSED,
    *,
    name: str,
    first: str,
    last: str,
    count: int,
    instance: str,
) -> dict[str, object]:
    message = f"pod {workload.pod}: {kind.lead}: {detail}"
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": workload.namespace},
        "involvedObject": workload.involved_object,
        "reason": kind.reason,
        "message": message,
        "type": "Warning",
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance[:128],
        "firstTimestamp": first,
        "lastTimestamp": last,
        "count": count,
    }


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
