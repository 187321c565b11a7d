"""Usage API query latency over materialized window totals.

    scripts/testenv up && .venv/bin/python bench/query.py [--queries 200]

Data, written to a Meter's output topic as a worker would (SUM, MINUTE storage, folded with
the core): one subject with a total in every minute of 30 days (43,200 windows), and 1,000
subjects active in 60 random minutes each of one day (60,000 windows). A real ``kmeter api``
materializes them; then, sequentially over keep-alive HTTP, the latency of:

* ``one_subject_30d_day``: ``subject=s&from=..&to=..&windowSize=DAY`` (30 rows from 43,200 windows)
* ``one_subject_30d_hour``: the same by HOUR in America/New_York (720 rows)
* ``subjects_1000_1d``: ``from/to`` one day, ``windowSize=DAY&groupBy=subject`` (1,000 rows
  from 60,000 windows)
* ``subjects_1000_1d_hour``: the same by HOUR (up to 24,000 rows)

Prints one JSON line with p50/p99 in milliseconds; the goal is p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ingest import bootstrap  # noqa: E402
from tests.support.api import (  # noqa: E402
    ApiProcess,
    create_meter_topics,
    meter_manifest,
    produce_totals,
    spec_of,
    write_manifests,
    write_tokens,
)

from kmeter.core.events import UsageEvent  # noqa: E402

TOKEN = "bench-token"
START = datetime(2024, 4, 1, tzinfo=UTC)


def events() -> list[UsageEvent]:
    found = [
        UsageEvent(
            f"a{n}", "b", "llm.completion", "big", START + timedelta(minutes=n), {"tokens": 3}
        )
        for n in range(30 * 1440)
    ]
    rng = random.Random(1)
    day = START + timedelta(days=10)
    for subject in range(1000):
        for minute in rng.sample(range(1440), 60):
            found.append(
                UsageEvent(
                    f"s{subject}-{minute}",
                    "b",
                    "llm.completion",
                    f"customer-{subject}",
                    day + timedelta(minutes=minute),
                    {"tokens": 1},
                )
            )
    return found


async def measure(url: str, path: str, count: int) -> dict[str, Any]:
    timings = []
    rows = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        for index in range(count + 5):
            began = time.perf_counter()
            async with session.get(url + path) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{response.status}: {body[:300]!r}")
            if index >= 5:  # warm-up
                timings.append((time.perf_counter() - began) * 1000)
            rows = len(orjson.loads(body)["data"])
    timings.sort()
    return {
        "rows": rows,
        "p50_ms": round(timings[len(timings) // 2], 2),
        "p99_ms": round(timings[min(len(timings) - 1, int(len(timings) * 0.99))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    servers = bootstrap()
    namespace = f"bench-q-{uuid.uuid4().hex[:8]}"
    manifest = meter_manifest(namespace, "tokens", partitions=3)
    create_meter_topics(servers, namespace, "tokens", partitions=3)
    loaded = time.perf_counter()
    produce_totals(servers, namespace, "tokens", spec_of(manifest), events(), batches=10)
    written = time.perf_counter() - loaded
    folder = Path(tempfile.mkdtemp(prefix="kmeter-bench-"))
    api = ApiProcess(
        servers,
        folder,
        manifests=write_manifests(folder / "m", [manifest]),
        tokens=write_tokens(folder / "t.yaml", {namespace: [TOKEN]}),
    )
    began = time.perf_counter()
    api.start()
    ready = time.perf_counter() - began
    month = "from=2024-04-01T00:00:00Z&to=2024-05-01T00:00:00Z"
    day = "from=2024-04-11T00:00:00Z&to=2024-04-12T00:00:00Z"
    base = "/api/v1/meters/tokens/query?"
    cases = {
        "one_subject_30d_day": f"{base}subject=big&{month}&windowSize=DAY",
        "one_subject_30d_hour": f"{base}subject=big&{month}&windowSize=HOUR"
        "&windowTimeZone=America/New_York",
        "subjects_1000_1d": f"{base}{day}&windowSize=DAY&groupBy=subject",
        "subjects_1000_1d_hour": f"{base}{day}&windowSize=HOUR&groupBy=subject",
    }
    try:
        results = {
            name: asyncio.run(measure(api.url, path, args.queries)) for name, path in cases.items()
        }
    finally:
        api.stop()
    print(
        orjson.dumps(
            {
                "benchmark": "query",
                "windows": 30 * 1440 + 60_000,
                "write_s": round(written, 1),
                "api_start_to_ready_s": round(ready, 1),
                "queries_each": args.queries,
                **results,
                "goal_p99_ms": 50,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
