"""Kafka's admin client: connection settings, opening and closing it, and bounded calls.

Two things matter to the operator, and both live here:

* **No call hangs.** Every request to Kafka made through :meth:`KafkaAdmin.call` is bounded by
  ``request_timeout_ms`` (aiokafka's own timeouts cover the socket; an asyncio deadline covers
  the rest, such as waiting for a broker to become ready).
* **One exception says "Kafka is unreachable".** aiokafka reports it as
  ``KafkaConnectionError``, ``NodeNotReadyError``, ``RequestTimedOutError``, a bare
  ``TimeoutError`` and more; all become :class:`KafkaUnavailable`, whose message a person can
  read in a status condition (``cannot reach Kafka at 127.0.0.1:19092 while connecting: ...``).
  The operator retries it with backoff. Kafka *answering* with an error is something else: the
  adapters raise their own :class:`KafkaAdminError` subclasses for that.

Usage::

    async with KafkaAdmin(KafkaSettings("kafka:9092")) as admin:
        outcomes = await reconcile_topics(admin, desired)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NoBrokersAvailable,
    NodeNotReadyError,
    RequestTimedOutError,
)
from aiokafka.helpers import create_ssl_context

DEFAULT_CLIENT_ID = "kmeter-operator"
DEFAULT_REQUEST_TIMEOUT_MS = 10_000

# What aiokafka raises when it cannot talk to Kafka (as opposed to Kafka answering "no").
_UNREACHABLE = (KafkaConnectionError, NoBrokersAvailable, NodeNotReadyError)
_TIMED_OUT = (TimeoutError, RequestTimedOutError, KafkaTimeoutError)


class KafkaAdminError(Exception):
    """Base of what kmeter's Kafka adapters raise. ``str()`` is a message for a person."""

    @property
    def reason(self) -> str:
        """A CamelCase word for a status condition's ``reason``."""
        return type(self).__name__


class KafkaUnavailable(KafkaAdminError):
    """Kafka cannot be reached, or did not answer in time. Transient: retry with backoff."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSettings:
    """How kmeter connects to Kafka.

    ``bootstrap_servers`` is ``host:port[,host:port...]``. ``request_timeout_ms`` bounds every
    single request (connecting included); an operation made of several requests, like
    reconciling a topic, takes a bounded number of them.
    """

    bootstrap_servers: str
    client_id: str = DEFAULT_CLIENT_ID
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("Kafka bootstrap servers are empty: give host:port[,host:port]")
        if self.request_timeout_ms <= 0:
            raise ValueError(f"request_timeout_ms must be positive, not {self.request_timeout_ms}")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"Kafka security protocol {self.security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism in SASL_MECHANISMS and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"Kafka security protocol {self.security_protocol} needs a SASL mechanism (one of "
                f"{', '.join(SASL_MECHANISMS)}), a username and a password"
            )

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, *, client_id: str = DEFAULT_CLIENT_ID
    ) -> KafkaSettings:
        """Settings from ``KMETER_KAFKA_*`` variables, as the Helm chart sets them.

        ``KMETER_KAFKA_BOOTSTRAP``, ``KMETER_KAFKA_SECURITY_PROTOCOL`` (PLAINTEXT, SSL,
        SASL_PLAINTEXT, SASL_SSL), ``KMETER_KAFKA_CA_FILE`` (a mounted CA bundle for SSL),
        ``KMETER_KAFKA_SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512),
        ``KMETER_KAFKA_SASL_USERNAME``, ``KMETER_KAFKA_SASL_PASSWORD`` (from a Secret).
        Raises :class:`ValueError` naming what is wrong.
        """
        env = os.environ if env is None else env
        return cls(
            bootstrap_servers=env.get("KMETER_KAFKA_BOOTSTRAP", ""),
            client_id=client_id,
            security_protocol=env.get("KMETER_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT",
            ssl_cafile=env.get("KMETER_KAFKA_CA_FILE") or None,
            sasl_mechanism=env.get("KMETER_KAFKA_SASL_MECHANISM") or None,
            sasl_username=env.get("KMETER_KAFKA_SASL_USERNAME") or None,
            sasl_password=env.get("KMETER_KAFKA_SASL_PASSWORD") or None,
        )

    @property
    def request_timeout_s(self) -> float:
        return self.request_timeout_ms / 1000

    @property
    def operation_timeout_ms(self) -> int:
        """How long the broker may work on a create or delete before it answers.

        Half the request timeout, so that its answer (possibly "not done yet") arrives before
        the client gives up on the request.
        """
        return max(1, self.request_timeout_ms // 2)

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments for an aiokafka client (admin now; producer, consumer later).

        This is the seam for TLS and SASL: they become fields of this class (a
        ``security_protocol``, an ``ssl.SSLContext`` built from mounted certificates, a
        ``sasl_mechanism`` with credentials from a Secret) and entries of this dict. Every
        client kmeter makes takes its options from here, so nothing else changes.
        """
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in {"SSL", "SASL_SSL"}:
            options["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        if self.security_protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


class KafkaAdmin:
    """A connection to Kafka's admin API, for the adapters in :mod:`kmeter.kafka`.

    Use it as an async context manager (which connects at once, so a wrong address fails
    early), or keep one for a process's lifetime and :meth:`close` it at the end: it connects
    on first use, and again on the next use after Kafka was unreachable, so an operator that
    started during a Kafka outage, or lived through one, needs no restart. Adapters talk to
    aiokafka's admin client only inside :meth:`call`.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._client: Any = None
        self._connecting = asyncio.Lock()

    async def start(self) -> None:
        """Connect, unless connected. Raises :class:`KafkaUnavailable` when no server answers."""
        async with self._connecting:
            if self._client is None:
                self._client = await self._connect()

    async def _connect(self) -> Any:
        # aiokafka binds the client to the running loop, so it is made here, not in __init__.
        client = AIOKafkaAdminClient(**self.settings.client_options())
        # aiokafka tries the bootstrap servers one after the other, each within the timeout.
        servers = len([server for server in self.settings.bootstrap_servers.split(",") if server])
        try:
            async with self._bounded("connecting", self.settings.request_timeout_s * servers):
                await client.start()
        except BaseException:
            await client.close()
            raise
        return client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def call(self, doing: str) -> AsyncIterator[Any]:
        """Yield aiokafka's admin client for one request, bounded and with errors translated.

        ``doing`` completes the sentence "cannot reach Kafka at ... while <doing>". After
        :class:`KafkaUnavailable` the client is dropped; the next call connects afresh.
        """
        await self.start()
        client = self._client
        try:
            async with self._bounded(doing, self.settings.request_timeout_s):
                yield client
        except KafkaUnavailable:
            if self._client is client:
                self._client = None
                await client.close()
            raise

    @asynccontextmanager
    async def _bounded(self, doing: str, seconds: float) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(seconds):
                yield
        except _TIMED_OUT as error:
            raise self._unavailable(doing, f"no answer within {seconds:g} s") from error
        except _UNREACHABLE as error:
            raise self._unavailable(doing, _detail(error, doing)) from error

    def _unavailable(self, doing: str, detail: str) -> KafkaUnavailable:
        where = self.settings.bootstrap_servers
        return KafkaUnavailable(f"cannot reach Kafka at {where} while {doing}: {detail}")


def _detail(error: Exception, doing: str) -> str:
    if doing == "connecting" and isinstance(error, KafkaConnectionError):
        # aiokafka logs why each server failed and raises "Unable to bootstrap from [(...)]".
        return "no bootstrap server accepted a connection and answered"
    return str(error.args[0]) if error.args else type(error).__name__
