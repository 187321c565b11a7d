"""The worker under faults: SIGKILL at random points, a broker restart, a rebalance between two
replicas, a paused zombie. After each, the totals equal the plain oracle exactly."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

from tests.integration.test_worker_pipeline import (
    Meter,
    Stream,
    WorkerProcess,
    assert_exact,
    combine,
    dead_letter_kinds,
    produce,
    random_stream,
    wait_until_consumed,
)
from tests.support.faults import KafkaBroker


def _produce_slowly(
    bootstrap: str, topic: str, streams: list[Stream], pause: float
) -> threading.Thread:
    def run() -> None:
        for stream in streams:
            produce(bootstrap, topic, stream.records)
            time.sleep(pause)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_totals_stay_exact_when_the_worker_is_killed_with_sigkill_five_times_during_a_stream(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap)
    meter.create_topics()
    streams = [random_stream(100 + i, 1500, id_prefix=f"k{i}-") for i in range(12)]
    rng = random.Random(5)
    producer = _produce_slowly(kafka_bootstrap, meter.ingest, streams, 0.4)
    worker = WorkerProcess(meter, tmp_path, KMETER_MAX_BATCH="500")
    kills = 0
    try:
        while producer.is_alive() or kills < 5:
            time.sleep(rng.uniform(0.3, 1.6))
            worker.kill()
            kills += 1
            worker = WorkerProcess(meter, tmp_path, KMETER_MAX_BATCH="500")
        producer.join()
        wait_until_consumed(meter, alive=[worker])
        expected = combine(*streams)
        assert kills >= 5
        assert_exact(meter, expected)
    finally:
        worker.kill()


def test_nothing_is_lost_when_the_broker_restarts_under_a_running_worker(
    kafka_bootstrap: str, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap)
    meter.create_topics()
    before, after = random_stream(201, 3000), random_stream(202, 3000)
    worker = WorkerProcess(meter, tmp_path)
    try:
        worker.wait_ready()
        produce(kafka_bootstrap, meter.ingest, before.records)
        time.sleep(0.2)  # the worker is mid-stream when the broker goes
        kafka_broker.stop()
        time.sleep(2)
        kafka_broker.start()
        produce(kafka_bootstrap, meter.ingest, after.records)
        wait_until_consumed(meter, timeout=180, alive=[worker])
        expected = combine(before, after)
        assert_exact(meter, expected)
        assert dead_letter_kinds(meter) == expected.dead
    finally:
        worker.kill()


def test_two_replicas_with_a_rebalance_in_the_middle_count_exactly(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap, partitions=4)
    meter.create_topics()
    streams = [random_stream(300 + i, 1500, id_prefix=f"r{i}-") for i in range(8)]
    first = WorkerProcess(meter, tmp_path, KMETER_MAX_BATCH="500")
    second: WorkerProcess | None = None
    try:
        first.wait_ready()
        produce(kafka_bootstrap, meter.ingest, streams[0].records)
        producer = _produce_slowly(kafka_bootstrap, meter.ingest, streams[1:], 0.5)
        time.sleep(1.0)
        second = WorkerProcess(meter, tmp_path, KMETER_MAX_BATCH="500")  # a rebalance
        second.wait_ready()
        time.sleep(1.0)
        first.kill()  # another rebalance: the second takes every partition
        producer.join()
        wait_until_consumed(meter, alive=[second])
        assert_exact(meter, combine(*streams))
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_a_paused_zombie_replica_is_fenced_and_the_totals_stay_exact(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = Meter(kafka_bootstrap, partitions=2)
    meter.create_topics()
    streams = [random_stream(400 + i, 1500, id_prefix=f"z{i}-") for i in range(6)]
    zombie = WorkerProcess(meter, tmp_path)
    other: WorkerProcess | None = None
    try:
        zombie.wait_ready()
        produce(kafka_bootstrap, meter.ingest, streams[0].records)
        time.sleep(0.3)
        zombie.signal(signal.SIGSTOP)  # mid-batch, perhaps mid-transaction
        produce(kafka_bootstrap, meter.ingest, streams[1].records)
        other = WorkerProcess(meter, tmp_path)  # gets every partition once the zombie times out
        other.wait_ready(timeout=90)
        produce(kafka_bootstrap, meter.ingest, streams[2].records)
        time.sleep(1.0)
        zombie.signal(signal.SIGCONT)  # wakes up believing it still owns its partitions
        for stream in streams[3:]:
            produce(kafka_bootstrap, meter.ingest, stream.records)
            time.sleep(0.5)
        wait_until_consumed(meter, timeout=180, alive=[other])
        assert_exact(meter, combine(*streams))
    finally:
        zombie.signal(signal.SIGCONT)
        zombie.kill()
        if other is not None:
            other.kill()
