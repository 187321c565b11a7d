"""``kmeter api`` answers as its OpenAPI document says, checked by Schemathesis.

Schemathesis (``st``) reads ``/openapi.json`` from a real ``kmeter api`` on the real Kafka and
generates requests from it — valid and invalid events, batches, query parameters, tokens or
none — and checks every answer: no 5xx, only documented status codes, content types, headers
and bodies, schema-valid requests accepted and schema-invalid ones refused, authentication
not ignored. The Meter has window totals (written as its worker writes them), so queries
answer rows.

What the document cannot say is given to Schemathesis in its configuration: the namespace and
the Meter that exist, and that a schema-valid query (or subjects listing) may still be refused
with 400 — for rules across parameters or about the Meter (``to`` not after ``from``, a groupBy
name the Meter does not have, a window size finer than the Meter stores), each with its reason;
every other check applies to them as to the rest.

Found by it (2026-12-06): the document let through events the API refuses — extension
attribute names other than lower-case letters and digits, extension values that are objects,
times before 1970, non-JSON ``datacontenttype``, ``data_base64``. The document now states those
rules, from the same patterns validation uses (:mod:`kmeter.core.events`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.support.api import (
    ApiProcess,
    create_meter_topics,
    meter_manifest,
    produce_totals,
    spec_of,
    write_manifests,
    write_tokens,
)
from tests.support.kafka import create_ingest_topic

from kmeter.core.events import UsageEvent

ST = str(Path(sys.executable).parent / "st")
TOKEN = "conformance-token"
NAMESPACE = "conformance"
METER = "tokens"


@pytest.fixture
def api(kafka_bootstrap: str, tmp_path: Path) -> Iterator[ApiProcess]:
    manifest = meter_manifest(NAMESPACE, METER, group_by={"model": "$.model"})
    asyncio.run(create_ingest_topic(kafka_bootstrap, NAMESPACE))
    create_meter_topics(kafka_bootstrap, NAMESPACE, METER)
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)
    events = [
        UsageEvent(
            f"e{number}",
            "conformance",
            "llm.completion",
            f"customer-{number % 3}",
            start + timedelta(minutes=number),
            {"tokens": number, "model": ("a", "b")[number % 2]},
        )
        for number in range(60)
    ]
    produce_totals(kafka_bootstrap, NAMESPACE, METER, spec_of(manifest), events)
    process = ApiProcess(
        kafka_bootstrap,
        tmp_path,
        manifests=write_manifests(tmp_path / "manifests", [manifest]),
        tokens=write_tokens(tmp_path / "tokens.yaml", {NAMESPACE: [TOKEN], "other": ["x"]}),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_every_endpoint_answers_as_the_openapi_document_says(
    api: ApiProcess, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[parameters]\n"
        f'"path.namespace" = "{NAMESPACE}"\n'
        f'"path.meterIdOrSlug" = "{METER}"\n'
        "[[operations]]\n"
        'include-path-regex = "/(query|subjects)$"\n'
        "checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 403, 404]\n"
    )
    command = [
        ST, "--config-file", str(config), "run", f"{api.url}/openapi.json",
        "-H", f"Authorization: Bearer {TOKEN}",
        "--checks", "all",
        "--max-examples", "40",
        "--seed", "20261206",  # reproducible cases; two workers and stateful runs still vary
        "--workers", "2",
        "--no-color",
    ]  # fmt: skip
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path
    )
    summary = run.stdout[-6000:]
    log = api.log_path.read_text()[-3000:]
    assert run.returncode == 0, f"{summary}\n{run.stderr[-2000:]}\napi log:\n{log}"
    assert "passed" in summary, summary
