"""aiohttp's server log made fit for a port any client can reach.

aiohttp answers a request it cannot parse (a NUL in a header value, a bad method, a broken chunk
size) with 400 by itself, and logs it on ``aiohttp.server`` at ERROR — "Error handling request"
with a traceback. The mistake is the client's, and a client sending garbage in a loop could fill
the log with tracebacks. :func:`quiet_malformed_requests` rewrites those records to one WARNING
line with the reason. Any other error of the server keeps its level and its traceback.

Every kmeter process that serves HTTP with aiohttp (the usage API, the operator's and workers'
probes and metrics, the injector, ``kmeter dev``) installs it through
:func:`kmeter.logging_setup.configure_logging`.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["quiet_malformed_requests"]

_REASON_MAX: Final = 200  # the reason quotes the client's bytes; keep a line a line


class _MalformedRequestFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            reason = " ".join(str(error.message).split())[:_REASON_MAX]
            said = record.getMessage()
            record.msg = f"{said}: malformed request, answered {error.code}: {reason}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True


def quiet_malformed_requests() -> None:
    """Log requests aiohttp could not parse as one WARNING line each (idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(existing, _MalformedRequestFilter) for existing in logger.filters):
        logger.addFilter(_MalformedRequestFilter())
