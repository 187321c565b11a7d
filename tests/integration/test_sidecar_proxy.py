"""kmeter-sidecar as a real process, in front of a real app, producing to the real Kafka.

The app is an aiohttp server on a loopback port (in a thread of the test process) serving JSON,
chunked and large bodies, an OpenAI-style SSE stream and a WebSocket echo. The sidecar runs as
``.venv/bin/kmeter-sidecar`` with its own namespace, so its ingest topic is unique; events are
read back from Kafka with a plain consumer. Every test stops the sidecar with SIGTERM (which
flushes) and checks it exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka.partitioner import DefaultPartitioner
from tests.support.faults import KafkaBroker
from tests.support.http import App, serve_in_thread
from tests.support.kafka import create_ingest_topic, read_event_records, read_events
from tests.support.operator import free_port
from tests.support.sidecar import SIDECAR, launch_sidecar
from tests.support.sidecar import SidecarProcess as Sidecar

PATTERN = bytes(range(256)) * 4096  # 1 MiB of every byte value


def pattern(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


# --- the app --------------------------------------------------------------------------------

SSE_CHUNKS = [
    b'data: {"choices":[{"delta":{"content":"Hel"}}],"usage":null}\n\n',
    b'data: {"choices":[{"delta":{"content":"lo"}}],"usage":null}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,'
    b'"total_tokens":21}}\n\n',
    b"data: [DONE]\n\n",
]


async def app_json(request: web.Request) -> web.Response:
    return web.json_response({"model": "gpt-test", "usage": {"total_tokens": 1234}})


async def app_large(request: web.Request) -> web.Response:
    return web.Response(body=pattern(int(request.query["size"])))


ANSWERED_SMALL: list[int] = []  # one entry per /small answered, for tests that pace on it


async def app_small(request: web.Request) -> web.Response:
    size = int(request.query["size"])
    response = web.Response(body=pattern(size))
    ANSWERED_SMALL.append(size)
    return response


async def app_chunked(request: web.Request) -> web.StreamResponse:
    size = int(request.query["size"])
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    body = pattern(size)
    for start in range(0, size, 65_521):  # odd-sized pieces
        await response.write(body[start : start + 65_521])
    await response.write_eof()
    return response


async def app_upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    size = 0
    async for piece in request.content.iter_any():
        digest.update(piece)
        size += len(piece)
    return web.json_response({"bytes": size, "sha256": digest.hexdigest()})


async def app_echo(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    async for piece in request.content.iter_any():
        await response.write(piece)
    await response.write_eof()
    return response


async def app_sse(request: web.Request) -> web.StreamResponse:
    delay = float(request.query.get("delay", "0"))
    stop_after = int(request.query.get("chunks", str(len(SSE_CHUNKS))))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for chunk in SSE_CHUNKS[:stop_after]:
        await response.write(chunk)
        await asyncio.sleep(delay)
    if stop_after < len(SSE_CHUNKS):
        await asyncio.sleep(30)  # hang: the client leaves first
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def app_ws(request: web.Request) -> web.WebSocketResponse:
    socket_ = web.WebSocketResponse()
    await socket_.prepare(request)
    async for message in socket_:
        if message.type == aiohttp.WSMsgType.TEXT:
            await socket_.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await socket_.send_bytes(message.data)
    return socket_


async def app_slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query["seconds"]))
    return web.json_response({"slow": True})


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    """The app on a loopback port, served from a thread of its own."""
    application = web.Application(client_max_size=1 << 30)
    application.router.add_get("/json", app_json)
    application.router.add_get("/large", app_large)
    application.router.add_get("/small", app_small)
    application.router.add_get("/chunked", app_chunked)
    application.router.add_post("/upload", app_upload)
    application.router.add_post("/echo", app_echo)
    application.router.add_get("/v1/chat/completions", app_sse)
    application.router.add_get("/ws", app_ws)
    application.router.add_get("/slow", app_slow)
    with serve_in_thread(application) as served:
        yield served


# --- the sidecar ----------------------------------------------------------------------------


def start_sidecar(
    bootstrap: str, app: App, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Sidecar:
    """A sidecar in front of ``app`` with a fresh namespace, once it listens and Kafka is up."""
    namespace = f"sc-{uuid.uuid4().hex[:10]}"
    # in a thread of its own: the caller may be inside a running event loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, create_ingest_topic(bootstrap, namespace)).result()
    sidecar = launch_sidecar(
        bootstrap, app.port, tmp_path, namespace,
        "--value", "usage=$.usage", "--value", "model=$.model", *args, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sidecar.process.poll() is not None:
            raise AssertionError(f"the sidecar exited: {sidecar.output()}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", sidecar.port), timeout=1).close()
            if sidecar.metric("kmeter_sidecar_kafka_up") == 1:
                return sidecar
        time.sleep(0.1)
    sidecar.kill()
    raise AssertionError(f"the sidecar did not start: {sidecar.output()}")


@pytest.fixture
def sidecar_factory(kafka_bootstrap: str, app: App, tmp_path: Path) -> Iterator[Any]:
    started: list[Sidecar] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Sidecar:
        sidecar = start_sidecar(kafka_bootstrap, app, tmp_path, *args, env=env)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        if sidecar.process.poll() is None:
            sidecar.process.kill()
            sidecar.process.wait(10)


@pytest.fixture
def sidecar(sidecar_factory: Any) -> Sidecar:
    return sidecar_factory()  # type: ignore[no-any-return]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=120), auto_decompress=False
    ) as session:
        yield session


def raw_exchange(port: int, data: bytes, *, then: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection (``then`` 0.3 s later, when given); everything answered
    until the sidecar closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if then:
            time.sleep(0.3)
            sock.sendall(then)
        received = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


async def events_after_shutdown(
    sidecar: Sidecar, bootstrap: str
) -> list[tuple[bytes, dict[str, Any]]]:
    assert await asyncio.to_thread(sidecar.terminate) == 0, sidecar.output()
    return await read_events(bootstrap, sidecar.namespace)


# --- tests ----------------------------------------------------------------------------------


async def test_every_request_yields_exactly_one_event_with_the_right_fields(
    sidecar: Sidecar, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    headers = {"X-Customer-Id": "customer-1"}
    async with http.get(f"{sidecar.url}/json?page=2", headers=headers) as response:
        assert response.status == 200
        json_body = await response.read()
    upload = pattern(100_000)
    async with http.post(f"{sidecar.url}/upload", data=upload, headers=headers) as response:
        assert (await response.json())["bytes"] == len(upload)
    async with http.head(f"{sidecar.url}/json", headers=headers) as response:
        assert response.status == 200
    async with http.get(f"{sidecar.url}/nowhere") as response:
        assert response.status == 404
    for _ in range(20):
        async with http.get(f"{sidecar.url}/json", headers={"X-Customer-Id": "bulk"}) as response:
            await response.read()

    events = await events_after_shutdown(sidecar, kafka_bootstrap)

    # At-least-once with stable ids: a copy re-sent across a broker restart (other tests stop the
    # shared broker) carries the same id and is the same event; count distinct ids.
    distinct = {event["id"]: (key, event) for key, event in events}
    for key, event in events:
        assert distinct[event["id"]] == (key, event)
    events = list(distinct.values())
    assert len(events) == 24
    by_route = {(e["data"]["method"], e["data"]["route"]): (k, e) for k, e in events}
    key, first = next(
        (k, e) for k, e in events if e["subject"] == "customer-1" and e["data"]["method"] == "GET"
    )
    assert key == b"customer-1"
    assert first["specversion"] == "1.0"
    assert first["type"] == "http.request"
    assert first["source"] == f"kmeter-sidecar/{sidecar.namespace}/pod-1"
    assert first["data"]["route"] == "/json"
    assert first["data"]["status"] == 200
    assert first["data"]["request_bytes"] == 0
    assert first["data"]["response_bytes"] == len(json_body)
    assert first["data"]["usage"] == {"total_tokens": 1234}
    assert first["data"]["model"] == "gpt-test"
    assert first["data"]["duration_ms"] >= 0
    _, posted = by_route[("POST", "/upload")]
    assert posted["data"]["request_bytes"] == len(upload)
    assert posted["subject"] == "customer-1"
    _, head = by_route[("HEAD", "/json")]
    assert head["data"]["status"] == 200
    assert head["data"]["response_bytes"] == 0
    _, missing = by_route[("GET", "/nowhere")]
    assert missing["subject"] == "anonymous"
    assert missing["data"]["status"] == 404
    bulk = [e["data"]["duration_ms"] for _, e in events if e["subject"] == "bulk"]
    assert len(bulk) == 20
    # measured finer than the event loop's 1 ms clock: a fast request is not 0 ms
    assert all(duration > 0 for duration in bulk)
    assert any(duration != int(duration) for duration in bulk)


async def test_a_subjects_events_land_in_the_partition_kafkas_default_partitioner_gives_its_key(
    sidecar: Sidecar, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    # Every other producer (the usage API, other pods' sidecars) puts a subject's events where
    # Kafka's default partitioner (murmur2 of the key) puts them; so must the sidecar, also for
    # subjects it has sent before (it remembers their partitions between batches).
    subjects = [f"customer-{number}" for number in range(12)]
    for _ in range(3):
        for subject in subjects:
            headers = {"X-Customer-Id": subject}
            async with http.get(f"{sidecar.url}/json", headers=headers) as response:
                await response.read()
        await asyncio.sleep(0.2)  # the next round goes in a batch of its own

    assert await asyncio.to_thread(sidecar.terminate) == 0, sidecar.output()
    records = await read_event_records(kafka_bootstrap, sidecar.namespace)

    distinct = {event["id"]: (partition, key) for partition, key, event in records}
    assert len(distinct) == 36
    partitions = [0, 1, 2]  # create_ingest_topic's
    for partition, key in distinct.values():
        assert partition == DefaultPartitioner()(key, partitions, partitions), key
    assert len({partition for partition, _ in distinct.values()}) > 1


async def test_chunked_streamed_and_large_bodies_arrive_byte_exact_both_ways(
    sidecar: Sidecar, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sidecar.url}/chunked?size=3000001") as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert await response.read() == pattern(3_000_001)
    async with http.get(f"{sidecar.url}/large?size=5000000") as response:
        assert response.headers["Content-Length"] == "5000000"
        assert await response.read() == pattern(5_000_000)

    async def chunked_upload() -> AsyncIterator[bytes]:
        body = pattern(2_000_003)
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    async with http.post(f"{sidecar.url}/echo", data=chunked_upload()) as response:
        assert await response.read() == pattern(2_000_003)
    assert await asyncio.to_thread(sidecar.terminate) == 0


async def test_sse_passes_byte_exact_and_its_final_usage_is_in_the_event(
    sidecar: Sidecar, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    headers = {"X-Customer-Id": "llm-user"}
    async with http.get(
        f"{sidecar.url}/v1/chat/completions?delay=0.05", headers=headers
    ) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        received: list[bytes] = []
        async for piece in response.content.iter_any():
            received.append(piece)
    assert b"".join(received) == b"".join(SSE_CHUNKS)
    assert len(received) > 1  # it streamed, it was not buffered

    ((_, event),) = await events_after_shutdown(sidecar, kafka_bootstrap)
    assert event["subject"] == "llm-user"
    assert event["data"]["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 12,
        "total_tokens": 21,
    }
    assert event["data"]["response_bytes"] == len(b"".join(SSE_CHUNKS))


@pytest.mark.parametrize("leaving", ["closes (FIN)", "resets (RST)"])
async def test_a_client_leaving_mid_stream_still_yields_its_event_with_the_usage_seen(
    sidecar: Sidecar, kafka_bootstrap: str, leaving: str
) -> None:
    # The app sends the usage chunk, then hangs; the client reads it and goes away — closing
    # its side as curl and the openai client do, or resetting the connection.
    request = (
        b"GET /v1/chat/completions?chunks=3 HTTP/1.1\r\nHost: x\r\nX-Customer-Id: leaver\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"total_tokens" not in received:
            received += sock.recv(65536)
        if leaving == "resets (RST)":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)  # the sidecar closes at once, not when the app's stream ends
            while sock.recv(65536):
                pass

    ((_, event),) = await events_after_shutdown(sidecar, kafka_bootstrap)
    assert event["subject"] == "leaver"
    assert event["data"]["aborted"] is True
    assert event["data"]["status"] == 200
    assert event["data"]["usage"]["total_tokens"] == 21
    # ended when the client left, not cut at shutdown (the app hangs for 30 s)
    assert event["data"]["duration_ms"] < 5000


async def test_websocket_traffic_passes_through_the_tunnel_byte_exact(
    sidecar: Sidecar, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    binary = pattern(300_000)
    async with http.ws_connect(f"{sidecar.url}/ws", headers={"X-Customer-Id": "ws"}) as ws:
        for text in ("hello", "ünïcødé", "x" * 70_000):
            await ws.send_str(text)
            assert (await ws.receive()).data == text
        await ws.send_bytes(binary)
        assert (await ws.receive()).data == binary

    ((_, event),) = await events_after_shutdown(sidecar, kafka_bootstrap)
    assert event["data"]["status"] == 101
    assert event["subject"] == "ws"


async def test_a_200_mb_upload_streams_through_with_bounded_sidecar_memory(
    sidecar: Sidecar, http: aiohttp.ClientSession
) -> None:
    size = 200 << 20
    piece = pattern(1 << 20)
    expected = hashlib.sha256()
    for _ in range(size // len(piece)):
        expected.update(piece)
    peak = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal peak
        for _ in range(size // len(piece)):
            peak = max(peak, sidecar.rss_kib())
            yield piece

    baseline = sidecar.rss_kib()
    async with http.post(
        f"{sidecar.url}/upload", data=body(), headers={"Content-Length": str(size)}
    ) as response:
        answer = await response.json()
    assert answer == {"bytes": size, "sha256": expected.hexdigest()}
    peak = max(peak, sidecar.rss_kib())
    assert peak - baseline < 20 * 1024, (baseline, peak)  # KiB: far below the 200 MiB sent
    assert peak < 80 * 1024
    assert await asyncio.to_thread(sidecar.terminate) == 0


def test_a_client_that_sends_requests_but_reads_no_answers_holds_little_sidecar_memory(
    sidecar: Sidecar,
) -> None:
    # Each request is sent only once the previous answer has left the app: 40 KiB arrive at
    # the sidecar in one read, so the answer that fills the client's socket ends in the very
    # write that takes the sidecar's buffer past its high-water mark — when no request is in
    # progress and no app connection can be paused. The next one must start paused, or every
    # later answer (60 MiB here) piles up in the sidecar's memory.
    size, requests = 40 * 1024, 1536
    request = f"GET /small?size={size} HTTP/1.1\r\nHost: app\r\n\r\n".encode()
    ANSWERED_SMALL.clear()
    baseline = peak = sidecar.rss_kib()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        sock.connect(("127.0.0.1", sidecar.port))
        pacing = True  # until the sidecar holds a request back (it stops reading the app)
        for sent in range(1, requests + 1):
            sock.sendall(request)
            deadline = time.monotonic() + 1
            while pacing and len(ANSWERED_SMALL) < sent:
                pacing = time.monotonic() < deadline
                time.sleep(0.0005)
            if pacing:
                time.sleep(0.002)  # the sidecar reads the answer
            if sent % 64 == 0:
                peak = max(peak, sidecar.rss_kib())
        time.sleep(0.5)
        peak = max(peak, sidecar.rss_kib())
        # nothing was lost meanwhile: the answers are all there for a client that reads
        sock.settimeout(30)
        received = 0
        while received < requests * size:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {received} bytes"
            received += len(chunk)
    assert peak - baseline < 16 * 1024, (baseline, peak)  # KiB, against 60 MiB of answers
    assert sidecar.terminate() == 0, sidecar.output()


@contextlib.contextmanager
def close_delimited_app(body: bytes) -> Iterator[int]:
    """An app that answers every request with ``body`` delimited by closing the connection
    (no Content-Length, no chunking), as HTTP/1.0-era servers do; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                received = b""
                while b"\r\n\r\n" not in received and (chunk := connection.recv(65536)):
                    received += chunk
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                   b"Connection: close\r\n\r\n" + body)  # fmt: skip

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


async def test_a_body_the_app_ends_by_closing_reaches_an_http11_client_complete_and_at_once(
    sidecar_factory: Any, kafka_bootstrap: str
) -> None:
    body = json.dumps({"usage": {"total_tokens": 7}, "pad": "x" * 5000}).encode()
    with close_delimited_app(body) as port:
        sidecar = sidecar_factory("--upstream", f"127.0.0.1:{port}")
        started = time.monotonic()
        request = b"GET /old HTTP/1.1\r\nHost: x\r\nX-Customer-Id: c\r\n\r\n"
        with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
            sock.sendall(request)
            received = b""
            while not received.endswith(b"\r\n0\r\n\r\n"):  # the end of a chunked body
                chunk = sock.recv(65536)
                assert chunk, f"the sidecar closed before the body ended: {received[-200:]!r}"
                received += chunk
        assert time.monotonic() - started < 5, "the end of the body came without waiting"
        head, _, chunked = received.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert dechunk(chunked) == body
    ((_, event),) = await events_after_shutdown(sidecar, kafka_bootstrap)
    assert event["data"]["usage"] == {"total_tokens": 7}


def dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]


async def test_pipelined_requests_are_answered_in_order_each_with_its_own_event(
    sidecar: Sidecar, kafka_bootstrap: str
) -> None:
    requests = b"".join(
        b"GET /json?n=%d HTTP/1.1\r\nHost: x\r\nX-Customer-Id: p%d\r\n%s\r\n"
        % (n, n, b"Connection: close\r\n" if n == 2 else b"")
        for n in range(3)
    )
    answered = await asyncio.to_thread(raw_exchange, sidecar.port, requests)
    assert answered.count(b"HTTP/1.1 200 OK") == 3, answered
    events = await events_after_shutdown(sidecar, kafka_bootstrap)
    assert sorted(event["subject"] for _, event in events) == ["p0", "p1", "p2"]


async def test_expect_100_continue_and_a_head_then_a_get_on_one_connection_arrive_in_order(
    sidecar: Sidecar, kafka_bootstrap: str
) -> None:
    body = b"x" * 1000

    def converse() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", sidecar.port), timeout=10) as sock:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nX-Customer-Id: e\r\n"
                b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            interim = sock.recv(65536)  # the app's 100 Continue, before any body is sent
            sock.sendall(body)
            sock.sendall(b"HEAD /json HTTP/1.1\r\nHost: x\r\nX-Customer-Id: h\r\n\r\n")
            sock.sendall(
                b"GET /json HTTP/1.1\r\nHost: x\r\nX-Customer-Id: g\r\nConnection: close\r\n\r\n"
            )
            rest = b""
            while chunk := sock.recv(65536):
                rest += chunk
            return interim, rest

    interim, rest = await asyncio.to_thread(converse)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", rest)  # a body may run into the next head
    assert statuses == [b"200"] * 3, rest  # the POST, the HEAD, the GET in order
    # (/upload reads the whole body before it answers: an app that answers first makes the
    # sidecar close after that response, since the request's end is then unknown.)
    uploaded = json.dumps({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    assert uploaded.encode() in rest.split(b"HTTP/1.1 200 OK")[1]
    assert rest.endswith(b'{"model": "gpt-test", "usage": {"total_tokens": 1234}}')
    events = await events_after_shutdown(sidecar, kafka_bootstrap)
    assert sorted((e["subject"], e["data"]["method"]) for _, e in events) == [
        ("e", "POST"),
        ("g", "GET"),
        ("h", "HEAD"),
    ]


async def test_an_unreachable_app_gets_502_and_a_slow_one_504_as_problem_json(
    sidecar_factory: Any, app: App, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    dead = sidecar_factory("--upstream", f"127.0.0.1:{free_port()}")
    async with http.get(f"{dead.url}/json", headers={"X-Customer-Id": "c"}) as response:
        assert response.status == 502
        assert response.headers["Content-Type"] == "application/problem+json"
        assert (await response.json())["status"] == 502
    assert dead.metric('kmeter_sidecar_upstream_errors_total{kind="connect"}') == 1
    ((_, event),) = await events_after_shutdown(dead, kafka_bootstrap)
    assert event["data"]["status"] == 502

    slow = sidecar_factory("--upstream-timeout", "0.5s")
    async with http.get(f"{slow.url}/slow?seconds=3") as response:
        assert response.status == 504
        assert (await response.json())["title"] == "Gateway Timeout"
    async with http.get(f"{slow.url}/json") as response:  # and it still serves
        assert response.status == 200
    assert slow.metric('kmeter_sidecar_upstream_errors_total{kind="timeout"}') == 1
    assert await asyncio.to_thread(slow.terminate) == 0


async def test_malformed_oversized_and_slow_requests_get_4xx_and_the_sidecar_survives(
    sidecar_factory: Any, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    sidecar = sidecar_factory("--header-timeout", "1s", "--max-header-bytes", "8Ki")
    port = sidecar.port

    assert raw_exchange(port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert (
        raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")[:13]
        == b"HTTP/1.1 400 "
    )
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    # a request that goes bad in its body, after its head (sent apart) reached the app
    chunked = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    bad_chunk = b"zz\r\nabc\r\n0\r\n\r\n"
    assert raw_exchange(port, chunked + bad_chunk).startswith(b"HTTP/1.1 400 ")
    answer = raw_exchange(port, chunked + b"3\r\nabc\r\n", then=bad_chunk)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"application/problem+json" in answer
    # requests HTTP/1.1 does not allow, refused before they reach the app (RFC 9112)
    assert raw_exchange(port, b"GET /json\r\n\r\n").startswith(b"HTTP/1.1 505 ")  # HTTP/0.9
    assert raw_exchange(port, b"GET /json HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    two_hosts = b"GET /json HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert raw_exchange(port, two_hosts).startswith(b"HTTP/1.1 400 ")
    gzip_chunked = chunked.replace(b"chunked", b"gzip, chunked") + b"0\r\n\r\n"
    assert raw_exchange(port, gzip_chunked).startswith(b"HTTP/1.1 501 ")
    assert raw_exchange(port, big).startswith(b"HTTP/1.1 431 ")
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n"
    assert raw_exchange(port, many).startswith(b"HTTP/1.1 431 ")
    started = time.monotonic()
    assert raw_exchange(port, b"GET /json HTTP/1.1\r\nHost: x\r\n").startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 4
    # a silent connection is closed too
    assert raw_exchange(port, b"") == b""
    # many half-open slow clients at once do not stop others from being served
    slow_clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    for client in slow_clients:
        client.sendall(b"GET /json HTTP/1.1\r\nHo")
    async with http.get(f"{sidecar.url}/json") as response:
        assert response.status == 200
    for client in slow_clients:
        client.close()

    assert sidecar.metric('kmeter_sidecar_rejected_total{reason="malformed"}') == 8
    assert sidecar.metric('kmeter_sidecar_rejected_total{reason="header_too_large"}') == 2
    assert sidecar.metric('kmeter_sidecar_rejected_total{reason="header_timeout"}') >= 1
    events = await events_after_shutdown(sidecar, kafka_bootstrap)
    assert [event["data"]["route"] for _, event in events] == ["/json"]


def hs256(claims: dict[str, Any], secret: bytes) -> str:
    def encode(part: bytes) -> str:
        return base64.urlsafe_b64encode(part).rstrip(b"=").decode()

    signing = encode(b'{"alg":"HS256","typ":"JWT"}') + "." + encode(json.dumps(claims).encode())
    signature = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + encode(signature)


async def test_a_jwt_subject_is_verified_and_bad_or_missing_tokens_get_401(
    sidecar_factory: Any, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    sidecar = sidecar_factory(
        "--subject-from", "jwt-claim:sub", "--missing-subject", "reject",
        env={"KMETER_JWT_SECRET": "s3cret"},
    )  # fmt: skip
    good = hs256({"sub": "tenant-7", "exp": time.time() + 600}, b"s3cret")
    forged = hs256({"sub": "tenant-7"}, b"wrong")
    expired = hs256({"sub": "tenant-7", "exp": time.time() - 600}, b"s3cret")
    async with http.get(
        f"{sidecar.url}/json", headers={"Authorization": f"Bearer {good}"}
    ) as response:
        assert response.status == 200
    for token in (forged, expired, "not.a.jwt"):
        async with http.get(
            f"{sidecar.url}/json", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 401
            assert response.headers["Content-Type"] == "application/problem+json"
    async with http.get(f"{sidecar.url}/json") as response:
        assert response.status == 401

    events = await events_after_shutdown(sidecar, kafka_bootstrap)
    assert [(key, event["subject"]) for key, event in events] == [(b"tenant-7", "tenant-7")]


async def test_sigterm_lets_in_flight_requests_finish_and_flushes_their_events(
    sidecar: Sidecar, http: aiohttp.ClientSession, kafka_bootstrap: str
) -> None:
    async def slow_request() -> int:
        async with http.get(f"{sidecar.url}/slow?seconds=1.5") as response:
            await response.read()
            return response.status

    requests = [asyncio.create_task(slow_request()) for _ in range(5)]
    await asyncio.sleep(0.5)
    sidecar.process.send_signal(signal.SIGTERM)
    assert await asyncio.gather(*requests) == [200] * 5
    assert await asyncio.to_thread(sidecar.process.wait, 30) == 0
    events = await read_events(kafka_bootstrap, sidecar.namespace)
    assert len(events) == 5
    assert all(event["data"]["status"] == 200 for _, event in events)


async def test_kafka_stopped_for_30_seconds_under_load_loses_and_doubles_no_event(
    sidecar: Sidecar,
    http: aiohttp.ClientSession,
    kafka_bootstrap: str,
    kafka_broker: KafkaBroker,
) -> None:
    served = 0
    stop = asyncio.Event()

    async def load(worker: int) -> None:
        nonlocal served
        while not stop.is_set():
            async with http.get(
                f"{sidecar.url}/json", headers={"X-Customer-Id": f"c{worker}"}
            ) as response:
                await response.read()
                assert response.status == 200
                served += 1
            await asyncio.sleep(0.005)

    workers = [asyncio.create_task(load(n)) for n in range(4)]
    await asyncio.sleep(2)
    await asyncio.to_thread(kafka_broker.stop)
    outage_started = time.monotonic()
    await asyncio.sleep(max(0.0, 25 - (time.monotonic() - outage_started)))
    assert sidecar.metric("kmeter_sidecar_events_spooled_total") > 0
    await asyncio.to_thread(kafka_broker.start)
    await asyncio.sleep(3)
    stop.set()
    await asyncio.gather(*workers)
    # the spool drains once Kafka is back
    for _ in range(120):
        if sidecar.metric("kmeter_sidecar_spool_bytes") == 0:
            break
        await asyncio.sleep(0.5)
    assert sidecar.metric("kmeter_sidecar_spool_bytes") == 0

    events = await events_after_shutdown(sidecar, kafka_bootstrap)
    ids = [event["id"] for _, event in events]
    assert served > 500
    assert len(set(ids)) == served
    print(f"served {served}, records {len(ids)}, distinct {len(set(ids))}")
    assert len(ids) - len(set(ids)) <= 0.05 * served  # at-least-once: copies are rare


def test_bad_flags_fail_with_one_clear_line_and_status_2() -> None:
    cases = [
        (["--namespace", "ns", "--upstream", "8080"], "--upstream: expected HOST:PORT"),
        (["--namespace", "ns", "--subject-from", "cookie:x"], "--subject-from: expected header"),
        (["--namespace", "ns", "--value", "tokens=usage"], "must start with $"),
        (["--namespace", "Bad_NS"], "is not a Kubernetes namespace name"),
        (["--namespace", "ns", "--missing-subject", "ignore"], "expected anonymous or reject"),
    ]
    for args, message in cases:
        result = subprocess.run(
            [str(SIDECAR), "--kafka-bootstrap", "127.0.0.1:1", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("KMETER_")},
        )
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    missing = subprocess.run(
        [str(SIDECAR), "--namespace", "ns"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("KMETER_")},
    )
    assert missing.returncode == 2
    assert "--kafka-bootstrap (KMETER_KAFKA_BOOTSTRAP) is required" in missing.stderr
