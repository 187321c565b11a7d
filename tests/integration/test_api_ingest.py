"""``POST /api/v1/events`` of a real ``kmeter api`` against real Kafka."""

from __future__ import annotations

import asyncio
import http.client
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from tests.support.api import (
    ApiProcess,
    check_documented,
    create_meter_topics,
    meter_manifest,
    read_ingest_topic,
    write_manifests,
    write_tokens,
)
from tests.support.kafka import read_event_records
from tests.support.operator import eventually

from kmeter.api import openapi

TOKEN = "ingest-token"
DOCUMENT = openapi.document()
EVENTS = "/api/v1/events"


@pytest.fixture(scope="module")
def namespace() -> str:
    return f"ing-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def api(
    kafka_bootstrap: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    folder = tmp_path_factory.mktemp("api")
    create_meter_topics(kafka_bootstrap, namespace, "tokens")
    process = ApiProcess(
        kafka_bootstrap,
        folder,
        manifests=write_manifests(folder / "meters", [meter_manifest(namespace, "tokens")]),
        tokens=write_tokens(folder / "tokens.yaml", {namespace: [TOKEN], "empty": ["other"]}),
    )
    process.start()
    yield process
    process.stop()


def event(number: int, subject: str = "customer-1", **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e-{number}",
        "source": "test",
        "type": "llm.completion",
        "subject": subject,
        "time": "2024-05-01T12:00:00Z",
        "data": {"tokens": number, "exact": "0.10000000000000000001"},
        **extra,
    }


def post(api: ApiProcess, body: Any, content_type: str, token: str = TOKEN) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    answer = api.call("POST", EVENTS, token=token, body=raw, content_type=content_type)
    check_documented(DOCUMENT, EVENTS, "POST", answer)
    return answer


def test_every_content_type_lands_exactly_once_keyed_by_subject(
    api: ApiProcess, kafka_bootstrap: str, namespace: str
) -> None:
    run = uuid.uuid4().hex[:6]
    single = event(1, subject=f"s-{run}")
    batch = [event(n, subject=f"s-{run}-{n % 3}") for n in range(2, 52)]
    either_one = event(60, subject=f"s-{run}")
    either_many = [event(61, subject=f"s-{run}"), event(62, subject=f"t-{run}")]
    assert post(api, single, "application/cloudevents+json").status == 204
    assert post(api, batch, "application/cloudevents-batch+json").status == 204
    assert post(api, either_one, "application/json").status == 204
    assert post(api, either_many, "application/json; charset=utf-8").status == 204

    sent = [single, *batch, either_one, *either_many]
    landed = [
        (key, found)
        for key, found in read_ingest_topic(kafka_bootstrap, namespace)
        if found["subject"].endswith(run) or run in found["subject"]
    ]
    assert sorted(found["id"] for _, found in landed) == sorted(e["id"] for e in sent)
    for key, found in landed:
        assert key == found["subject"].encode()
    by_id = {found["id"]: found for _, found in landed}
    for original in sent:
        assert by_id[original["id"]]["data"] == original["data"]  # exact, no float rounding
        assert by_id[original["id"]]["time"] == "2024-05-01T12:00:00Z"


def test_a_subjects_events_go_where_kafkas_default_partitioner_puts_them(
    api: ApiProcess, kafka_bootstrap: str, namespace: str
) -> None:
    # Where every other producer (the sidecars, a client of Kafka) puts them: the worker's
    # deduplication is per partition. Three requests: the later ones name subjects the API has
    # seen before. (Fixed subjects, which the default partitioner spreads over both partitions;
    # no other test of this module uses them.)
    subjects = [f"partitioned-{number}" for number in range(12)]
    for round_ in range(3):
        batch = [event(100 * round_ + n, subject=subject) for n, subject in enumerate(subjects)]
        assert post(api, batch, "application/cloudevents-batch+json").status == 204

    records = asyncio.run(read_event_records(kafka_bootstrap, namespace))
    placed = [(partition, key) for partition, key, found in records if found["subject"] in subjects]
    assert len(placed) == 36
    partitions = [0, 1]  # create_meter_topics'
    for partition, key in placed:
        assert partition == DefaultPartitioner()(key, partitions, partitions), key
    assert len({partition for partition, _ in placed}) == 2


def test_an_invalid_batch_is_refused_whole_naming_index_and_field(
    api: ApiProcess, kafka_bootstrap: str, namespace: str
) -> None:
    run = uuid.uuid4().hex[:6]
    bad = [
        event(1, subject=f"bad-{run}"),
        {**event(2, subject=f"bad-{run}"), "subject": ""},
        event(3, subject=f"bad-{run}"),
        {**event(4, subject=f"bad-{run}"), "time": "yesterday"},
    ]
    answer = post(api, bad, "application/cloudevents-batch+json")
    assert answer.status == 400
    assert answer.content_type == "application/problem+json"
    problem = answer.json()
    errors = problem["extensions"]["validationErrors"]
    assert {(e["index"], e["field"]) for e in errors} == {(1, "subject"), (3, "time")}
    assert "[1] subject" in problem["detail"]
    assert "[3] time" in problem["detail"]
    landed = read_ingest_topic(kafka_bootstrap, namespace)
    assert not [found for _, found in landed if found["subject"] == f"bad-{run}"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[]", "application/cloudevents+json", 400, "one event object"),
        (orjson.dumps(event(1)), "application/cloudevents-batch+json", 400, "array"),
        (orjson.dumps(event(1)), "text/plain", 415, "Content-Type"),
        (orjson.dumps([event(n) for n in range(10_001)]), "application/json", 413, "10000"),
        (b"[" + b" " * (5 * 1024 * 1024) + b"]", "application/json", 413, "too large"),
    ],
)
def test_malformed_requests_get_a_problem(
    api: ApiProcess, body: bytes, content_type: str, status: int, words: str
) -> None:
    answer = post(api, body, content_type)
    assert answer.status == status
    assert answer.content_type == "application/problem+json"
    assert words in answer.json()["detail"]


def raw_post(api: ApiProcess, headers: list[tuple[str, str]], body: bytes) -> tuple[int, Any]:
    """POST with exactly these headers (urllib would add a Content-Type of its own)."""
    connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        connection.putrequest("POST", EVENTS)
        for name, value in [*headers, ("Content-Length", str(len(body)))]:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        connection.close()


def test_a_request_without_a_content_type_is_told_so(api: ApiProcess) -> None:
    status, problem = raw_post(api, [("Authorization", f"Bearer {TOKEN}")], orjson.dumps(event(1)))
    assert status == 415
    assert problem["detail"].startswith("Content-Type (none) is not accepted")


def test_two_authorization_headers_are_refused_whichever_is_valid(api: ApiProcess) -> None:
    for tokens in ((TOKEN, "wrong"), ("wrong", TOKEN), (TOKEN, TOKEN)):
        headers = [("Authorization", f"Bearer {token}") for token in tokens]
        status, problem = raw_post(
            api, [*headers, ("Content-Type", "application/json")], orjson.dumps(event(1))
        )
        assert status == 401
        assert "one Authorization header" in problem["detail"]


def test_without_a_valid_token_nothing_is_accepted(api: ApiProcess) -> None:
    for token in (None, "wrong"):
        answer = api.call(
            "POST",
            EVENTS,
            token=token,
            body=orjson.dumps(event(1)),
            content_type="application/json",
        )
        check_documented(DOCUMENT, EVENTS, "POST", answer)
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_namespace_without_an_ingest_topic_is_a_conflict(api: ApiProcess) -> None:
    for _ in range(3):
        answer = post(api, event(1), "application/json", token="other")
        assert answer.status == 409
        assert "first Meter" in answer.json()["detail"]
    # and a client cannot write ERROR lines into the API's log at will (aiokafka's own)
    assert "not found in cluster metadata" not in api.log_path.read_text()


def test_another_namespace_in_the_path_is_forbidden(api: ApiProcess, namespace: str) -> None:
    path = "/api/v1/namespaces/empty/events"
    answer = api.call(
        "POST", path, token=TOKEN, body=orjson.dumps(event(1)), content_type="application/json"
    )
    check_documented(DOCUMENT, "/api/v1/namespaces/{namespace}/events", "POST", answer)
    assert answer.status == 403


def test_kafka_down_is_503_with_retry_after_and_ingest_resumes(
    kafka_bootstrap: str, tmp_path: Path, kafka_broker: Any
) -> None:
    namespace = f"down-{uuid.uuid4().hex[:8]}"
    create_meter_topics(kafka_bootstrap, namespace, "tokens")
    process = ApiProcess(
        kafka_bootstrap,
        tmp_path,
        manifests=write_manifests(tmp_path / "m", [meter_manifest(namespace, "tokens")]),
        tokens=write_tokens(tmp_path / "t.yaml", {namespace: [TOKEN]}),
    )
    process.start()
    try:
        assert post(process, event(1), "application/json").status == 204
        kafka_broker.stop()
        answer = process.call(
            "POST",
            EVENTS,
            token=TOKEN,
            body=orjson.dumps(event(2)),
            content_type="application/json",
            timeout=60,
        )
        check_documented(DOCUMENT, EVENTS, "POST", answer)
        assert answer.status == 503
        assert int(answer.headers["Retry-After"]) > 0
        kafka_broker.start()
        eventually(
            lambda: post(process, event(2), "application/json").status == 204,
            timeout=90,
            what="ingest works again after Kafka returned",
        )
        ids = sorted(found["id"] for _, found in read_ingest_topic(kafka_bootstrap, namespace))
        assert set(ids) == {"e-1", "e-2"}
    finally:
        process.stop()
