"""The ``kmeter-sidecar`` command."""

from __future__ import annotations

import argparse

from kmeter_sidecar import __version__


def main(argv: list[str] | None = None) -> None:
    """Parse the command line of ``kmeter-sidecar``."""
    parser = argparse.ArgumentParser(
        prog="kmeter-sidecar", description="The kmeter metering proxy for annotated pods."
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.parse_args(argv)
