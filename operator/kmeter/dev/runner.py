"""``kmeter dev``: the whole pipeline in one process — manifests, local log, folds, API, proxy.

Start-up, in order (anything wrong stops it before it listens):

1. the manifests are read and checked (:mod:`.manifests`) — a problem is exit status 2 with
   one line per problem naming the file, the document and the field;
2. per namespace with Meters, the local logs in ``DATA_DIR/<namespace>/`` are opened and
   recovered (:mod:`.log`), and the event log is folded again from its start
   (:mod:`.local`, :mod:`.pipeline`): the totals of earlier runs are back;
3. the usage API (the application of ``kmeter api``, :func:`kmeter.api.app.build_app`) listens
   on ``--api-port``, without tokens, ingesting into the local log;
4. the metering proxy (``kmeter-sidecar``'s :class:`~kmeter_sidecar.server.Sidecar`) listens on
   ``--proxy-port`` in front of ``--upstream``, its events going to the local log of
   ``--namespace``, enforcing that namespace's Quotas (:mod:`.quotas`);
5. what listens where, and the Meters and Quotas loaded, are printed; from then on the
   manifest folder is watched and reloaded when it changes (:meth:`.LocalBackend.watch`).

SIGINT (Ctrl-C) or SIGTERM: the proxy stops accepting, lets exchanges in flight finish (at most
``DRAIN_SECONDS``) and hands over its last events; the API closes; every log is flushed,
fsynced and closed; exit status 0. A port in use, or a data folder another ``kmeter dev`` has
open, is exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from kmeter.api.app import ApiSettings, build_app
from kmeter.dev.local import LocalBackend, StartError
from kmeter.dev.manifests import ManifestError, Manifests, load_manifests
from kmeter.dev.transport import IngestSink, ProxySink
from kmeter.logging_setup import configure_logging
from kmeter.worker.quotas import clock_offset
from kmeter_sidecar.config import Config, ConfigError, parse_value
from kmeter_sidecar.subject import parse_subject_source

__all__ = ["DevError", "DevSettings", "StartError", "prepare", "run"]

DRAIN_SECONDS = 5.0


class DevError(Exception):
    """The command line or the manifests are unusable (exit status 2)."""


@dataclass(frozen=True)
class DevSettings:
    """The ``kmeter dev`` command's options."""

    manifests: Path
    upstream: str
    proxy_port: int = 8000
    api_port: int = 8888
    data_dir: Path = Path(".kmeter-dev")
    host: str = "127.0.0.1"
    namespace: str = "default"
    event_type: str | None = None
    subject_from: str = "header:X-Customer-Id"
    values: tuple[str, ...] = ()
    fsync: bool = True


@dataclass(frozen=True)
class Prepared:
    """Settings checked and manifests loaded: what :func:`serve` runs."""

    settings: DevSettings
    manifests: Manifests
    proxy: Config


def _upstream(text: str) -> tuple[str, int]:
    """``http://HOST:PORT``, ``http://HOST`` or ``HOST:PORT``."""
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme != "http":
        raise DevError(
            f"--upstream: {text!r}: the proxy speaks plain HTTP to the upstream; "
            "give http://HOST:PORT"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise DevError(f"--upstream: {text!r} has an invalid port") from None
    if not parts.hostname or parts.path not in ("", "/"):
        raise DevError(f"--upstream: expected http://HOST:PORT, got {text!r}")
    return parts.hostname, port


def _event_type(settings: DevSettings, manifests: Manifests) -> str:
    if settings.event_type is not None:
        return settings.event_type
    types = sorted(
        {m.spec.event_type for m in manifests.meters if m.namespace == settings.namespace}
    )
    if len(types) > 1:
        raise DevError(
            f"--event-type: the Meters of namespace {settings.namespace} count several event "
            f"types ({', '.join(types)}); say which one the proxy's events have"
        )
    return types[0] if types else "http.request"


def prepare(settings: DevSettings) -> Prepared:
    """Check the options and read the manifests; :class:`DevError` says what is wrong."""
    for flag, port in (("--proxy-port", settings.proxy_port), ("--api-port", settings.api_port)):
        if not 0 < port < 65536:
            raise DevError(f"{flag}: expected a port number 1-65535, got {port}")
    if settings.proxy_port == settings.api_port:
        raise DevError("--proxy-port and --api-port must differ")
    host, port = _upstream(settings.upstream)
    try:
        manifests = load_manifests(settings.manifests, settings.namespace)
    except ManifestError as error:
        raise DevError("the manifests are invalid:\n  " + "\n  ".join(error.problems)) from None
    if not manifests.meters:
        raise DevError(f"--manifests: {settings.manifests} declares no Meter")
    if settings.namespace not in manifests.namespaces:
        raise DevError(
            f"--namespace: no Meter in namespace {settings.namespace}; the proxy's events "
            f"would count nowhere (Meters are in: {', '.join(manifests.namespaces)})"
        )
    try:
        subject_from = parse_subject_source(settings.subject_from)
        values = tuple(parse_value("--value", text) for text in settings.values)
    except ValueError as error:  # ConfigError too
        flag = "" if isinstance(error, ConfigError) else "--subject-from: "
        raise DevError(f"{flag}{error}") from None
    try:
        offset = clock_offset(os.environ)
    except ValueError as error:
        raise DevError(str(error)) from None
    names = [name for name, _ in values]
    if len(set(names)) != len(names):
        raise DevError("--value: a name is given twice")
    proxy = Config(
        listen_host=settings.host,
        port=settings.proxy_port,
        upstream_host=host,
        upstream_port=port,
        admin_host="127.0.0.1",
        admin_port=0,  # the proxy's /metrics on a free port; kmeter dev does not advertise it
        namespace=settings.namespace,
        pod_name=socket.gethostname(),
        source=f"kmeter-dev/{settings.namespace}/{socket.gethostname()}",
        event_type=_event_type(settings, manifests),
        subject_from=subject_from,
        values=values,
        drain_timeout=DRAIN_SECONDS,
        flush_timeout=DRAIN_SECONDS,
        clock_offset_seconds=offset.total_seconds(),
    )
    return Prepared(settings, manifests, proxy)


Out = Callable[[str], None]


def _describe(prepared: Prepared, out: Out) -> None:
    settings, proxy = prepared.settings, prepared.proxy
    for meter in prepared.manifests.meters:
        spec = meter.resource.spec
        value = f" {spec.value_property}" if spec.value_property else ""
        groups = f" by {', '.join(sorted(spec.group_by))}" if spec.group_by else ""
        out(
            f"  Meter {meter.namespace}/{meter.name}: {spec.aggregation}{value} of "
            f"{spec.event_type} events{groups}, per {spec.window_size}"
        )
    for quota in prepared.manifests.quotas:
        limits = quota.resource.spec
        where = "by the proxy" if quota.namespace == proxy.namespace else "not by this proxy"
        out(
            f"  Quota {quota.namespace}/{quota.name}: {limits.limit} per {limits.period.every} "
            f"({limits.period.time_zone}) of Meter {limits.meter_ref.name}, "
            f"{limits.enforcement} (enforced {where})"
        )
    api = f"http://{settings.host}:{settings.api_port}"
    out(f"data      {settings.data_dir.resolve()}")
    out(
        f"proxy     http://{settings.host}:{settings.proxy_port} -> {settings.upstream}  "
        f"(events: type {proxy.event_type}, namespace {proxy.namespace}, subject from "
        f"{proxy.subject_from.kind}:{proxy.subject_from.name})"
    )
    out(f"usage API {api}/api/v1/meters  (no token needed; {api}/openapi.json)")
    out("Ctrl-C stops.")


def _check_free(host: str, port: int) -> None:
    """Refuse a port something else listens on (else the readiness probe could reach it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise StartError(f"--proxy-port {port}: {error.strerror}") from None


async def _listening(host: str, port: int, task: asyncio.Task[None]) -> None:
    """Wait until the proxy accepts connections (or its task failed)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if task.done():
            task.result()  # raises what stopped it
            raise StartError("the proxy stopped at start")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise StartError(f"the proxy did not listen on {host}:{port} within 10 s")


async def serve(prepared: Prepared, stop: asyncio.Event, out: Out) -> None:
    """Run everything until ``stop`` is set, then shut down in order."""
    from kmeter_sidecar.server import Sidecar  # noqa: PLC0415

    settings = prepared.settings
    backend = LocalBackend(
        settings.data_dir,
        prepared.manifests,
        out,
        clock_offset=timedelta(seconds=prepared.proxy.clock_offset_seconds),
        fsync=settings.fsync,
    )
    runner: web.AppRunner | None = None
    proxy_task: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None
    proxy_stop = asyncio.Event()
    out(f"kmeter dev: {settings.manifests}")
    try:
        await backend.load(prepared.manifests)
        app = build_app(
            ApiSettings(
                kafka_bootstrap="",
                host=settings.host,
                port=settings.api_port,
                default_namespace=settings.namespace,
            ),
            authenticator=None,
            materializer=backend.pipeline,
            ingestor=IngestSink(backend.event_writers),
            quotas=backend.quotas,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.api_port).start()
        except OSError as error:
            raise StartError(f"--api-port {settings.api_port}: {error.strerror}") from None
        writer = backend.event_writers[settings.namespace]  # prepare() checked it has Meters
        _check_free(settings.host, settings.proxy_port)
        sidecar = Sidecar(prepared.proxy, sink=ProxySink(writer))
        backend.attach(settings.namespace, sidecar.quotas.apply)
        proxy_task = asyncio.create_task(sidecar.run(proxy_stop), name="proxy")
        try:
            await _listening(settings.host, settings.proxy_port, proxy_task)
        except OSError as error:
            raise StartError(f"--proxy-port {settings.proxy_port}: {error.strerror}") from None
        _describe(prepared, out)
        watcher = asyncio.create_task(
            backend.watch(settings.manifests, settings.namespace), name="watch manifests"
        )
        await stop.wait()
        out("kmeter dev: stopping")
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if proxy_task is not None:
            proxy_stop.set()
            with contextlib.suppress(Exception):
                await proxy_task
        if runner is not None:
            await runner.cleanup()
        await backend.close()
    out("kmeter dev: stopped; the data is kept in " + str(settings.data_dir))


def run(settings: DevSettings) -> int:
    """The ``kmeter dev`` command; returns the exit status."""
    configure_logging(logging.WARNING)

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        prepared = prepare(settings)
    except DevError as error:
        print(f"kmeter dev: {error}", file=sys.stderr, flush=True)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(prepared, stop, out)

    try:
        asyncio.run(main())
    except DevError as error:
        print(f"kmeter dev: {error}", file=sys.stderr, flush=True)
        return 2
    except StartError as error:
        print(f"kmeter dev: {error}", file=sys.stderr, flush=True)
        return 1
    return 0
