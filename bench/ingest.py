"""Usage API ingest throughput against plain aiokafka producing the same events.

    scripts/testenv up && .venv/bin/python bench/ingest.py [--events 50000] [--concurrency 8]

Both sides send the same CloudEvents (~250 bytes) in batches of 100 to the same kind of topic
(6 partitions, key = subject, ``acks=all``, idempotent producer) with the same number of batches
in flight. The API side is a real ``kmeter api`` process: HTTP, authentication, validation and
exact decoding, re-encoding, producing, waiting for every acknowledgement. The baseline is one
aiokafka producer in this process sending pre-encoded bytes. Prints one JSON line.
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
from typing import Any

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
from tests.support.processes import testenv_exports  # noqa: E402

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


async def through_api(url: str, work: list[list[dict[str, Any]]], concurrency: int) -> float:
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

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - began


async def raw(
    servers: str, topic: str, work: list[list[dict[str, Any]]], concurrency: int
) -> float:
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
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - began
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
        asyncio.run(through_api(api.url, batches("warm", 2000), args.concurrency))
        api_seconds = asyncio.run(through_api(api.url, batches(run, args.events), args.concurrency))
    finally:
        api.stop()
    raw_seconds = asyncio.run(
        raw(servers, topics.ingest_topic(raw_ns), batches(run, args.events), args.concurrency)
    )
    api_rate, raw_rate = args.events / api_seconds, args.events / raw_seconds
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
                "goal_ratio": 0.5,
            }
        ).decode()
    )


if __name__ == "__main__":
    main()
