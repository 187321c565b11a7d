"""End to end: requests through the sidecar are counted by the worker and answered by the API.

Every part is the real process — ``kmeter-sidecar`` in front of an HTTP app, ``kmeter worker``
for a COUNT Meter, ``kmeter api`` — over the real broker, wired the way the operator wires
them (topics from ``meter_topics``, the worker's ``KMETER_METER``), as a customer would see it.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from tests.support.api import (
    ApiProcess,
    create_meter_topics,
    meter_manifest,
    write_manifests,
    write_tokens,
)
from tests.support.http import answers, get, serve_in_thread
from tests.support.operator import eventually, free_port
from tests.support.processes import Running

BIN = Path(sys.executable).parent
TOKEN = "e2e-token"


@pytest.fixture
def upstream() -> Iterator[int]:
    """A small JSON app on a loopback port, in a thread of its own."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    with serve_in_thread(app) as served:
        yield served.port


def test_requests_through_the_sidecar_are_counted_once_each_and_queryable_per_customer(
    kafka_bootstrap: str, upstream: int, tmp_path: Path
) -> None:
    namespace = f"e2e-{uuid.uuid4().hex[:8]}"
    manifest = meter_manifest(
        namespace,
        "requests",
        event_type="http.request",
        aggregation="COUNT",
        value_property=None,
        group_by={"route": "$.route"},
    )
    create_meter_topics(kafka_bootstrap, namespace, "requests", partitions=2)
    running = Running()
    api: ApiProcess | None = None
    try:
        proxy_port, admin_port = free_port(), free_port()
        sidecar = [
            str(BIN / "kmeter-sidecar"),
            "--port", str(proxy_port), "--listen-host", "127.0.0.1",
            "--upstream", f"127.0.0.1:{upstream}",
            "--admin-port", str(admin_port), "--admin-host", "127.0.0.1",
            "--kafka-bootstrap", kafka_bootstrap, "--namespace", namespace,
            "--pod-name", "web-1", "--spool-dir", str(tmp_path / "spool"),
            "--event-type", "http.request", "--subject-from", "header:X-Customer-Id",
        ]  # fmt: skip
        running.start(sidecar, tmp_path / "sidecar.log")
        running.start(
            [str(BIN / "kmeter"), "worker", "--namespace", namespace, "--meter", "requests"],
            tmp_path / "worker.log",
            KMETER_KAFKA_BOOTSTRAP=kafka_bootstrap,
            KMETER_METER=json.dumps(manifest["spec"]),
            KMETER_METRICS_PORT=str(free_port()),
            KMETER_HEALTH_PORT=str(free_port()),
            POD_NAME="worker-1",
        )
        api = ApiProcess(
            kafka_bootstrap,
            tmp_path,
            manifests=write_manifests(tmp_path / "manifests", [manifest]),
            tokens=write_tokens(tmp_path / "tokens.yaml", {namespace: [TOKEN]}),
        )
        api.start()

        eventually(
            lambda: answers(f"http://127.0.0.1:{proxy_port}/healthz-probe"), what="the sidecar"
        )
        sent: Counter[tuple[str, str]] = Counter()
        for i in range(120):
            customer = ("acme", "globex", "initech")[i % 3 if i < 90 else 0]
            route = ("/v1/chat", "/v1/embeddings")[i % 2]
            status, body = get(
                f"http://127.0.0.1:{proxy_port}{route}?n={i}", {"X-Customer-Id": customer}
            )
            assert status == 200
            assert json.loads(body)["path"] == route
            sent[(customer, route)] += 1

        def counted() -> dict[tuple[str, str], int] | None:
            query = urllib.parse.urlencode(
                [("groupBy", "route"), *[("subject", c) for c in ("acme", "globex", "initech")]]
            )
            answer = api.call("GET", f"/api/v1/meters/requests/query?{query}", token=TOKEN)
            if answer.status != 200:
                return None
            rows = json.loads(answer.body)["data"]
            found = {(r["subject"], r["groupBy"]["route"]): int(r["value"]) for r in rows}
            # Probe requests (subject "probe") are counted too; they are not queried here.
            return found if found == dict(sent) else None

        eventually(counted, timeout=90, what="the API answers exactly the requests served")
    finally:
        running.stop()
        if api is not None:
            api.stop()
