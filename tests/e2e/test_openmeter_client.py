"""OpenMeter's official Python client (``openmeter`` on PyPI) pointed at ``kmeter api``.

The client ingests through ``POST /api/v1/events``, a real worker folds the events from real
Kafka, and the client's meter calls read them back. Every answer is compared with totals computed
here independently from the events sent.

Found while writing it: the client (1.0.0b236) sends ``filter_group_by`` as the Python ``repr``
of the dict (``filterGroupBy={'model': 'b'}``) instead of OpenMeter's deepObject form
(``filterGroupBy[model]=b``). kmeter refuses that form with a 400 that says how to write it,
rather than answering unfiltered usage; the last test pins that down.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from corehttp.exceptions import HttpResponseError
from openmeter import Client
from tests.integration.test_worker_pipeline import Meter, WorkerProcess
from tests.support.api import ApiProcess, create_meter_topics, write_manifests, write_tokens
from tests.support.operator import eventually

TOKEN = "openmeter-client-token"
KOLKATA = timedelta(hours=5, minutes=30)
SUBJECTS = ("acme", "globex", "initech")
MODELS = ("gpt-4o", "o3")


@dataclass
class Served:
    """``kmeter api`` and a worker over one Meter, and what was sent to them."""

    meter: Meter
    url: str
    client: Client
    start: datetime
    events: list[dict[str, Any]]


def cloud_event(number: int, start: datetime, rng: random.Random) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"evt-{number}",
        "source": "openmeter-client-test",
        "type": "llm.completion",
        "subject": rng.choice(SUBJECTS),
        "time": (start + timedelta(seconds=rng.randrange(3 * 3600))).isoformat(),
        "data": {
            "model": rng.choice(MODELS),
            "usage": {"tokens": str(Decimal(rng.randrange(1, 10_000)) / 100)},
        },
    }


@pytest.fixture
def served(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Served]:
    meter = Meter(kafka_bootstrap, partitions=2)
    manifest = {
        "apiVersion": "kmeter.io/v1alpha1",
        "kind": "Meter",
        "metadata": {"name": meter.name, "namespace": meter.namespace},
        "spec": meter.spec,
    }
    create_meter_topics(kafka_bootstrap, meter.namespace, meter.name, partitions=2)
    worker = WorkerProcess(meter, tmp_path)
    api = ApiProcess(
        kafka_bootstrap,
        tmp_path,
        manifests=write_manifests(tmp_path / "manifests", [manifest]),
        tokens=write_tokens(tmp_path / "tokens.yaml", {meter.namespace: [TOKEN]}),
    )
    try:
        worker.wait_ready()
        api.start()
        rng = random.Random(7)
        # Three past hours that start on a Kolkata half hour, within the Meter's retention.
        start = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=5)
        events = [cloud_event(number, start, rng) for number in range(300)]
        yield Served(meter, api.url, Client(endpoint=api.url, token=TOKEN), start, events)
    finally:
        api.stop()
        worker.stop()


def ingest(served: Served) -> None:
    """The client's single and batch calls, with every event of one batch sent twice."""
    events: list[Any] = served.events  # plain dicts: the client also takes its TypedDicts
    served.client.events.ingest_event(events[0])
    served.client.events.ingest_events(events[1:150])
    served.client.events.ingest_events(events[150:])
    served.client.events.ingest_events(events[100:200])  # duplicates: counted once

    def all_counted() -> bool:
        rows = served.client.meters.query_json(served.meter.name)["data"]
        return bool(rows) and Decimal(str(rows[0]["value"])) == total(events)

    eventually(all_counted, what="every event counted", timeout=60)


def total(events: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(event["data"]["usage"]["tokens"]) for event in events), Decimal(0))


def kolkata_hour(time: str) -> datetime:
    local = datetime.fromisoformat(time) + KOLKATA
    return local.replace(minute=0, second=0, microsecond=0) - KOLKATA


def test_events_ingested_by_the_openmeter_client_are_counted_once_and_queried_back_exactly(
    served: Served,
) -> None:
    ingest(served)
    client, name = served.client, served.meter.name

    expected: dict[tuple[datetime, str, str], Decimal] = defaultdict(Decimal)
    for event in served.events:
        if event["subject"] in ("acme", "globex"):
            key = (kolkata_hour(event["time"]), event["subject"], event["data"]["model"])
            expected[key] += Decimal(event["data"]["usage"]["tokens"])
    result = client.meters.query_json(
        name,
        from_parameter=served.start,
        to=served.start + timedelta(hours=3),
        window_size="HOUR",
        window_time_zone="Asia/Kolkata",
        subject=["acme", "globex"],
        group_by=["model"],
    )
    got = {
        (
            datetime.fromisoformat(row["windowStart"]),
            row["subject"],
            row["groupBy"]["model"],
        ): Decimal(str(row["value"]))
        for row in result["data"]
    }
    assert got == expected
    assert all(
        datetime.fromisoformat(row["windowEnd"]) - datetime.fromisoformat(row["windowStart"])
        == timedelta(hours=1)
        for row in result["data"]
    )
    assert result["windowSize"] == "HOUR"


def test_the_openmeter_client_lists_meters_subjects_and_reads_csv(served: Served) -> None:
    ingest(served)
    client, name = served.client, served.meter.name

    meters = client.meters.list()
    assert [meter["slug"] for meter in meters] == [name]
    meter = client.meters.get(name)
    assert (meter["aggregation"], meter["eventType"], meter["valueProperty"]) == (
        "SUM",
        "llm.completion",
        "$.usage.tokens",
    )
    assert client.meters.list_subjects(name) == sorted(
        {event["subject"] for event in served.events}
    )

    csv = client.meters.query_csv(name, group_by=["subject"])
    lines = csv.strip().splitlines()
    assert lines[0] == "window_start,window_end,subject,value"
    per_subject = {line.split(",")[2]: Decimal(line.split(",")[3]) for line in lines[1:]}
    assert per_subject == {
        subject: total([event for event in served.events if event["subject"] == subject])
        for subject in SUBJECTS
    }


def test_the_openmeter_client_gets_401_with_a_wrong_token_and_404_for_an_unknown_meter(
    served: Served,
) -> None:
    stranger = Client(endpoint=served.url, token="not-a-token")
    with pytest.raises(HttpResponseError) as refused:
        stranger.meters.list()
    assert refused.value.status_code == 401
    with pytest.raises(HttpResponseError) as missing:
        served.client.meters.get("no-such-meter")
    assert missing.value.status_code == 404


def test_the_clients_malformed_filter_group_by_is_refused_not_ignored(served: Served) -> None:
    with pytest.raises(HttpResponseError) as refused:
        served.client.meters.query_json(served.meter.name, filter_group_by={"model": "o3"})
    assert refused.value.status_code == 400
    assert refused.value.response is not None
    assert "filterGroupBy[name]=value" in refused.value.response.text()
