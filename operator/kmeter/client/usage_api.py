"""The usage API's HTTP client: requests, and failures as one-line :class:`ClientError` s.

The command line is the only user, so the client is shaped for it: :meth:`UsageApi.request`
returns any answer and leaves its status to the caller (``events send`` handles 400, 413 and 503
itself); :meth:`UsageApi.get` raises :class:`ApiRefused` for any status of 400 or more, with the
API's ``detail`` (an ``application/problem+json`` body, docs/api.md) and a hint for the statuses
a user can fix (401: the token; 404: the Meter's name or the URL).

The API cannot be reached → :class:`ApiUnreachable`, naming the URL and how to point the command
elsewhere (``--api-url``, ``KMETER_API_URL``). A malformed ``--api-url`` → :class:`BadUsage`
(exit code 2, like any bad flag).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from kmeter.client import DEFAULT_URL

__all__ = [
    "DEFAULT_URL",
    "Answer",
    "ApiRefused",
    "ApiUnreachable",
    "BadUsage",
    "ClientError",
    "UsageApi",
    "check_url",
    "refusal",
]

PROBLEM_JSON = "application/problem+json"


class ClientError(Exception):
    """Why a command failed, as one line; ``exit_code`` 1 (a failure) or 2 (bad usage)."""

    exit_code = 1


class BadUsage(ClientError):
    """A flag or an argument is wrong: nothing was sent."""

    exit_code = 2


class ApiUnreachable(ClientError):
    """No HTTP answer: connection refused, DNS, timeout."""


class ApiRefused(ClientError):
    """The API answered with an error status."""

    def __init__(self, message: str, answer: Answer) -> None:
        super().__init__(message)
        self.answer = answer


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def problem(self) -> dict[str, Any] | None:
        """The problem document of an error answer, if it has a usable one."""
        if self.content_type not in (PROBLEM_JSON, "application/json"):
            return None
        try:
            document = json.loads(self.body)
        except ValueError:
            return None
        return document if isinstance(document, dict) else None

    def detail(self) -> str:
        """The API's reason for an error answer, one line."""
        problem = self.problem()
        if problem is not None and isinstance(problem.get("detail"), str):
            return " ".join(problem["detail"].split())
        text = self.body.decode("utf-8", "replace").strip()
        return " ".join(text.split())[:200] or "(no reason given)"

    def retry_after(self, default: float) -> float:
        """``Retry-After`` in seconds (the delta form the API sends), else ``default``."""
        try:
            return max(0.0, float(self.headers.get("Retry-After", "")))
        except ValueError:
            return default


_HINTS = {
    401: "pass a valid token with --token or KMETER_API_TOKEN",
    403: "the token is not valid for this namespace",
    404: "check the name, and that --api-url points at kmeter's usage API",
}


def refusal(answer: Answer, what: str) -> str:
    """The one-line message for an error answer to ``what`` (e.g. ``"GET /api/v1/meters"``)."""
    message = f"{what}: the API answered {answer.status}: {answer.detail()}"
    hint = _HINTS.get(answer.status)
    return f"{message} ({hint})" if hint else message


def check_url(url: str) -> str:
    """``url`` without a trailing slash if it is an http(s) URL with a host, else BadUsage."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadUsage(f"--api-url: {url!r} is not an http:// or https:// URL with a host")
    try:
        _ = parts.port
    except ValueError:
        raise BadUsage(f"--api-url: {url!r} has an invalid port") from None
    return url.rstrip("/")


class UsageApi:
    """An open session with the usage API at ``base_url``, authenticated by ``token``."""

    def __init__(self, base_url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        self.base_url = check_url(base_url)
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> UsageApi:
        headers = {"User-Agent": "kmeter-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._session = aiohttp.ClientSession(headers=headers, timeout=self.timeout)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str | None = None,
    ) -> Answer:
        """Send one request and read the whole answer, whatever its status."""
        if self._session is None:
            raise RuntimeError("use UsageApi in an `async with` block")
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if accept is not None:
            headers["Accept"] = accept
        url = self.base_url + path
        try:
            async with self._session.request(
                method, url, params=list(params), data=body, headers=headers
            ) as response:
                return Answer(response.status, dict(response.headers), await response.read())
        except TimeoutError:
            raise ApiUnreachable(
                f"the usage API at {self.base_url} did not answer {method} {path} within "
                f"{self.timeout.total:g} s"
            ) from None
        except (aiohttp.ClientConnectionError, OSError) as error:
            reason = str(error).strip() or type(error).__name__
            if isinstance(error, aiohttp.ClientConnectorError) and error.os_error.strerror:
                reason = error.os_error.strerror  # "Connection refused", not aiohttp's repr
            raise ApiUnreachable(
                f"cannot reach the usage API at {self.base_url} ({reason}); is it running? "
                "Point to it with --api-url or KMETER_API_URL"
            ) from None
        except asyncio.CancelledError:
            raise
        except aiohttp.ClientError as error:
            raise ApiUnreachable(
                f"{method} {path}: {type(error).__name__}: {error} (at {self.base_url})"
            ) from None

    async def get(
        self, path: str, *, params: Sequence[tuple[str, str]] = (), accept: str | None = None
    ) -> Answer:
        """A GET that succeeds (2xx) or raises :class:`ApiRefused` with the API's reason."""
        answer = await self.request("GET", path, params=params, accept=accept)
        if answer.status >= 400:
            raise ApiRefused(refusal(answer, f"GET {path}"), answer)
        return answer
