"""The ``kmeter-sidecar`` command: parse the configuration, run the proxy on uvloop.

Exit status: 0 after a clean shutdown (SIGTERM/SIGINT, events flushed or spooled), 2 for an
invalid flag or environment variable (one line naming it), 1 when it cannot start (a port in
use, a spool directory it cannot write).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from kmeter_sidecar.config import ConfigError, parse_config


def main(argv: list[str] | None = None) -> None:
    """Run the sidecar until SIGTERM."""
    try:
        config = parse_config(argv)
    except ConfigError as error:
        print(f"kmeter-sidecar: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("aiokafka").setLevel(
        max(logging.ERROR, logging.getLevelName(config.log_level))
    )

    from kmeter_sidecar.server import Sidecar  # noqa: PLC0415 (after flags are checked)

    async def run() -> None:
        await Sidecar(config).run()

    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(run())
    except OSError as error:
        print(f"kmeter-sidecar: error: cannot start: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        asyncio.run(run())
