"""End to end: a subject crosses its quota through the sidecar, and the same sidecar refuses it.

Every part is the real process over the real broker: ``kmeter-sidecar`` in front of an app that
answers with a token count, ``kmeter worker`` for a ``SUM`` Meter of tokens evaluating a Quota
file (as the operator's ConfigMap mounts it), and the decisions topic between them. A Meter of
tokens is chosen on purpose: the sidecar cannot count tokens itself, so the 429 can only come
from the worker's decision — the whole loop sidecar → Kafka → worker → decisions → sidecar.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.integration.test_worker_pipeline import EVENT_TYPE, Meter, WorkerProcess
from tests.support.http import App, serve_in_thread
from tests.support.sidecar import launch_sidecar

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
    sidecar = launch_sidecar(
        kafka_bootstrap,
        app.port,
        tmp_path,
        meter.namespace,
        "--event-type", EVENT_TYPE,
        "--value", "usage=$.usage",
        "--value", "model=$.model",
    )  # fmt: skip
    subject = f"customer-{uuid.uuid4().hex[:6]}"
    try:
        await asyncio.to_thread(worker.wait_ready)
        await asyncio.to_thread(sidecar.wait_ready)
        # the worker writes the Quota's policy: the sidecar advertises it once it arrives
        async with aiohttp.ClientSession() as http:

            async def call() -> tuple[int, dict[str, str], Any]:
                async with http.post(
                    f"{sidecar.url}/v1/completions", headers={"X-Customer-Id": subject}
                ) as response:
                    return (
                        response.status,
                        dict(response.headers),
                        await response.json(content_type=None),
                    )

            served = 0  # every request served is counted: 10 tokens each
            deadline = time.monotonic() + 30
            while True:
                served += 1
                if "daily-tokens" in (await call())[1].get("RateLimit-Policy", ""):
                    break
                assert time.monotonic() < deadline, sidecar.output()
                await asyncio.sleep(0.1)
            while True:
                served += 1
                status, _, _ = await call()
                assert status == 200, f"refused before the limit, at request {served}"
                if served * TOKENS_PER_REQUEST >= LIMIT:
                    break
            crossed = time.monotonic()  # the event of this response reaches the limit
            overshoot = 0
            while True:
                status, headers, body = await call()
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
        sidecar.kill()
        worker.kill()
