"""An aiohttp application served on a loopback port from a thread of its own, and the
blocking client calls tests drive it (or a proxy in front of it) with.

Tests drive it with blocking clients or from their own event loop, so it gets its own loop.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.request
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


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A blocking GET: (status, body); raises ``urllib.error.HTTPError`` for 4xx and 5xx."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        status: int = response.status
        return status, response.read()


def answers(url: str) -> bool:
    """Whether something serves ``url`` (as subject ``probe``, for a sidecar in front)."""
    try:
        get(url, {"X-Customer-Id": "probe"})
    except OSError:
        return False
    return True
