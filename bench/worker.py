"""Benchmark: the aggregation worker against a plain aiokafka consumer reading the same topic.

    scripts/testenv up && .venv/bin/python bench/worker.py [--events 500000] [--cpu 1]

Runs against the real test environment. It creates a Meter's topics as the operator would
(3 partitions), pre-produces ``--events`` CloudEvents of about 265 bytes (100 subjects, 3
models, keyed by subject, times in order over ten minutes, as a live stream), then, in
the same run:

* **baseline** — a plain ``AIOKafkaConsumer`` (``read_committed``, no group) in its own
  process, assigned every partition, iterating every record until the end of each partition;
* **worker** — ``kmeter worker`` as the operator runs it, in its own process, from launch until
  the consumer group's committed offsets (written by its transactions) reach the end of every
  partition. ``worker_from_ready`` excludes process start-up and the initial group join and
  restore (until ``/readyz``).

Both processes are pinned to one core (``taskset -c <cpu>``) when ``taskset`` exists. Goals
(issue 4): the worker at >= 0.7 of the raw consumer and >= 50,000 events/s on one core. The
last line printed is one JSON object with every figure. ``KMETER_MAX_BATCH`` in the
environment reaches the worker (the figure says which was used). ``--profile FILE`` runs the
worker under cProfile and writes its statistics there (read them with ``pstats``; the rates of
such a run are not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError  # noqa: E402

from kmeter import topics  # noqa: E402
from kmeter.kafka.admin import KafkaAdmin  # noqa: E402
from kmeter.kafka.settings import KafkaSettings  # noqa: E402
from kmeter.kafka.topics import reconcile_topics  # noqa: E402
from kmeter.operator.meter_topics import TopicLayout, meter_topics  # noqa: E402
from kmeter.worker.settings import DEFAULT_MAX_BATCH  # noqa: E402

PARTITIONS = 3
METER = "bench-tokens"
SPEC = {
    "eventType": "llm.completion",
    "aggregation": "SUM",
    "valueProperty": "$.usage.total_tokens",
    "groupBy": {"model": "$.model"},
    "windowSize": "MINUTE",
    "topic": {"partitions": PARTITIONS, "replicationFactor": 1, "retention": "P400D"},
    "workers": {"replicas": 1},
    "deletionPolicy": "Retain",
}


def _bootstrap() -> str:
    found = os.environ.get("KMETER_KAFKA_BOOTSTRAP")
    if found:
        return found
    out = subprocess.run(
        [str(REPO / "scripts" / "testenv"), "env"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("export KMETER_KAFKA_BOOTSTRAP="):
            return line.split("=", 1)[1].strip("'\"")
    raise SystemExit("the test environment is not up: scripts/testenv up")


def _event(n: int, start: datetime, count: int) -> bytes:
    at = start + timedelta(seconds=600 * n / count)  # a live stream: ten minutes, in order
    event = {
        "specversion": "1.0",
        "id": f"{uuid.UUID(int=n)}",
        "source": "bench/gateway-7",
        "type": "llm.completion",
        "subject": f"customer-{n % 100:04d}",
        "time": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "datacontenttype": "application/json",
        "data": {
            "model": ("gpt-4o", "claude-3", "llama-3")[n % 3],
            "usage": {"total_tokens": n % 5000},
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


async def _setup(bootstrap: str, namespace: str, count: int) -> float:
    layout = TopicLayout(PARTITIONS, 1, 400 * 86400 * 1000)
    async with KafkaAdmin(KafkaSettings(bootstrap)) as admin:
        await reconcile_topics(admin, meter_topics(namespace, METER, layout, []))
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    start = datetime.now(UTC) - timedelta(minutes=10)
    sizes = 0
    try:
        topic = topics.ingest_topic(namespace)
        pending = []
        for n in range(count):
            value = _event(n, start, count)
            sizes += len(value)
            key = f"customer-{n % 100:04d}".encode()
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sizes / count


async def _baseline(bootstrap: str, topic: str) -> None:
    """Run in its own process: iterate every record; print seconds and records."""
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    ends = await consumer.end_offsets(partitions)
    seen = bytes_seen = 0
    remaining = set(partitions)
    while remaining:
        batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
        for tp, records in batch.items():
            for record in records:
                seen += 1
                bytes_seen += len(record.value)
            if records and records[-1].offset + 1 >= ends[tp]:
                remaining.discard(tp)
    await consumer.stop()
    print(json.dumps({"seconds": time.perf_counter() - started, "records": seen}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _committed(bootstrap: str, namespace: str) -> int:
    """The sum of the worker group's committed offsets; 0 while the group has no coordinator."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            topics.meter_consumer_group(namespace, METER)
        )
    except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
        return 0  # a broker just started creates __consumer_offsets on the first lookup
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") else []


def _worker(
    bootstrap: str, namespace: str, count: int, cpu: int, profile: str | None = None
) -> dict[str, float]:
    health = _free_port()
    env = {
        **os.environ,
        "KMETER_KAFKA_BOOTSTRAP": bootstrap,
        "KMETER_METER": json.dumps(SPEC),
        "KMETER_METRICS_PORT": str(_free_port()),
        "KMETER_HEALTH_PORT": str(health),
        "POD_NAME": "bench-worker",
    }
    command = [*_pin(cpu), str(REPO / ".venv" / "bin" / "kmeter"), "worker"]
    if profile:  # cProfile writes its statistics when SIGTERM stops the worker
        command[len(_pin(cpu)) : len(_pin(cpu))] = [sys.executable, "-m", "cProfile", "-o", profile]
    command += ["--namespace", namespace, "--meter", METER]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ready_at = None
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the worker exited: {process.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
            if ready_at is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=1):
                        ready_at = time.perf_counter()
                except OSError:
                    pass
            if asyncio.run(_committed(bootstrap, namespace)) >= count:
                done = time.perf_counter()
                peak_rss = _peak_rss_bytes(process.pid)
                break
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {
        "seconds": done - started,
        "seconds_from_ready": done - (ready_at or started),
        "peak_rss_bytes": peak_rss,
    }


def _peak_rss_bytes(pid: int) -> float:
    """The process's peak resident set (``VmHWM``), as the kernel counts it."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--baseline-only", metavar="TOPIC")
    parser.add_argument("--bootstrap")
    parser.add_argument("--profile", metavar="FILE", help="run the worker under cProfile")
    args = parser.parse_args()
    if args.baseline_only:
        asyncio.run(_baseline(args.bootstrap, args.baseline_only))
        return
    bootstrap = _bootstrap()
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    print(f"producing {args.events} events to {topics.ingest_topic(namespace)} ...", flush=True)
    size = asyncio.run(_setup(bootstrap, namespace, args.events))
    baseline_command = [*_pin(args.cpu), sys.executable, __file__, "--bootstrap", bootstrap]
    baseline_command += ["--baseline-only", topics.ingest_topic(namespace)]
    out = subprocess.run(baseline_command, capture_output=True, text=True, check=True).stdout
    baseline = json.loads(out.strip().splitlines()[-1])
    assert baseline["records"] == args.events, baseline
    print(f"baseline: {args.events / baseline['seconds']:,.0f} events/s", flush=True)
    worker = _worker(bootstrap, namespace, args.events, args.cpu, args.profile)
    raw_rate = args.events / baseline["seconds"]
    worker_rate = args.events / worker["seconds"]
    ready_rate = args.events / worker["seconds_from_ready"]
    print(f"worker:   {worker_rate:,.0f} events/s ({ready_rate:,.0f} from ready)", flush=True)
    print(
        json.dumps(
            {
                "benchmark": "worker",
                "events": args.events,
                "event_bytes": round(size, 1),
                "partitions": PARTITIONS,
                "max_batch": int(os.environ.get("KMETER_MAX_BATCH", DEFAULT_MAX_BATCH)),
                "profiled": bool(args.profile),
                "cpu_pinned": args.cpu if _pin(args.cpu) else None,
                "machine": f"{platform.machine()} {os.cpu_count()} cores",
                "raw_consumer_events_per_s": round(raw_rate),
                "worker_events_per_s": round(worker_rate),
                "worker_events_per_s_from_ready": round(ready_rate),
                "worker_peak_rss_mb": round(worker["peak_rss_bytes"] / 2**20),
                "ratio": round(worker_rate / raw_rate, 3),
                "ratio_from_ready": round(ready_rate / raw_rate, 3),
                "goal_ratio": 0.7,
                "goal_events_per_s": 50_000,
            }
        )
    )


if __name__ == "__main__":
    main()
