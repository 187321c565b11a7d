"""The operator's Prometheus metrics, served at ``/metrics``.

``kmeter_operator_reconciles_total{kind,result}`` counts reconciles (``ok``, ``retry``,
``error``); ``kmeter_operator_reconcile_errors_total{kind,reason}`` counts failures by the
reason put in the resource's conditions; ``kmeter_operator_reconcile_seconds{kind}`` is their
duration. Liveness (``/healthz``) is Kopf's own endpoint, on a port of its own.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

RECONCILES = Counter(
    "kmeter_operator_reconciles", "Reconciles of kmeter resources, by outcome.", ["kind", "result"]
)
RECONCILE_ERRORS = Counter(
    "kmeter_operator_reconcile_errors",
    "Failed or degraded reconciles, by the reason in the resource's conditions.",
    ["kind", "reason"],
)
RECONCILE_SECONDS = Histogram(
    "kmeter_operator_reconcile_seconds",
    "Duration of one reconcile.",
    ["kind"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


async def _metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve_metrics(host: str, port: int) -> web.AppRunner:
    """Start the ``/metrics`` server; the caller cleans the returned runner up."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
