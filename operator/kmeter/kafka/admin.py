"""Kafka's admin client: opening and closing it, and bounded calls.

The connection settings are :class:`kmeter.kafka.settings.KafkaSettings`.

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
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
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

from kmeter.kafka.settings import KafkaSettings

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
        failures = _BootstrapFailures()
        _AIOKAFKA_CLIENT_LOG.addHandler(failures)
        try:
            async with self._bounded(
                "connecting", self.settings.request_timeout_s * servers, failures.reasons
            ):
                await client.start()
        except BaseException:
            await client.close()
            raise
        finally:
            _AIOKAFKA_CLIENT_LOG.removeHandler(failures)
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
    async def _bounded(
        self, doing: str, seconds: float, reasons: Sequence[str] = ()
    ) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(seconds):
                yield
        except _TIMED_OUT as error:
            raise self._unavailable(doing, f"no answer within {seconds:g} s") from error
        except _UNREACHABLE as error:
            raise self._unavailable(doing, _detail(error, doing, reasons)) from error

    def _unavailable(self, doing: str, detail: str) -> KafkaUnavailable:
        where = self.settings.bootstrap_servers
        return KafkaUnavailable(f"cannot reach Kafka at {where} while {doing}: {detail}")


def _detail(error: Exception, doing: str, reasons: Sequence[str] = ()) -> str:
    if doing == "connecting" and isinstance(error, KafkaConnectionError):
        # aiokafka logs why each server failed and raises "Unable to bootstrap from [(...)]".
        detail = "no bootstrap server accepted a connection and answered"
        return f"{detail} ({'; '.join(reasons)})" if reasons else detail
    return str(error.args[0]) if error.args else type(error).__name__


_AIOKAFKA_CLIENT_LOG = logging.getLogger("aiokafka")  # the client logs under the package name
_MAX_REASONS = 5
_BOOTSTRAP_FAILURE = 'Unable connect to "%s:%s": %s'  # aiokafka.client.AIOKafkaClient.bootstrap


class _BootstrapFailures(logging.Handler):
    """Why aiokafka could not connect to each bootstrap server, from its log.

    aiokafka raises only "Unable to bootstrap" and logs the reason for each server — a refused
    connection, a certificate that failed verification, ``SaslAuthenticationFailed`` for a wrong
    password. A status condition that says "cannot reach Kafka" for a wrong password would
    send a person looking at the network, so the reasons go into the message. (Another client
    of the process bootstrapping at the same moment could add its reason too.)
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Exactly the bootstrap line: "Unable connect to node with id ..." is another client's.
        if record.msg == _BOOTSTRAP_FAILURE and len(self.reasons) < _MAX_REASONS:
            self.reasons.append(record.getMessage())
