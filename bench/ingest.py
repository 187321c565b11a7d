"""Usage API ingest throughput against plain aiokafka producing the same events.

    scripts/testenv up && .venv/bin/python bench/ingest.py [--events 50000] [--concurrency 8]

Both sides send the same CloudEvents (~250 bytes) in batches of 100 to the same kind of topic
(6 partitions, key = subject, ``acks=all``, idempotent producer) with the same number of batches
in flight. The API side is a real ``kmeter api`` process: HTTP, authentication, validation and
exact decoding, re-encoding, producing, waiting for every acknowledgement. The baseline is one
aiokafka producer in this process sending pre-encoded bytes. Besides the rates (wall clock,
which the load generator, Kafka and the API share two CPUs for, so they move between runs),
it reports the CPU time each side spent per 1,000 events: the ``kmeter api`` process's, and
this process's while it produced (nothing else runs in it then). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.api import (  # noqa: E402
    ApiProcess,
    create_meter_topics,
    meter_manifest,
    write_manifests,
    write_tokens,
)
from tests.support.processes import cpu_seconds, testenv_exports  # noqa: E402

from kmeter import topics  # noqa: E402

TOKEN = "bench-token"
BATCH = 100


def bootstrap() -> str:
    found = os.environ.get("KMETER_KAFKA_BOOTSTRAP") or testenv_exports().get(
        "KMETER_KAFKA_BOOTSTRAP"
    )
    if not found:
        raise SystemExit("no Kafka: run scripts/testenv up")
    return found


def batches(run: str, count: int) -> list[list[dict[str, Any]]]:
    events = [
        {
            "specversion": "1.0",
            "id": f"{run}-{n}",
            "source": "bench",
            "type": "llm.completion",
            "subject": f"customer-{n % 1000}",
            "time": "2024-05-01T12:00:00.123Z",
            "data": {"model": "gpt-4o", "usage": {"total_tokens": n % 5000, "cost": "0.0025"}},
        }
        for n in range(count)
    ]
    return [events[i : i + BATCH] for i in range(0, count, BATCH)]


class Timed(NamedTuple):
    """How long the events took to go through, and the CPU time of the process doing it."""

    seconds: float
    cpu_seconds: float


async def through_api(
    url: str, work: list[list[dict[str, Any]]], concurrency: int, api_pid: int
) -> Timed:
    bodies = [orjson.dumps(batch) for batch in work]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/cloudevents-batch+json",
    }
    async with aiohttp.ClientSession(headers=headers) as session:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with session.post(f"{url}/api/v1/events", data=body) as response:
                    if response.status != 204:
                        raise RuntimeError(f"{response.status}: {await response.text()}")

        began, cpu_before = time.perf_counter(), cpu_seconds(api_pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Timed(time.perf_counter() - began, cpu_seconds(api_pid) - cpu_before)


async def raw(
    servers: str, topic: str, work: list[list[dict[str, Any]]], concurrency: int
) -> Timed:
    encoded = [[(e["subject"].encode(), orjson.dumps(e)) for e in batch] for batch in work]
    producer = AIOKafkaProducer(
        bootstrap_servers=servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    queue: asyncio.Queue[list[tuple[bytes, bytes]]] = asyncio.Queue()
    for batch in encoded:
        queue.put_nowait(batch)

    async def worker() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            futures = [await producer.send(topic, value, key=key) for key, value in batch]
            await asyncio.gather(*futures)

    try:
        began, cpu_before = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Timed(time.perf_counter() - began, time.process_time() - cpu_before)
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    servers = bootstrap()
    run = uuid.uuid4().hex[:8]
    api_ns, raw_ns = f"bench-api-{run}", f"bench-raw-{run}"
    for namespace in (api_ns, raw_ns):
        create_meter_topics(servers, namespace, "tokens", partitions=6)
    folder = Path(tempfile.mkdtemp(prefix="kmeter-bench-"))
    api = ApiProcess(
        servers,
        folder,
        manifests=write_manifests(folder / "m", [meter_manifest(api_ns, "tokens", partitions=6)]),
        tokens=write_tokens(folder / "t.yaml", {api_ns: [TOKEN]}),
    )
    api.start()
    try:
        assert api.process is not None
        pid = api.process.pid
        asyncio.run(through_api(api.url, batches("warm", 2000), args.concurrency, pid))
        work = batches(run, args.events)
        api_run = asyncio.run(through_api(api.url, work, args.concurrency, pid))
    finally:
        api.stop()
    raw_run = asyncio.run(
        raw(servers, topics.ingest_topic(raw_ns), batches(run, args.events), args.concurrency)
    )
    api_rate, raw_rate = args.events / api_run.seconds, args.events / raw_run.seconds
    per_1000 = 1000 * 1000 / args.events  # CPU seconds for the run -> ms per 1,000 events
    print(
        orjson.dumps(
            {
                "benchmark": "ingest",
                "events": args.events,
                "batch": BATCH,
                "concurrency": args.concurrency,
                "api_events_per_s": round(api_rate),
                "raw_aiokafka_events_per_s": round(raw_rate),
                "ratio": round(api_rate / raw_rate, 3),
                "api_cpu_ms_per_1000_events": round(api_run.cpu_seconds * per_1000, 1),
                "raw_cpu_ms_per_1000_events": round(raw_run.cpu_seconds * per_1000, 1),
                "goal_ratio": 0.5,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
