"""The ``kmeter`` command: one entry point whose subcommands start kmeter's processes.

This module only wires subcommands to the modules that implement them; it holds no logic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kmeter import __version__
from kmeter.commands import events as events_commands
from kmeter.commands import status as status_commands
from kmeter.commands import usage as usage_commands

app = typer.Typer(
    name="kmeter",
    help="Kubernetes-native usage metering: meters, quotas and rate limits.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Kubernetes-native usage metering: meters, quotas and rate limits."""


@app.command()
def version() -> None:
    """Print kmeter's version."""
    typer.echo(__version__)


@app.command()
def operator() -> None:
    """Run the operator: reconcile Meters and Quotas into Kafka topics and workers.

    Configured by environment variables (KMETER_KAFKA_BOOTSTRAP, KMETER_IMAGE, ...; see
    docs/operator.md). Credentials: the pod's ServiceAccount, else KUBECONFIG.
    """
    from kmeter.operator.main import run  # noqa: PLC0415 - keep other commands light
    from kmeter.operator.settings import OperatorSettings, SettingsError  # noqa: PLC0415

    try:
        settings = OperatorSettings.from_environment()
    except SettingsError as error:
        typer.echo(f"kmeter operator: {error}", err=True)
        raise typer.Exit(2) from None
    run(settings)


@app.command()
def worker(
    namespace: Annotated[str, typer.Option(help="The Meter's namespace.")],
    meter: Annotated[str, typer.Option(help="The Meter's name.")],
) -> None:
    """Run a Meter's aggregation worker: fold its events from Kafka into window totals.

    Configured by environment variables (KMETER_KAFKA_BOOTSTRAP, KMETER_METER, ...; see
    the module kmeter.worker.settings).
    """
    import os  # noqa: PLC0415 - keep other commands light

    from kmeter.worker.runner import run  # noqa: PLC0415
    from kmeter.worker.settings import SettingsError, WorkerSettings  # noqa: PLC0415

    try:
        settings = WorkerSettings.from_environment(namespace, meter, os.environ)
    except SettingsError as error:
        typer.echo(f"kmeter worker: {error}", err=True)
        raise typer.Exit(2) from None
    run(settings)


@app.command()
def api(  # noqa: PLR0917 - one parameter per option, as typer wants
    kafka_bootstrap: Annotated[
        str, typer.Option(envvar="KMETER_KAFKA_BOOTSTRAP", help="Kafka host:port[,host:port].")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(envvar="KMETER_API_PORT", help="Port.")] = 8888,
    manifests: Annotated[
        Path | None,
        typer.Option(help="Folder of Meter manifests; default: Meters from the cluster."),
    ] = None,
    namespace: Annotated[
        str, typer.Option(help="Namespace of manifests that name none.")
    ] = "default",
    tokens: Annotated[
        Path | None,
        typer.Option(
            help="YAML file mapping namespace to a list of tokens; default: Secrets labelled "
            "kmeter.io/api-token in the cluster."
        ),
    ] = None,
    refresh_seconds: Annotated[float, typer.Option(help="Re-read Meters and tokens.")] = 5.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="KMETER_METRICS_PORT",
            help="Serve /metrics on this port only (its labels name every tenant's Meters); "
            "default: on --port.",
        ),
    ] = None,
) -> None:
    """Run the usage API: OpenMeter-compatible ingest and query (docs/api.md)."""
    from kmeter.api.app import ApiSettings, run  # noqa: PLC0415 - keep other commands light

    settings = ApiSettings(
        kafka_bootstrap=kafka_bootstrap,
        host=host,
        port=port,
        manifests=manifests,
        default_namespace=namespace,
        tokens=tokens,
        refresh_seconds=refresh_seconds,
        metrics_port=metrics_port,
    )
    if metrics_port is not None and metrics_port == port:
        typer.echo("kmeter api: --metrics-port must differ from --port", err=True)
        raise typer.Exit(2)
    try:
        settings.kafka()
    except ValueError as error:
        typer.echo(f"kmeter api: {error}", err=True)
        raise typer.Exit(2) from None
    run(settings)


@app.command()
def dev(  # noqa: PLR0917 - one parameter per option, as typer wants
    manifests: Annotated[
        Path, typer.Option(help="Folder of Meter and Quota manifests (YAML, as for kubectl).")
    ],
    upstream: Annotated[str, typer.Option(help="The app the proxy fronts: http://HOST:PORT.")],
    proxy_port: Annotated[int, typer.Option(help="Port of the metering proxy.")] = 8000,
    api_port: Annotated[int, typer.Option(help="Port of the usage API.")] = 8888,
    data_dir: Annotated[
        Path, typer.Option(help="Where the event log is kept (across restarts).")
    ] = Path(".kmeter-dev"),
    host: Annotated[str, typer.Option(help="Address the proxy and the API listen on.")] = (
        "127.0.0.1"
    ),
    namespace: Annotated[
        str, typer.Option(help="Namespace of manifests that name none, and of the proxy.")
    ] = "default",
    event_type: Annotated[
        str | None,
        typer.Option(help="CloudEvents type of the proxy's events; default: the Meters' type."),
    ] = None,
    subject_from: Annotated[
        str, typer.Option(help="header:NAME, jwt-claim:CLAIM or query:PARAM.")
    ] = "header:X-Customer-Id",
    value: Annotated[
        list[str] | None,
        typer.Option(help="NAME=JSONPATH read from responses into the event (repeatable)."),
    ] = None,
) -> None:
    """Run the whole pipeline locally: proxy, event log, aggregation, usage API (docs/dev.md)."""
    from kmeter.dev.runner import DevSettings, run  # noqa: PLC0415 - keep other commands light

    settings = DevSettings(
        manifests=manifests,
        upstream=upstream,
        proxy_port=proxy_port,
        api_port=api_port,
        data_dir=data_dir,
        host=host,
        namespace=namespace,
        event_type=event_type,
        subject_from=subject_from,
        values=tuple(value or ()),
    )
    raise typer.Exit(run(settings))


@app.command()
def injector() -> None:
    """Run the sidecar injector: the mutating admission webhook on Pod CREATE (HTTPS).

    Configured by environment variables (KMETER_KAFKA_BOOTSTRAP, KMETER_SIDECAR_IMAGE,
    KMETER_INJECTOR_TLS_CERT_FILE, ...; see docs/sidecar.md, "Injection").
    """
    from kmeter.injector.server import run  # noqa: PLC0415 - keep other commands light
    from kmeter.injector.settings import InjectorSettings, SettingsError  # noqa: PLC0415

    try:
        settings = InjectorSettings.from_environment()
    except SettingsError as error:
        typer.echo(f"kmeter injector: {error}", err=True)
        raise typer.Exit(2) from None
    run(settings)


@app.command()
def crds(
    output_dir: Annotated[
        Path, typer.Option(help="Folder of the CRD files.", file_okay=False)
    ] = Path("crds"),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; fail if the files differ.")
    ] = False,
) -> None:
    """Write the CustomResourceDefinitions generated from the Meter and Quota models."""
    from kmeter.resources import crd  # noqa: PLC0415 - keep other commands light

    if check:
        problems = crd.differences(output_dir)
        for problem in problems:
            typer.echo(problem, err=True)
        if problems:
            typer.echo("The CRDs are out of date: run `kmeter crds` and commit them.", err=True)
            raise typer.Exit(1)
        typer.echo(f"{output_dir}: the CRDs match the models.")
        return
    for path in crd.write_all(output_dir):
        typer.echo(f"wrote {path}")


# Clients of the usage API (docs/cli.md); their modules import aiohttp and rich only when run.
app.command(name="usage")(usage_commands.usage)
app.add_typer(events_commands.app, name="events")
app.command(name="meters")(status_commands.meters)
app.command(name="quotas")(status_commands.quotas)


def main() -> None:
    """Run the ``kmeter`` command line."""
    app()
