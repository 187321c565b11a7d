"""How every kmeter process logs: one line per record on stderr, ``time LEVEL logger: message``.

:func:`configure_logging` is called once at the start of each command's ``run()`` — the
operator, the workers, the usage API, the injector and ``kmeter dev``. Each of them serves HTTP
with aiohttp, so it also installs :func:`~kmeter.http_server_log.quiet_malformed_requests`.
``quieter`` turns chatty libraries down to WARNING (aiokafka logs every connection at INFO).

The sidecar (``kmeter_sidecar.cli``) sets up the same format by itself: it must not import
aiohttp (see the import contracts in pyproject.toml).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

from kmeter.http_server_log import quiet_malformed_requests

__all__ = ["LOG_FORMAT", "configure_logging"]

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int | str, *, quieter: Iterable[str] = ()) -> None:
    """Log at ``level`` in kmeter's format; the loggers named in ``quieter`` at WARNING."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    quiet_malformed_requests()
    for name in quieter:
        logging.getLogger(name).setLevel(logging.WARNING)
