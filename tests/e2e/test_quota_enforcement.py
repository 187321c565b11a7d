"""End to end: a subject crosses its quota through the sidecar, and the same sidecar refuses it.

Every part is the real process over the real broker: ``kmeter-sidecar`` in front of an app that
answers with a token count, ``kmeter worker`` for a ``SUM`` Meter of tokens evaluating a Quota
file (as the operator's ConfigMap mounts it), and the decisions topic between them. Two replicas
of the workload, each with its sidecar: all of the subject's traffic goes through the first,
which adds up the tokens of the events it emits and refuses the very next request; the second
has seen none of it, so its 429 can only come from the worker's decision — the whole loop
sidecar → Kafka → worker → decisions → sidecar.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.integration.test_worker_pipeline import EVENT_TYPE, Meter, WorkerProcess
from tests.support.http import App, serve_in_thread
from tests.support.sidecar import SidecarProcess, launch_sidecar

from kmeter.operator.quota_reconcile import quota_config

TOKENS_PER_REQUEST = 10
LIMIT = 1000  # tokens per day: the 100th request reaches it


@pytest.fixture
def app() -> Iterator[App]:
    async def completion(request: web.Request) -> web.Response:
        return web.json_response({"model": "m1", "usage": {"tokens": TOKENS_PER_REQUEST}})

    application = web.Application()
    application.router.add_post("/v1/completions", completion)
    with serve_in_thread(application) as served:
        yield served


async def completion(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, subject: str
) -> tuple[int, dict[str, str], Any]:
    async with http.post(
        f"{sidecar.url}/v1/completions", headers={"X-Customer-Id": subject}
    ) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def requests_until_advertised(
    call: Callable[[SidecarProcess], Awaitable[tuple[int, dict[str, str], Any]]],
    sidecar: SidecarProcess,
) -> None:
    """Send requests until the sidecar has the worker's policy of the quota."""
    deadline = time.monotonic() + 30
    while "daily-tokens" not in (await call(sidecar))[1].get("RateLimit-Policy", ""):
        assert time.monotonic() < deadline, sidecar.output()
        await asyncio.sleep(0.1)


async def test_the_sidecar_refuses_within_a_second_of_the_request_that_crossed_the_quota(
    kafka_bootstrap: str, app: App, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap)
    await asyncio.to_thread(meter.create_topics)
    quotas = tmp_path / "quotas.json"
    spec: dict[str, Any] = {
        "meterRef": {"name": meter.name},
        "limit": LIMIT,
        "period": {"every": "DAY", "timeZone": "UTC"},
        "enforcement": "Block",
        "notifyAt": [],
    }
    quotas.write_text(json.dumps([quota_config("daily-tokens", 1, spec)]))
    worker = WorkerProcess(meter, tmp_path, KMETER_QUOTAS_FILE=str(quotas))
    options = ["--event-type", EVENT_TYPE, "--value", "usage=$.usage", "--value", "model=$.model"]
    sidecars = [
        launch_sidecar(kafka_bootstrap, app.port, tmp_path, meter.namespace, *options)
        for _replica in range(2)
    ]
    first, second = sidecars
    subject = f"customer-{uuid.uuid4().hex[:6]}"
    try:
        await asyncio.to_thread(worker.wait_ready)
        for sidecar in sidecars:
            await asyncio.to_thread(sidecar.wait_ready)
        async with aiohttp.ClientSession() as http:

            async def call(sidecar: SidecarProcess) -> tuple[int, dict[str, str], Any]:
                return await completion(http, sidecar, subject)

            async def probe(sidecar: SidecarProcess) -> tuple[int, dict[str, str], Any]:
                return await completion(http, sidecar, f"probe-{subject}")

            # the worker writes the Quota's policy: both sidecars advertise it once it arrives
            for sidecar in sidecars:
                await requests_until_advertised(probe, sidecar)
            served = 0  # every request served is counted: 10 tokens each
            while True:
                served += 1
                status, _, _ = await call(first)
                assert status == 200, f"refused before the limit, at request {served}"
                if served * TOKENS_PER_REQUEST >= LIMIT:
                    break
            crossed = time.monotonic()  # the event of this response reaches the limit
            status, headers, body = await call(first)
            assert status == 429, "the replica that served the tokens refuses the next request"
            overshoot = 0
            while True:  # the other replica learns it from the worker's decision
                status, headers, body = await call(second)
                if status == 429:
                    break
                overshoot += 1
                assert time.monotonic() - crossed < 1.0, "no 429 within 1 s of the crossing"
                await asyncio.sleep(0.01)
            refused_after = time.monotonic() - crossed

        assert refused_after < 1.0
        assert headers["RateLimit-Policy"] == (
            f'"daily-tokens";q={LIMIT};w=86400;kmeter-meter="{meter.name}"'
        )
        assert headers["RateLimit"].startswith('"daily-tokens";r=0;t=')
        assert int(headers["Retry-After"]) > 0
        assert body["quota"] == "daily-tokens"
        assert body["violated-policies"] == ["daily-tokens"]
        assert int(body["used"]) >= LIMIT
        print(f"first 429 {refused_after * 1000:.0f} ms after the crossing; overshoot {overshoot}")
    finally:
        for sidecar in sidecars:
            sidecar.kill()
        worker.kill()
