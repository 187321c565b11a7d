"""Quota enforcement: from the crossing to the first 429, and the overshoot, at 1,000 requests/s.

    python bench/quota.py [--trials 10] [--rate 1000]

The real path, every part a process of its own over the Kafka of ``scripts/testenv``
(``KMETER_KAFKA_BOOTSTRAP``, or asked from ``scripts/testenv env``): an nginx upstream answering
``{"usage":{"tokens":10}}``, ``kmeter-sidecar`` in front of it, and ``kmeter worker`` for the
Meter, evaluating a Quota file the way the operator mounts it; the worker's decisions reach the
sidecar through the namespace's decisions topic.

Two Quotas, each on a Meter of its own, both with a limit of 1,000 requests' worth per day:

* **requests** — a ``COUNT`` Meter (the policy's ``countsRequests``): the sidecar also counts
  the requests it admits between decisions (docs/quotas.md), so it refuses without waiting for
  the worker;
* **tokens** — a ``SUM`` Meter of ``usage.tokens``, 10 per request, limit 10,000 (the policy's
  ``sumsValue``): the sidecar adds the tokens of the events it emits between decisions, so it
  too refuses without waiting for the worker; what gets past is the requests in flight. What a
  replica that did not serve the traffic waits for — the whole loop sidecar → Kafka → worker →
  decisions topic → sidecar — is measured by ``tests/e2e/test_quota_enforcement.py``.

Each trial sends a fresh subject's requests open-loop at ``--rate`` per second (asyncio +
aiohttp, keep-alive; Debian's wrk has no way to timestamp each response) until 300 ms after its
first 429. Per trial: the **crossing** is the moment the response that brought the usage to the
limit arrived (its usage event is emitted then); the **latency** is from the crossing to the
first 429; the **overshoot** is the number of requests served beyond the limit.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def _sidecar_bench() -> ModuleType:
    """bench/sidecar.py, for its nginx and Kafka helpers (``sidecar`` is also a folder here)."""
    spec = importlib.util.spec_from_file_location("bench_sidecar", REPO / "bench" / "sidecar.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sidecar_bench = _sidecar_bench()

KMETER = REPO / ".venv" / "bin" / "kmeter"
BODY = '{"ok":true,"usage":{"tokens":10}}'
TOKENS_PER_REQUEST = 10
LIMIT_REQUESTS = 1000
TAIL_S = 0.3
METERS: dict[str, dict[str, Any]] = {
    "requests": {"eventType": "bench.request", "aggregation": "COUNT"},
    "tokens": {
        "eventType": "bench.request",
        "aggregation": "SUM",
        "valueProperty": "$.usage.tokens",
    },
}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def create_topics(bootstrap: str, namespace: str, meter: str) -> None:
    from kmeter.kafka.admin import KafkaAdmin  # noqa: PLC0415
    from kmeter.kafka.settings import KafkaSettings  # noqa: PLC0415
    from kmeter.kafka.topics import reconcile_topics  # noqa: PLC0415
    from kmeter.operator.meter_topics import TopicLayout, meter_topics, quota_topics  # noqa: PLC0415

    layout = TopicLayout(3, 1, 86_400_000)
    async with KafkaAdmin(KafkaSettings(bootstrap)) as admin:
        await reconcile_topics(
            admin,
            [*meter_topics(namespace, meter, layout, []), *quota_topics(namespace, layout, [])],
        )


def ready(port: int) -> bool:
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def wait(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not become ready within {timeout:.0f} s")
        time.sleep(0.1)


async def trial(
    session: aiohttp.ClientSession, url: str, subject: str, rate: float, limit: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    results: list[tuple[float, int]] = []  # (done, status)
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        async with session.get(url, headers={"X-Customer-Id": subject}) as response:
            await response.read()
            results.append((loop.time(), response.status))

    start = loop.time()
    sent = 0
    first_refusal: float | None = None
    while True:
        now = loop.time()
        due = int((now - start) * rate) + 1
        while sent < due:
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        if first_refusal is None:
            refusals = [done for done, status in results if status == 429]
            first_refusal = min(refusals) if refusals else None
        elif now > first_refusal + TAIL_S:
            break
        if now - start > 15:
            break
        await asyncio.sleep(0.001)
    await asyncio.gather(*pending)
    elapsed = loop.time() - start
    served = sorted(done for done, status in results if status == 200)
    if first_refusal is None or len(served) < limit:
        return {"subject": subject, "failed": True, "served": len(served), "sent": sent}
    crossing = served[limit - 1]
    return {
        "latency_ms": round((first_refusal - crossing) * 1000, 2),
        "overshoot": len(served) - limit,
        "rps": round(sent / elapsed),
        "other_statuses": len([1 for _, status in results if status not in (200, 429)]),
    }


@dataclass
class Scenario:
    """One Meter and its Quota, with a worker and a sidecar running for them."""

    name: str
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""

    @property
    def per_request(self) -> int:
        return 1 if self.name == "requests" else TOKENS_PER_REQUEST

    def start(self, bootstrap: str, app_port: int) -> None:
        namespace = f"bq-{uuid.uuid4().hex[:8]}"
        meter = f"bench-{self.name}"
        asyncio.run(create_topics(bootstrap, namespace, meter))
        quota = {
            "name": "bench-quota",
            "generation": 1,
            "spec": {
                "meterRef": {"name": meter},
                "limit": LIMIT_REQUESTS * self.per_request,
                "period": {"every": "DAY", "timeZone": "UTC"},
                "notifyAt": [],
            },
        }
        quotas = self.directory / f"quotas-{self.name}.json"
        quotas.write_text(json.dumps([quota]))
        worker_health, proxy_port, admin_port = (sidecar_bench.free_port() for _ in range(3))
        env = {
            **os.environ,
            "KMETER_KAFKA_BOOTSTRAP": bootstrap,
            "KMETER_METER": json.dumps({**METERS[self.name], "windowSize": "MINUTE"}),
            "KMETER_QUOTAS_FILE": str(quotas),
            "KMETER_METRICS_PORT": str(sidecar_bench.free_port()),
            "KMETER_HEALTH_PORT": str(worker_health),
            "POD_NAME": "bench-worker",
        }
        self.processes.append(
            subprocess.Popen(
                [str(KMETER), "worker", "--namespace", namespace, "--meter", meter],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(self.directory / f"worker-{self.name}.log").open("wb"),
            )
        )
        self.processes.append(
            subprocess.Popen(
                [
                    str(sidecar_bench.SIDECAR),
                    "--port", str(proxy_port), "--listen-host", "127.0.0.1",
                    "--upstream", f"127.0.0.1:{app_port}",
                    "--admin-port", str(admin_port), "--admin-host", "127.0.0.1",
                    "--kafka-bootstrap", bootstrap, "--namespace", namespace,
                    "--pod-name", "bench",
                    "--spool-dir", str(self.directory / f"spool-{self.name}"),
                    "--event-type", "bench.request", "--value", "usage=$.usage",
                    "--log-level", "WARNING",
                ],
                stdout=subprocess.DEVNULL,
                stderr=(self.directory / f"sidecar-{self.name}.log").open("wb"),
            )
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{proxy_port}/"
        wait(lambda: ready(worker_health), "the worker")
        wait(lambda: ready(admin_port), "the sidecar")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(30)

    async def measure(self, trials: int, rate: float) -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.monotonic() + 60
            while True:  # until the worker's policy has reached the sidecar
                async with session.get(self.url, headers={"X-Customer-Id": "probe"}) as answer:
                    if "bench-quota" in answer.headers.get("RateLimit-Policy", ""):
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("the quota's policy never reached the sidecar")
                await asyncio.sleep(0.2)
            results = []
            for number in range(trials):
                subject = f"subject-{number}"
                results.append(await trial(session, self.url, subject, rate, LIMIT_REQUESTS))
                await asyncio.sleep(0.5)
        return summarize(results, LIMIT_REQUESTS * self.per_request)


def summarize(results: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    good = [r for r in results if not r.get("failed")]
    latencies = [r["latency_ms"] for r in good] or [math.nan]
    overshoot = [r["overshoot"] for r in good] or [math.nan]
    return {
        "limit": limit,
        "limit_in_requests": LIMIT_REQUESTS,
        "trials": len(results),
        "failed_trials": len(results) - len(good),
        "rps": round(statistics.mean(r["rps"] for r in good)) if good else None,
        "first_429_ms": {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies),
        },
        "overshoot_requests": {
            "p50": percentile(overshoot, 50),
            "max": max(overshoot),
            "max_percent_of_limit": round(100 * max(overshoot) / LIMIT_REQUESTS, 2),
        },
        "per_trial": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1000.0)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "operator"))
    bootstrap = sidecar_bench.kafka_bootstrap()
    summary: dict[str, Any] = {
        "benchmark": "quota",
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "date": time.strftime("%Y-%m-%d"),
        "rate": args.rate,
        "path": "sidecar -> Kafka -> kmeter worker -> decisions topic -> sidecar",
    }
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        app_port = sidecar_bench.free_port()
        app = sidecar_bench.start_nginx(
            sidecar_bench.nginx_config(
                directory,
                "app",
                f"""server {{ listen 127.0.0.1:{app_port};
    location / {{ default_type application/json; return 200 '{BODY}'; }} }}""",
            ),
            cpu=0,
        )
        try:
            sidecar_bench.wait_port(app_port)
            for name in ("requests", "tokens"):
                scenario = Scenario(name, directory)
                try:
                    scenario.start(bootstrap, app_port)
                    summary[name] = asyncio.run(scenario.measure(args.trials, args.rate))
                finally:
                    scenario.stop()
                short = {k: v for k, v in summary[name].items() if k != "per_trial"}
                print(f"{name:8} {json.dumps(short)}", flush=True)
        finally:
            app.terminate()
            app.wait(10)
    summary["goals"] = {
        name: {
            "p99_first_429_under_1s": summary[name]["first_429_ms"]["p99"] < 1000,
            "overshoot_under_1_percent": summary[name]["overshoot_requests"]["max_percent_of_limit"]
            < 1,
        }
        for name in ("requests", "tokens")
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
