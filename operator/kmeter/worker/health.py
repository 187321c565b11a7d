"""The worker's small HTTP servers: ``/metrics`` on one port, ``/healthz`` and ``/readyz`` on
another (as the operator's Deployment expects: 9090 and 8080).

* ``/healthz`` answers 200 while the event loop runs (a wedged loop fails the probe).
* ``/readyz`` answers 200 once the worker has joined its consumer group and restored every
  partition it owns, 503 otherwise (at start, and while a rebalance or an error has a
  partition rebuilding).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Servers:
    """Both servers; :meth:`start` binds them, :meth:`stop` closes them."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        *,
        metrics_port: int,
        health_port: int,
        host: str = "0.0.0.0",
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._ports = (metrics_port, health_port)
        self._host = host
        self._runners: list[web.AppRunner] = []

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="restoring partitions\n")

    async def start(self) -> None:
        metrics = web.Application()
        metrics.router.add_get("/metrics", self._metrics)
        health = web.Application()
        health.router.add_get("/healthz", self._healthz)
        health.router.add_get("/readyz", self._readyz)
        for app, port in zip((metrics, health), self._ports, strict=True):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, self._host, port).start()
            self._runners.append(runner)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
