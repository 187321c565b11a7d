"""The seam between the usage API's HTTP layer and what is behind it.

``kmeter api`` ingests into Kafka and answers queries from the Meters' output topics;
``kmeter dev`` runs the same application (:func:`kmeter.api.app.build_app`) over an embedded
log. The handlers only see these two protocols:

* :class:`EventSink` — where ``POST /api/v1/events`` puts events: :class:`~.ingest.Ingestor`
  (Kafka) or ``kmeter dev``'s local log. ``produce`` returns once the events are durable, and
  raises :class:`~.ingest.KafkaUnavailable` (503, send again) or
  :class:`~.ingest.NoIngestTopic` (409, no Meter in that namespace).
* :class:`MeterViews` — the Meters and their window totals the queries read:
  :class:`~.materializer.Materializer` (Kafka) or ``kmeter dev``'s folds.

And, for ``kmeter dev`` on a developer's machine only, :func:`local_access`: a middleware that
lets every request in without a token, acting in the namespace the path names or else the
default one (``build_app(..., authenticator=None)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from kmeter.api.errors import Handler
from kmeter.api.materializer import MeterView
from kmeter.core.events import UsageEvent

__all__ = ["EventSink", "MeterViews", "local_access"]


class EventSink(Protocol):
    """Where ingested events go."""

    async def produce(self, namespace: str, events: Sequence[UsageEvent]) -> None:
        """Store ``events`` durably in ``namespace``'s ingest log, or raise."""
        ...


class MeterViews(Protocol):
    """The Meters served, each with its totals."""

    @property
    def views(self) -> Mapping[tuple[str, str], MeterView]:
        """Every Meter by (namespace, name)."""
        ...

    @property
    def ready(self) -> bool:
        """Whether every Meter's totals are up to date (``/readyz``)."""
        ...

    def get(self, namespace: str, name: str) -> MeterView | None: ...

    def in_namespace(self, namespace: str) -> list[MeterView]: ...


def local_access(default_namespace: str) -> Any:
    """A middleware granting every request its namespace without a token (``kmeter dev``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        named = request.match_info.get("namespace")
        request["namespaces"] = frozenset({named or default_namespace})
        return await handler(request)

    return middleware
