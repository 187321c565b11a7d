"""Errors as ``application/problem+json`` (RFC 9457), in OpenMeter's shape.

Every error answer of the API is a :class:`Problem`: ``type`` (``about:blank``), ``title`` (the
status phrase), ``status``, ``detail`` (for a person), ``instance`` (``urn:request:<id>``, as
OpenMeter sends), and optional ``extensions`` — for invalid events, ``validationErrors``:
``{"index": 3, "field": "subject", "code": "invalid_event", "message": "..."}``.

Handlers raise :class:`ApiError`; :func:`problem_middleware` turns it, aiohttp's own HTTP errors
(404 for an unknown route, 405, 413 for a body above the limit) and unexpected exceptions (500,
logged) into problem responses.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from kmeter.api.encoding import dumps

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("kmeter.api")
_SEQUENCE = itertools.count(1)
_PREFIX = os.urandom(4).hex()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: status, detail, optional extensions and headers."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        extensions: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extensions = dict(extensions or {})
        self.headers = dict(headers or {})


def problem_response(
    status: int,
    detail: str,
    *,
    extensions: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """A ``application/problem+json`` response."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": f"urn:request:{_PREFIX}-{next(_SEQUENCE):08d}",
    }
    if extensions:
        body["extensions"] = dict(extensions)
    return web.Response(
        status=status,
        body=dumps(body),
        content_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a problem response."""
    try:
        return await handler(request)
    except ApiError as error:
        return problem_response(
            error.status, error.detail, extensions=error.extensions, headers=error.headers
        )
    except web.HTTPRequestEntityTooLarge as error:
        return problem_response(413, f"the request body is too large: {error.text}")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        detail = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
        }.get(error.status, error.reason)
        return problem_response(error.status, detail, headers=headers)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return problem_response(500, "an unexpected error occurred; it has been logged")
