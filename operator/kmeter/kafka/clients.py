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
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar

__all__ = ["running", "started"]


class Startable(Protocol):
    """What aiokafka's consumers and producers have in common here."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


C = TypeVar("C", bound=Startable)


async def started(client: C) -> C:
    """``client``, started; if starting fails or is cancelled, it is stopped and the error
    raised."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise
    return client


@contextlib.asynccontextmanager
async def running(client: C) -> AsyncIterator[C]:
    """``client`` started for the block, and stopped when it ends, however it ends."""
    try:
        await client.start()
        yield client
    finally:
        await client.stop()
