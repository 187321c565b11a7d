"""The ``kmeter`` command: one entry point whose subcommands start kmeter's processes.

This module only wires subcommands to the modules that implement them; it holds no logic.
"""

from __future__ import annotations

import typer

from kmeter import __version__

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


def main() -> None:
    """Run the ``kmeter`` command line."""
    app()
