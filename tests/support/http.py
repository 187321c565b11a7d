"""An aiohttp application served on a loopback port from a thread of its own.

Tests drive it with blocking clients or from their own event loop, so it gets its own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web
from tests.support.operator import free_port


@dataclass
class App:
    """Where the served application listens, and the loop it runs on."""

    port: int
    loop: asyncio.AbstractEventLoop


@contextmanager
def serve_in_thread(application: web.Application) -> Iterator[App]:
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(application, access_log=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the test application did not start within 10 s")
    try:
        yield App(port, loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
