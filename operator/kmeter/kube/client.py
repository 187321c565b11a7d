"""Verbs over the Kubernetes REST API: list and apply (server-side), what kmeter uses.

Caveats:

* Objects are plain JSON dicts. Paths are built by :func:`resource_path` from an
  ``apiVersion`` and a plural, for the handful of kinds kmeter touches.
* Writes use server-side apply (``application/apply-patch+yaml`` with a field manager and
  ``force``): the desired object is sent whole every time, the API server keeps what changed
  and ignores what did not, so the same call creates, updates and repairs drift.
* Credentials come from a Kopf :class:`kopf.ConnectionInfo`; client certificates given as
  inline data are written to private temporary files, because :mod:`ssl` loads only files.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp
import kopf
import orjson

FIELD_MANAGER = "kmeter-operator"
JSON = dict[str, Any]


class KubeApiError(Exception):
    """The API server refused a request; ``status`` is the HTTP status, ``reason`` its word."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def resource_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """``/api/v1/namespaces/ns/configmaps/x`` or ``/apis/apps/v1/...`` for a kind."""
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{plural}"
    return path + (f"/{name}" if name else "")


def _as_bytes(data: str | bytes) -> bytes:
    """Kubeconfig inline data is base64; Kopf passes it through as found."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return raw


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        context.load_verify_locations(cadata=_as_bytes(info.ca_data).decode())
    certificate = info.certificate_path or (
        _private_file(_as_bytes(info.certificate_data)) if info.certificate_data else None
    )
    key = info.private_key_path or (
        _private_file(_as_bytes(info.private_key_data)) if info.private_key_data else None
    )
    if certificate:
        context.load_cert_chain(os.fsdecode(certificate), os.fsdecode(key) if key else None)
    return context


def _private_file(data: bytes) -> str:
    handle, path = tempfile.mkstemp(prefix="kmeter-kube-")
    with os.fdopen(handle, "wb") as file:
        file.write(data)
    return path


class KubeClient:
    """An aiohttp session bound to one API server and identity."""

    def __init__(self, info: kopf.ConnectionInfo, timeout_s: float = 30.0) -> None:
        self._server = info.server.rstrip("/")
        headers = {"Accept": "application/json", "User-Agent": FIELD_MANAGER}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info), limit=20),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def list(self, path: str, label_selector: str | None = None) -> list[JSON]:
        params = {"labelSelector": label_selector} if label_selector else None
        found = await self._request("GET", path, params=params)
        items: list[JSON] = found.get("items", [])
        return items

    async def apply(
        self, path: str, body: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER
    ) -> JSON:
        """Server-side apply of ``body`` (a whole desired object) at its own ``path``; a
        ``field_manager`` of its own lets several owners apply parts of one object."""
        return await self._request(
            "PATCH",
            path,
            data=orjson.dumps(body),
            params={"fieldManager": field_manager, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> JSON:
        headers = {"Content-Type": content_type} if content_type else None
        async with self._session.request(
            method, self._server + path, params=params, data=data, headers=headers
        ) as response:
            body = await response.read()
            if response.status >= 400:
                raise _error(response.status, body)
            parsed: JSON = orjson.loads(body) if body else {}
            return parsed


def _error(status: int, body: bytes) -> KubeApiError:
    try:
        parsed = orjson.loads(body)
        reason, message = str(parsed.get("reason", "")), str(parsed.get("message", ""))
    except orjson.JSONDecodeError:
        reason, message = "", body.decode(errors="replace")[:500]
    return KubeApiError(status, reason, message)
