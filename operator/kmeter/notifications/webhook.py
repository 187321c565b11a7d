"""Webhook delivery: an HMAC-SHA256-signed JSON POST, retried with exponential backoff.

**The request.** ``POST <spec.webhook.url>`` (or the URL the Secret key
``spec.webhook.urlSecretRef`` holds, read at each attempt and never logged) with
``Content-Type: application/json`` and the notification as the body (the record of the
notifications topic, unchanged). Headers:

* ``X-Kmeter-Signature: sha256=<hex>`` — HMAC-SHA256 of the **raw body bytes** with the value
  of the Secret key ``spec.webhook.secretRef`` as the key (sent only when a secretRef is set).
  Receivers recompute it over the bytes they received and compare in constant time
  (``hmac.compare_digest``) before parsing;
* ``X-Kmeter-Delivery: <id>`` — the notification's ``id`` (also in the body), the same on every
  retry and redelivery: **delivery is at least once**, so receivers deduplicate by it.

**Success** is any 2xx within :data:`TIMEOUT_S`. Anything else — another status, a timeout, a
refused connection, a Secret key (signing key or URL) that cannot be read — is retried after
1, 2, 4, … seconds (doubling, at most :data:`MAX_DELAY_S`), :data:`MAX_ATTEMPTS` attempts in
all (about three minutes plus the attempts' timeouts); then the notification is given up with an
error log line and ``kmeter_worker_notifications_total{channel="webhook",result="failed"}``.
It is still on the notifications topic (kept 30 days) for anyone to replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

from kmeter.resources.quota import WEBHOOK_URL_PATTERN

log = logging.getLogger("kmeter.notifications.webhook")

SIGNATURE_HEADER: Final = "X-Kmeter-Signature"
DELIVERY_HEADER: Final = "X-Kmeter-Delivery"
TIMEOUT_S: Final = 10.0
MAX_ATTEMPTS: Final = 9
FIRST_DELAY_S: Final = 1.0
MAX_DELAY_S: Final = 60.0


def sign(body: bytes, key: bytes) -> str:
    """The ``X-Kmeter-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(body: bytes, key: bytes, signature: str) -> bool:
    """Whether ``signature`` (a header value) signs ``body`` with ``key`` (constant time)."""
    return hmac.compare_digest(sign(body, key), signature)


def delays(attempts: int = MAX_ATTEMPTS, first: float = FIRST_DELAY_S) -> list[float]:
    """The waits between attempts: doubling from ``first``, capped at :data:`MAX_DELAY_S`."""
    return [min(first * 2**n, MAX_DELAY_S) for n in range(attempts - 1)]


class SecretMissing(Exception):
    """A Secret key a Quota's webhook needs — its signing key, or its URL — is not mounted (yet)
    or does not hold what it should."""


@dataclass(frozen=True)
class SecretFiles:
    """Signing keys mounted by the operator at ``<directory>/<secret name>/<key>``."""

    directory: Path

    def key(self, secret: str, key: str) -> bytes:
        path = self.directory / secret / key
        try:
            return path.read_bytes()
        except OSError as error:
            raise SecretMissing(
                f"the Secret key {secret}/{key} is not readable at {path}: {error.strerror}"
            ) from None

    def url(self, secret: str, key: str) -> str:
        """The webhook URL a Secret key holds (``urlSecretRef``): an http(s) URL."""
        text = self.key(secret, key).decode(errors="replace").strip()
        if not re.fullmatch(WEBHOOK_URL_PATTERN, text):
            raise SecretMissing(f"the Secret key {secret}/{key} does not hold an http(s) URL")
        return text


async def post(
    session: aiohttp.ClientSession,
    url: Callable[[], str],
    body: bytes,
    *,
    delivery: str,
    key: Callable[[], bytes | None],
) -> None:
    """One attempt; raises on anything but a 2xx answer. ``url`` and ``key`` are read at each
    attempt: a Secret mounted late (or rotated) is picked up by the next one."""
    headers = {"Content-Type": "application/json", DELIVERY_HEADER: delivery}
    secret = key()
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with session.post(url(), data=body, headers=headers, timeout=timeout) as answer:
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"{url} answered {answer.status}")


async def deliver(
    session: aiohttp.ClientSession,
    url: Callable[[], str],
    body: bytes,
    *,
    delivery: str,
    key: Callable[[], bytes | None],
    waits: list[float] | None = None,
    target: str = "webhook",
) -> bool:
    """POST until a 2xx or the attempts run out; returns whether it was delivered. ``target``
    names the webhook in logs (never a URL that came from a Secret)."""
    schedule = delays() if waits is None else waits
    for attempt in range(len(schedule) + 1):
        try:
            await post(session, url, body, delivery=delivery, key=key)
        except (aiohttp.ClientError, TimeoutError, RuntimeError, SecretMissing) as error:
            if attempt == len(schedule):
                log.error(
                    "%s: giving up notification %s after %d attempts: %s",
                    target,
                    delivery,
                    attempt + 1,
                    error,
                )
                return False
            log.warning(
                "%s: notification %s not delivered (%s); retrying in %.0f s",
                target,
                delivery,
                error,
                schedule[attempt],
            )
            await asyncio.sleep(schedule[attempt])
        else:
            return True
    return False
