"""A request aiohttp cannot parse is logged as one WARNING line; other server errors are not."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from tests.support.operator import free_port

from kmeter.http_server_log import quiet_malformed_requests

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def broken(request: web.Request) -> web.Response:
    raise RuntimeError("a bug in a handler")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    logger = logging.getLogger("aiohttp.server")
    before = list(logger.filters)
    quiet_malformed_requests()
    quiet_malformed_requests()  # twice: still one filter
    assert len(logger.filters) == len(before) + 1
    application = web.Application()
    application.router.add_get("/", ok)
    application.router.add_get("/broken", broken)
    runner = web.AppRunner(application)
    await runner.setup()
    chosen = free_port()
    await web.TCPSite(runner, "127.0.0.1", chosen).start()
    yield chosen
    await runner.cleanup()
    logger.filters[:] = before


async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read(65536)
    writer.close()
    return answer


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Customer: a\x00b\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["nul-in-header", "bad-method", "bad-chunk-size"],
)
async def test_a_request_aiohttp_cannot_parse_gets_400_and_one_warning_line_without_traceback(
    port: int, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        answer = await exchange(port, request_bytes)
    assert b" 400 " in answer.split(b"\r\n")[0]
    records = [record for record in caplog.records if record.name == "aiohttp.server"]
    assert len(records) == 1
    (record,) = records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert "malformed request, answered 400" in record.getMessage()
    assert "\n" not in record.getMessage()


async def test_an_error_in_a_handler_keeps_its_level_and_traceback(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
        answer = await exchange(port, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b" 500 " in answer.split(b"\r\n")[0]
    errors = [record for record in caplog.records if record.name == "aiohttp.server"]
    assert [record.levelno for record in errors] == [logging.ERROR]
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
