"""Starting aiokafka clients so that none is left open, whatever happens to ``start()``.

aiokafka logs ``Unclosed AIOKafkaConsumer`` (at ERROR, from the garbage collector) for a
client that was never stopped — also one whose ``start()`` failed because Kafka was unreachable,
or was cancelled by a shutdown, and its connections stay open until then. ``stop()`` is safe on
a client that never started, so both helpers call it on every way out:

* :func:`running` — ``async with running(consumer):`` for a client used within one block;
* :func:`started` — for a client kept beyond it: started, or stopped and the error raised.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar

__all__ = ["running", "started"]


class Startable(Protocol):
    """What aiokafka's consumers and producers have in common here."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


C = TypeVar("C", bound=Startable)
log = logging.getLogger("kmeter.kafka")


async def started(client: C) -> C:
    """``client``, started; if starting fails or is cancelled, it is stopped and the error
    raised."""
    try:
        await client.start()
    except BaseException:
        await _stop_quietly(client)
        raise
    return client


@contextlib.asynccontextmanager
async def running(client: C) -> AsyncIterator[C]:
    """``client`` started for the block, and stopped when it ends, however it ends."""
    try:
        await client.start()
        yield client
    except BaseException:
        await _stop_quietly(client)
        raise
    await client.stop()


async def _stop_quietly(client: Startable) -> None:
    """Stop on the way out of an error: the error (a cancellation, say) is the one to raise, not
    a failure to stop (which would replace it, and could turn a shutdown into a retry)."""
    try:
        await client.stop()
    except Exception:
        log.debug("stopping a Kafka client after an error failed", exc_info=True)
