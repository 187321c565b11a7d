"""``kmeter api``: settings, the aiohttp application, and running it.

Routes (see :mod:`.openapi` for the full contract):

| route | what |
|---|---|
| ``POST /api/v1/events`` | ingest (:mod:`.ingest`) |
| ``GET /api/v1/meters`` ``/{meter}`` ``/{meter}/query`` ``/{meter}/subjects`` | :mod:`.query` |
| ``GET /api/v1/quotas`` ``/{quota}/subjects/{subject}`` | :mod:`.quotas` |
| the same under ``/api/v1/namespaces/{namespace}/`` | explicit namespace (403 if not the token's) |
| ``GET /openapi.json`` ``/healthz`` ``/readyz`` | no token needed |
| ``GET /metrics`` | on ``--metrics-port`` when given (the chart does), else here; no token |

``/metrics`` has every tenant's namespace and Meter names and ingest counts in its labels, so
a deployment that tenants reach serves it on a port of its own, which the chart does not put
on the Service (Prometheus scrapes the pods); ``/readyz`` says how many Meters are loading,
not which.

Start-up: the tokens and the list of Meters are loaded, the HTTP server starts at once
(``/healthz`` answers), and ``/readyz`` turns 200 once the Meters' totals are read up to date
(:mod:`.materializer`). Kafka may be down at start: ingest answers 503 until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kmeter.api import metrics, openapi
from kmeter.api.auth import Authenticator, FileTokens, SecretTokens, TokenSource, auth_middleware
from kmeter.api.backends import EventSink, MeterViews, local_access
from kmeter.api.encoding import dumps
from kmeter.api.errors import Handler, problem_middleware, problem_response
from kmeter.api.ingest import Ingestor, make_handler
from kmeter.api.materializer import Materializer
from kmeter.api.meters import KubeMeters, ManifestMeters, MeterSource
from kmeter.api.query import routes
from kmeter.api.quotas import QuotaMaterializer, QuotaViews, add_routes
from kmeter.kafka.settings import KafkaSettings
from kmeter.kube.client import KubeClient
from kmeter.logging_setup import configure_logging

log = logging.getLogger("kmeter.api")


@dataclass(frozen=True)
class ApiSettings:
    """How ``kmeter api`` runs (the command's options)."""

    kafka_bootstrap: str
    host: str = "0.0.0.0"
    port: int = 8888
    manifests: Path | None = None
    """A folder of Meter manifests; None: Meters from the Kubernetes API."""
    default_namespace: str = "default"
    tokens: Path | None = None
    """A tokens file; None: Secrets labelled kmeter.io/api-token from the Kubernetes API."""
    refresh_seconds: float = 5.0
    produce_timeout_s: float = 10.0
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 10_000
    metrics_port: int | None = None
    """``/metrics`` on a listener of its own; None: on ``port`` (``kmeter dev``, tests)."""

    def kafka(self, environ: Mapping[str, str] | None = None) -> KafkaSettings:
        """The Kafka connection: ``kafka_bootstrap``, with TLS and SASL from the ``KMETER_KAFKA_*``
        variables the chart sets (:meth:`KafkaSettings.from_environment`); ValueError says what
        is wrong."""
        environ = os.environ if environ is None else environ
        return KafkaSettings.from_environment(
            {**environ, "KMETER_KAFKA_BOOTSTRAP": self.kafka_bootstrap}, client_id="kmeter-api"
        )


def _request_metrics() -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.REQUESTS.labels(route, request.method, str(status)).inc()
            metrics.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - began)

    return middleware


def build_app(
    settings: ApiSettings,
    *,
    authenticator: Authenticator | None,
    materializer: MeterViews,
    ingestor: EventSink,
    quotas: QuotaViews | None = None,
) -> web.Application:
    """The application; the caller starts and stops the parts it is given.

    ``authenticator=None`` (``kmeter dev`` only): no token is asked for; a request acts in the
    namespace its path names, else in ``settings.default_namespace``.
    """
    access = (
        local_access(settings.default_namespace)
        if authenticator is None
        else auth_middleware(authenticator)
    )
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_request_metrics(), problem_middleware, access],
    )
    handlers = routes(materializer)
    ingest = make_handler(ingestor, settings.max_batch)
    for prefix in ("/api/v1", "/api/v1/namespaces/{namespace}"):
        app.router.add_post(f"{prefix}/events", ingest)
        app.router.add_get(f"{prefix}/meters", handlers["listMeters"])
        app.router.add_get(f"{prefix}/meters/{{meter}}", handlers["getMeter"])
        app.router.add_get(f"{prefix}/meters/{{meter}}/query", handlers["queryMeter"])
        app.router.add_get(f"{prefix}/meters/{{meter}}/subjects", handlers["listMeterSubjects"])
    if quotas is not None:
        add_routes(app, quotas, ("/api/v1", "/api/v1/namespaces/{namespace}"))

    document = dumps(openapi.document())

    async def openapi_json(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def readyz(_: web.Request) -> web.Response:
        if authenticator is not None and not authenticator.loaded:
            return problem_response(503, "the API tokens are not loaded yet")
        if not materializer.ready:
            # how many, not which: no token is asked here, and Meter names are a tenant's
            waiting = sum(1 for view in materializer.views.values() if not view.ready)
            return problem_response(
                503,
                f"still reading the totals of {waiting} Meter(s)" if waiting else "listing Meters",
            )
        return web.Response(body=b'{"status":"ready"}', content_type="application/json")

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if settings.metrics_port is None:
        app.router.add_get("/metrics", _metrics_handler(materializer))
    return app


def _metrics_handler(materializer: MeterViews) -> Handler:
    async def metrics_text(_: web.Request) -> web.Response:
        metrics.READY.set(1 if materializer.ready else 0)
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics_text


def metrics_app(materializer: MeterViews) -> web.Application:
    """``/metrics`` alone, for ``--metrics-port``."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics_handler(materializer))
    return app


async def _kube_client() -> KubeClient:
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise RuntimeError("no Kubernetes credentials: no service account and no KUBECONFIG")
    return KubeClient(info)


@contextlib.asynccontextmanager
async def running(settings: ApiSettings) -> AsyncIterator[web.AppRunner]:
    """Start everything, serve, and stop it all on exit."""
    kube = None
    if settings.manifests is None or settings.tokens is None:
        kube = await _kube_client()
    source: MeterSource
    if settings.manifests is not None:
        source = ManifestMeters(settings.manifests, settings.default_namespace)
    else:
        assert kube is not None
        source = KubeMeters(kube)
    token_source: TokenSource
    if settings.tokens is not None:
        token_source = FileTokens(settings.tokens)
    else:
        assert kube is not None
        token_source = SecretTokens(kube)
    kafka = settings.kafka()
    authenticator = Authenticator(token_source, refresh_seconds=settings.refresh_seconds)
    materializer = Materializer(kafka, source, refresh_seconds=settings.refresh_seconds)
    ingestor = Ingestor(kafka, timeout_s=settings.produce_timeout_s)
    await authenticator.refresh()
    await materializer.refresh()
    quotas = QuotaMaterializer(kafka, materializer)
    app = build_app(
        settings,
        authenticator=authenticator,
        materializer=materializer,
        ingestor=ingestor,
        quotas=quotas,
    )
    runner = web.AppRunner(app, access_log=None)
    listeners = [(runner, settings.port)]
    if settings.metrics_port is not None:
        metrics_runner = web.AppRunner(metrics_app(materializer), access_log=None)
        listeners.append((metrics_runner, settings.metrics_port))
    serving: list[web.AppRunner] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        for each, port in listeners:  # a port that cannot be had stops everything started
            await each.setup()
            serving.append(each)
            await _listen(each, settings.host, port)
        tasks = [
            asyncio.create_task(authenticator.run(), name="refresh tokens"),
            asyncio.create_task(materializer.run(), name="refresh meters"),
            asyncio.create_task(
                quotas.run(settings.refresh_seconds), name="follow quota decisions"
            ),
        ]
        log.info("kmeter api listening on %s:%d", settings.host, settings.port)
        yield runner
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for each in serving:
            await each.cleanup()
        await materializer.close()
        await quotas.close()
        await ingestor.close()
        if kube is not None:
            await kube.close()


async def _listen(runner: web.AppRunner, host: str, port: int) -> None:
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:  # one line, not a traceback: a port in use, say
        raise SystemExit(f"kmeter api: cannot listen on {host}:{port}: {error}") from None


async def serve(settings: ApiSettings) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(settings):
        await stop.wait()


def run(settings: ApiSettings) -> None:
    """The ``kmeter api`` command."""
    configure_logging(logging.INFO, quieter=["aiokafka"])
    logging.getLogger("aiokafka.cluster").addFilter(_unknown_topic_noise)
    asyncio.run(serve(settings))


def _unknown_topic_noise(record: logging.LogRecord) -> bool:
    """Drop aiokafka's ERROR for a topic that does not exist: any client can cause one at will
    (events for a namespace without Meters, answered 409), and the materializer asks about a
    Meter's totals topic every second until the operator made it."""
    return "not found in cluster metadata" not in record.getMessage()
