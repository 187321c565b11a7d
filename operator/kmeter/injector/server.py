"""``kmeter injector``: the mutating admission webhook, served over HTTPS by aiohttp.

Routes, all on the one HTTPS port:

* ``POST /mutate`` — an ``admission.k8s.io/v1`` AdmissionReview of a Pod CREATE
  (:func:`kmeter.injector.review.admit`). Always ``200`` with ``allowed: true`` when the body
  is a review; a body that is not one gets ``400`` (the API server then applies the webhook's
  ``failurePolicy: Ignore`` and creates the pod unchanged).
* ``GET /healthz`` — 200 while the event loop runs;
* ``GET /readyz`` — 200 while serving, 503 from SIGTERM on, so the Service stops sending
  reviews here before the listener closes (``KMETER_INJECTOR_SHUTDOWN_DELAY``);
* ``GET /metrics`` — Prometheus text (:mod:`kmeter.injector.metrics`).

The webhook is stateless: any replica answers any review, so the chart runs two behind a
Service with a PodDisruptionBudget; it does not depend on the operator, which may restart.
Kubernetes credentials (the ServiceAccount, else ``KUBECONFIG``) are used only to post Events;
without any, Events are off and admissions work the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kmeter.injector import metrics
from kmeter.injector.certificates import ServingCertificate
from kmeter.injector.events import WARNED, EventPoster
from kmeter.injector.review import admit
from kmeter.injector.settings import InjectorSettings
from kmeter.kube.client import KubeClient
from kmeter.logging_setup import configure_logging

log = logging.getLogger("kmeter.injector")
MAX_REVIEW_BYTES = 8 << 20


@dataclass
class Injector:
    """The running webhook's state."""

    settings: InjectorSettings
    events: EventPoster | None = None
    certificate: ServingCertificate | None = None
    ready: bool = True
    started: float = field(default_factory=time.monotonic)

    async def mutate(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            review = orjson.loads(await request.read())
            if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
                raise ValueError("not an AdmissionReview: no request")
        except ValueError as error:
            metrics.ADMISSIONS.labels("malformed").inc()
            return web.json_response({"error": f"expected an AdmissionReview: {error}"}, status=400)
        admission = admit(review, self.settings)
        metrics.ADMISSIONS.labels(admission.outcome).inc()
        metrics.ADMISSION_SECONDS.observe(time.perf_counter() - started)
        self._report(admission.outcome, review, admission.refusal, admission.error)
        if admission.workload is not None and not admission.dry_run and self.events is not None:
            try:
                if admission.refusal is not None:
                    self.events.post(admission.workload, admission.refusal)
                for warning in admission.warnings:
                    self.events.post(admission.workload, warning, WARNED)
            except Exception:  # pragma: no cover - posting is best effort
                log.exception("could not queue an Event")
        return web.Response(body=orjson.dumps(admission.response), content_type="application/json")

    def _report(
        self, outcome: str, review: dict[str, object], refusal: str | None, error: str | None
    ) -> None:
        request = review.get("request")
        where = ""
        if isinstance(request, dict):
            obj = request.get("object") if isinstance(request.get("object"), dict) else {}
            meta = (obj or {}).get("metadata") or {}
            pod = meta.get("name") or f"{meta.get('generateName') or ''}*"
            where = f"{request.get('namespace')}/{pod}"
        if outcome == "error":
            log.error("pod %s admitted unchanged after an internal error:\n%s", where, error)
        elif outcome == "refused":
            log.warning("pod %s: sidecar not injected: %s", where, refusal)
        elif outcome == "injected":
            log.info("pod %s: sidecar injected", where)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, _: web.Request) -> web.Response:
        if not self.ready:
            return web.Response(status=503, text="shutting down")
        return web.Response(text="ready")

    async def metrics_text(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post("/mutate", self.mutate)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_text)
        return app


async def _kube_client() -> KubeClient | None:
    import kopf  # noqa: PLC0415 - only for its login helpers

    settings = kopf.OperatorSettings()
    try:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
            settings=settings
        )
    except Exception as error:  # Events are optional; admissions are not
        log.warning("no Kubernetes credentials (%s): Events are off", error)
        return None
    if info is None:
        log.warning("no Kubernetes credentials (no service account, no KUBECONFIG): Events are off")
        return None
    return KubeClient(info)


@contextlib.asynccontextmanager
async def running(settings: InjectorSettings) -> AsyncIterator[Injector]:
    """Serve until the context exits; then stop taking reviews, drain and close."""
    certificate = ServingCertificate(settings.tls_cert_file, settings.tls_key_file)
    kube = await _kube_client() if settings.post_events else None
    events = EventPoster(kube, reconnect=_kube_client) if kube is not None else None
    injector = Injector(settings, events, certificate)
    runner = web.AppRunner(injector.application(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=certificate.context)
    await site.start()
    watcher = asyncio.get_running_loop().create_task(certificate.watch())
    log.info(
        "kmeter injector serving https://%s:%s/mutate (native sidecar: %s)",
        settings.host,
        settings.port,
        settings.sidecar.native,
    )
    try:
        yield injector
    finally:
        injector.ready = False
        watcher.cancel()
        if injector.events is not None:
            await injector.events.drain()
        await runner.cleanup()
        if injector.events is not None:
            await injector.events.close()


async def serve(settings: InjectorSettings) -> None:
    """Serve until SIGTERM or SIGINT; ``/readyz`` turns 503 for the shutdown delay first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(settings) as injector:
        await stop.wait()
        injector.ready = False
        log.info("stopping: not ready; closing in %.1f s", settings.shutdown_delay)
        await asyncio.sleep(settings.shutdown_delay)


def run(settings: InjectorSettings) -> None:
    """Run ``kmeter injector`` until SIGTERM; exit status 1 when it cannot start."""
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except (OSError, ssl.SSLError) as error:
        # A missing or bad certificate, a port in use: one line, not a traceback.
        print(f"kmeter injector: error: cannot start: {error}", file=sys.stderr)
        raise SystemExit(1) from None
