"""Bearer tokens mapped to namespaces: who may read and write which namespace's usage.

A namespace is a tenant. A request carries ``Authorization: Bearer <token>``; the token maps to
the namespace(s) it was issued for, and the request sees only those namespaces' Meters and
writes only to their ingest topics. Where tokens come from (:class:`TokenSource`):

* **Kubernetes Secrets** (:class:`SecretTokens`, the default in a cluster): every Secret labelled
  ``kmeter.io/api-token: "true"`` gives the token in its data key ``token`` to *its own*
  namespace. Creating or deleting such a Secret grants or revokes access within the refresh
  interval (default 10 s). Whoever may create Secrets in a namespace may thus mint tokens for
  it, which is what namespace admins can do anyway. The API needs ``list`` on Secrets
  cluster-wide (it asks with the label selector).
* **A file** (:class:`FileTokens`, ``--tokens FILE``): YAML or JSON ``{namespace: [token, ...]}``,
  re-read when it changes (for ``kmeter dev``, tests, or tokens from a secret manager).

Tokens are compared by their SHA-256 digest (a dictionary lookup, so the time taken does not
depend on how much of a guess matches) and never logged. A token found in two namespaces is
valid for both.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from aiohttp import web

from kmeter.api.errors import ApiError, Handler
from kmeter.kube.client import KubeApiError, KubeClient

TOKEN_LABEL = "kmeter.io/api-token"
TOKEN_KEY = "token"
log = logging.getLogger("kmeter.api.auth")


def digest(token: str) -> bytes:
    """The SHA-256 digest tokens are looked up by."""
    return hashlib.sha256(token.encode()).digest()


class TokenSource(Protocol):
    """Where tokens come from: a current mapping of token digest → namespaces."""

    async def load(self) -> Mapping[bytes, frozenset[str]]:
        """Read the tokens now; raise on failure (the previous tokens stay in force)."""
        ...


def _add(found: dict[bytes, frozenset[str]], token: str, namespace: str) -> None:
    key = digest(token)
    found[key] = found.get(key, frozenset()) | {namespace}


@dataclass
class FileTokens:
    """Tokens from a YAML/JSON file ``{namespace: [token, ...]}``."""

    path: Path

    async def load(self) -> Mapping[bytes, frozenset[str]]:
        text = await asyncio.to_thread(self.path.read_text)
        document = yaml.safe_load(text) or {}
        if not isinstance(document, dict):
            raise ValueError(f"{self.path}: expected a mapping of namespace to a list of tokens")
        found: dict[bytes, frozenset[str]] = {}
        for namespace, tokens in document.items():
            if not isinstance(namespace, str) or not isinstance(tokens, list):
                raise ValueError(f"{self.path}: {namespace!r} must map to a list of tokens")
            for token in tokens:
                if not isinstance(token, str) or not token:
                    raise ValueError(f"{self.path}: tokens of {namespace} must be strings")
                _add(found, token, namespace)
        return found


@dataclass
class SecretTokens:
    """Tokens from Secrets labelled ``kmeter.io/api-token: "true"``, in every namespace."""

    kube: KubeClient

    async def load(self) -> Mapping[bytes, frozenset[str]]:
        secrets = await self.kube.list("/api/v1/secrets", label_selector=f"{TOKEN_LABEL}=true")
        found: dict[bytes, frozenset[str]] = {}
        for secret in secrets:
            namespace = secret.get("metadata", {}).get("namespace")
            encoded = (secret.get("data") or {}).get(TOKEN_KEY)
            if not namespace or not encoded:
                continue
            try:
                token = base64.b64decode(encoded, validate=True).decode().strip()
            except (ValueError, UnicodeDecodeError):
                log.warning(
                    "Secret %s/%s: data.token is not base64 UTF-8 text",
                    namespace,
                    secret.get("metadata", {}).get("name"),
                )
                continue
            if token:
                _add(found, token, namespace)
        return found


@dataclass
class Authenticator:
    """The tokens in force, refreshed from a :class:`TokenSource`."""

    source: TokenSource
    refresh_seconds: float = 10.0
    tokens: Mapping[bytes, frozenset[str]] = field(default_factory=dict)
    loaded: bool = False

    def namespaces(self, token: str) -> frozenset[str]:
        """The namespaces of a token; empty when it is not valid."""
        return self.tokens.get(digest(token), frozenset())

    async def refresh(self) -> None:
        """Load the tokens once; on failure keep the previous ones and log."""
        try:
            self.tokens = await self.source.load()
            self.loaded = True
        except (TimeoutError, OSError, ValueError, yaml.YAMLError, KubeApiError) as error:
            log.warning("could not load API tokens (keeping the previous ones): %s", error)
        except Exception as error:  # an aiohttp client error reaching the API server
            log.warning("could not load API tokens (keeping the previous ones): %r", error)

    async def run(self) -> None:
        """Refresh forever."""
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self.refresh()


# --- request handling ---------------------------------------------------------------------------

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})


def auth_middleware(authenticator: Authenticator) -> Any:
    """Require a valid bearer token on every path but :data:`PUBLIC_PATHS`; 401 otherwise.

    The token's namespaces are left in ``request["namespaces"]`` for :func:`namespace_of`.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        given = request.headers.getall("Authorization", [])
        scheme, _, token = (given[0] if len(given) == 1 else "").partition(" ")
        token = token.strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="kmeter"'}
        if len(given) > 1:  # which one would count is anybody's guess: neither
            raise ApiError(401, "give one Authorization header, not several", headers=challenge)
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401, "an Authorization: Bearer <token> header is required", headers=challenge
            )
        namespaces = authenticator.namespaces(token)
        if not namespaces:
            raise ApiError(401, "the bearer token is not valid", headers=challenge)
        request["namespaces"] = namespaces
        return await handler(request)

    return middleware


def namespace_of(request: web.Request) -> str:
    """The namespace a request acts in.

    ``/api/v1/namespaces/{namespace}/...`` names it: 403 unless the token is valid for it. The
    OpenMeter-compatible paths (``/api/v1/meters``, ``/api/v1/events``) use the token's
    namespace; a token valid for several namespaces must use the explicit form (400).
    """
    namespaces: frozenset[str] = request["namespaces"]
    named = request.match_info.get("namespace")
    if named is not None:
        if named not in namespaces:
            raise ApiError(403, f"this token is not valid for namespace {named!r}")
        return named
    if len(namespaces) != 1:
        raise ApiError(
            400,
            "this token is valid for several namespaces; name one: "
            "/api/v1/namespaces/{namespace}/...",
        )
    (namespace,) = namespaces
    return namespace
