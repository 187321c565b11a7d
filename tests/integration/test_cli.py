"""The ``kmeter`` client commands against a real ``kmeter api``, a real worker and real Kafka.

Events go in with ``kmeter events send`` (bad lines among them), come out of ``kmeter usage``
as a table, JSON and CSV, and every output must equal a plain computation over what was sent,
to the last decimal digit.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import random
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tests.integration.test_worker_pipeline import Meter, WorkerProcess
from tests.support.api import KMETER, ApiProcess, meter_manifest, write_manifests, write_tokens
from tests.support.operator import eventually

from kmeter.kafka.admin import KafkaAdmin
from kmeter.kafka.settings import KafkaSettings
from kmeter.kafka.topics import reconcile_topics
from kmeter.operator.meter_topics import TopicLayout, quota_topics

TOKEN = "cli-token"
KOLKATA = ZoneInfo("Asia/Kolkata")
MODELS = ["gpt-4o", "mini", "claude"]
VALUES = ["1", "0.1", "2.5", "12.345", "1000000", "0.000000000000000001", "7"]

Key = tuple[datetime, str, str]
"""(Kolkata hour start as a UTC instant, subject, model)."""


@dataclass
class Sent:
    """The events file and what a plain computation says the API must answer."""

    path: Path
    lines: int
    invalid: dict[int, str]
    totals: dict[Key, Decimal]
    first_hour: datetime
    last_hour: datetime
    used_today: set[str]
    """Subjects with usage in the current UTC day (the Quotas' period)."""


def kolkata_hour(moment: datetime) -> datetime:
    """The start of the Kolkata hour holding ``moment`` (+05:30, no DST), as a UTC instant."""
    offset = timedelta(hours=5, minutes=30)
    local = (moment + offset).replace(minute=0, second=0, microsecond=0)
    return local - offset


def write_events(path: Path, seed: int, count: int) -> Sent:
    """``count`` lines: mostly valid events of the last hours, some exact duplicates (counted
    once), and a few lines the API would refuse."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    totals: dict[Key, Decimal] = defaultdict(Decimal)
    invalid: dict[int, str] = {}
    lines: list[bytes] = []
    used_today: set[str] = set()
    for number in range(1, count + 1):
        roll = rng.random()
        if roll < 0.01:
            lines.append(b'{"specversion": "1.0", "id": "cut')
            invalid[number] = "is not valid JSON"
            continue
        if roll < 0.02:
            no_subject = {"specversion": "1.0", "id": f"x{number}", "source": "cli", "subject": ""}
            lines.append(json.dumps({**no_subject, "type": "llm.completion"}).encode())
            invalid[number] = 'subject: must be a non-empty string, got ""'
            continue
        if roll < 0.05 and lines:
            lines.append(lines[rng.randrange(len(lines))])  # a resend: counted once
            continue
        at = now - timedelta(seconds=rng.randrange(0, 3 * 3600))
        subject, model, value = (
            rng.choice(["acme", "globex", "initech"]),
            rng.choice(MODELS),
            rng.choice(VALUES),
        )
        event = (
            f'{{"specversion":"1.0","id":"ev-{number}","source":"cli","type":"llm.completion",'
            f'"subject":"{subject}","time":"{at.isoformat().replace("+00:00", "Z")}",'
            f'"data":{{"model":"{model}","usage":{{"tokens":{value}}}}}}}'
        )  # the value as a JSON number written by hand: exact text, never through a float
        lines.append(event.encode())
        totals[(kolkata_hour(at), subject, model)] += Decimal(value)
        if at.date() == now.date():
            used_today.add(subject)
    path.write_bytes(b"\n".join(lines) + b"\n")
    # Valid lines that repeat an invalid one are invalid too.
    for number, line in enumerate(lines, start=1):
        for bad, reason in list(invalid.items()):
            if line == lines[bad - 1]:
                invalid[number] = reason
    hours = [key[0] for key in totals]
    return Sent(path, len(lines), invalid, dict(totals), min(hours), max(hours), used_today)


def quota(name: str, limit: int) -> dict[str, Any]:
    """A Quota on the Meter as the operator hands it to the worker (its quota ConfigMap)."""
    return {
        "name": name,
        "generation": 1,
        "spec": {
            "meterRef": {"name": "tokens"},
            "limit": limit,
            "period": {"every": "DAY", "timeZone": "UTC"},
        },
    }


def create_quota_topics(bootstrap: str, namespace: str) -> None:
    """The namespace's quota topics, which the operator creates with its first Meter and the
    worker follows."""

    async def create() -> None:
        async with KafkaAdmin(KafkaSettings(bootstrap)) as admin:
            await reconcile_topics(
                admin, quota_topics(namespace, TopicLayout(3, 1, 86_400_000), [])
            )

    asyncio.run(create())


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ApiProcess, Meter]]:
    """A Meter's topics, its worker, and the usage API serving it."""
    folder = tmp_path_factory.mktemp("cli")
    meter = Meter(kafka_bootstrap, partitions=3)
    meter.create_topics()
    create_quota_topics(kafka_bootstrap, meter.namespace)
    manifest = meter_manifest(
        meter.namespace, meter.name, value_property="$.usage.tokens", group_by={"model": "$.model"}
    )
    quotas = folder / "quotas.json"
    quotas.write_text(json.dumps([quota("generous", 10**12), quota("strict", 1)]))
    worker = WorkerProcess(meter, folder, KMETER_QUOTAS_FILE=str(quotas))
    api = ApiProcess(
        kafka_bootstrap,
        folder,
        manifests=write_manifests(folder / "meters", [manifest]),
        tokens=write_tokens(folder / "tokens.yaml", {meter.namespace: [TOKEN]}),
    )
    try:
        worker.wait_ready()
        api.start()
        yield api, meter
    finally:
        api.stop()
        worker.stop()


def kmeter(api: ApiProcess, *args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "KMETER_API_URL": api.url, "KMETER_API_TOKEN": token}
    return subprocess.run(
        [KMETER, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def sent(pipeline: tuple[ApiProcess, Meter], tmp_path_factory: pytest.TempPathFactory) -> Sent:
    api, _ = pipeline
    events = write_events(tmp_path_factory.mktemp("events") / "events.jsonl", seed=7, count=1500)
    result = kmeter(api, "events", "send", str(events.path))
    assert result.returncode == 1, result.stderr  # some lines were rejected
    rejected = {
        int(number): reason
        for number, reason in re.findall(r"^line (\d+): (.*)$", result.stderr, re.MULTILINE)
    }
    assert sorted(rejected) == sorted(events.invalid)
    for number, reason in rejected.items():
        assert reason.startswith(events.invalid[number]), (number, reason)
    valid = events.lines - len(events.invalid)
    assert result.stdout == (
        f"sent {valid:,} events in {-(-valid // 500)} requests; "
        f"{len(events.invalid)} of {events.lines:,} lines rejected (listed on standard error)\n"
    )
    return events


def query_args(sent: Sent, output: str) -> list[str]:
    return [
        "usage", "tokens", "--from", rfc3339(sent.first_hour),
        "--to", rfc3339(sent.last_hour + timedelta(hours=1)), "--window", "HOUR",
        "--time-zone", "Asia/Kolkata", "--group-by", "subject", "--group-by", "model",
        "--output", output,
    ]  # fmt: skip


def json_rows(text: str) -> dict[Key, Decimal]:
    rows = json.loads(text, parse_float=Decimal)["data"]
    found = {}
    for row in rows:
        start = datetime.fromisoformat(row["windowStart"])
        assert datetime.fromisoformat(row["windowEnd"]) - start == timedelta(hours=1)
        found[(start, row["subject"], row["groupBy"]["model"])] = Decimal(row["value"])
    return found


def test_what_events_send_sent_is_what_usage_answers_as_json(
    pipeline: tuple[ApiProcess, Meter], sent: Sent
) -> None:
    api, _ = pipeline

    def counted() -> dict[Key, Decimal] | None:
        result = kmeter(api, *query_args(sent, "json"))
        assert result.returncode == 0, result.stderr
        found = json_rows(result.stdout)
        return found if found == sent.totals else None

    eventually(counted, timeout=60, what="usage equals what was sent")


def test_the_csv_output_has_the_same_exact_values(
    pipeline: tuple[ApiProcess, Meter], sent: Sent
) -> None:
    api, _ = pipeline
    eventually(lambda: json_rows(kmeter(api, *query_args(sent, "json")).stdout) == sent.totals)
    result = kmeter(api, *query_args(sent, "csv"))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["window_start", "window_end", "subject", "model", "value"]
    found = {
        (datetime.fromisoformat(start), subject, model): Decimal(value)
        for start, _end, subject, model, value in rows[1:]
    }
    assert found == sent.totals


def test_the_table_shows_the_same_values_with_windows_in_the_time_zone(
    pipeline: tuple[ApiProcess, Meter], sent: Sent
) -> None:
    api, _ = pipeline
    eventually(lambda: json_rows(kmeter(api, *query_args(sent, "json")).stdout) == sent.totals)
    result = kmeter(api, *query_args(sent, "table"))
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert lines[0] == ["WINDOW", "START", "WINDOW", "END", "SUBJECT", "MODEL", "VALUE"]
    found = {}
    for start, end, subject, model, value in lines[2:]:
        local = datetime.fromisoformat(start)
        assert local.utcoffset() == timedelta(hours=5, minutes=30)
        assert (local.minute, datetime.fromisoformat(end) - local) == (0, timedelta(hours=1))
        found[(local.astimezone(UTC), subject, model)] = Decimal(value)
    assert found == sent.totals


def test_meters_lists_the_meter_the_token_sees(pipeline: tuple[ApiProcess, Meter]) -> None:
    api, meter = pipeline
    result = kmeter(api, "meters")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].split() == [
        meter.namespace, "tokens", "llm.completion", "SUM", "$.usage.tokens", "model=$.model",
        "MINUTE",
    ]  # fmt: skip
    listed = json.loads(kmeter(api, "meters", "--output", "json").stdout)
    assert [(m["namespace"], m["name"]) for m in listed] == [(meter.namespace, "tokens")]


def test_quotas_shows_how_many_subjects_are_over_their_limit(
    pipeline: tuple[ApiProcess, Meter], sent: Sent
) -> None:
    api, _ = pipeline
    over = str(len(sent.used_today))

    def listed() -> list[list[str]] | None:
        result = kmeter(api, "quotas")
        assert result.returncode == 0, result.stderr
        rows = [line.split() for line in result.stdout.splitlines()[2:]]
        return rows if [row[-2] for row in rows] == ["0", over] else None

    assert eventually(listed, timeout=60, what="both quotas evaluated") == [
        ["generous", "tokens", str(10**12), "DAY", "UTC", "Block", "0", "0"],
        ["strict", "tokens", "1", "DAY", "UTC", "Block", over, "0"],
    ]
    listed_json = json.loads(kmeter(api, "quotas", "--output", "json").stdout)
    assert [(q["name"], q["subjectsOver"]) for q in listed_json["items"]] == [
        ("generous", 0),
        ("strict", len(sent.used_today)),
    ]


def test_a_wrong_token_and_an_unknown_meter_are_one_line_errors(
    pipeline: tuple[ApiProcess, Meter], tmp_path: Path
) -> None:
    api, meter = pipeline
    refused = kmeter(api, "usage", "tokens", token="wrong")
    assert refused.returncode == 1
    assert refused.stderr == (
        "kmeter usage: GET /api/v1/meters/tokens/query: the API answered 401: the bearer token "
        "is not valid (pass a valid token with --token or KMETER_API_TOKEN)\n"
    )
    unknown = kmeter(api, "usage", "no-such-meter")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith(
        "kmeter usage: GET /api/v1/meters/no-such-meter/query: the API answered 404: there is no "
        f"Meter 'no-such-meter' in namespace '{meter.namespace}'"
    )
    path = tmp_path / "one.jsonl"
    path.write_text('{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"a"}\n')
    events = kmeter(api, "events", "send", str(path), token="wrong")
    assert events.returncode == 1
    assert events.stdout == "sent 0 events in 1 request\n"
    assert "the API answered 401" in events.stderr
