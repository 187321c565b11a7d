"""Queries of a real ``kmeter api`` over totals in real Kafka, against a plain oracle."""

from __future__ import annotations

import json
import random
import time
import urllib.parse
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tests.support.api import (
    ApiProcess,
    check_documented,
    create_meter_topics,
    meter_manifest,
    produce_totals,
    spec_of,
    write_manifests,
    write_tokens,
)
from tests.support.operator import eventually

from kmeter.api import openapi
from kmeter.core.decimals import format_decimal
from kmeter.core.events import UsageEvent
from kmeter.core.windows import WindowSize, local_window

TOKEN = "query-token"
DOCUMENT = openapi.document()
QUERY = "/api/v1/meters/{meterIdOrSlug}/query"
START = datetime(2024, 3, 8, tzinfo=UTC)  # the stream spans New York's spring-forward
SUBJECTS = [f"customer-{n}" for n in range(5)]
MODELS = ["gpt-4o", "mini", None]


def random_events(seed: int, count: int) -> list[UsageEvent]:
    rng = random.Random(seed)
    events = []
    for number in range(count):
        data: dict[str, Any] = {"tokens": rng.choice(["1", "2.5", "0.1", "1000000", "-3", "7"])}
        model = rng.choice(MODELS)
        if model is not None:
            data["model"] = model
        at = START + timedelta(
            seconds=rng.randrange(0, 5 * 86400), microseconds=rng.randrange(10**6)
        )
        events.append(
            UsageEvent(f"e{number}", "test", "llm.completion", rng.choice(SUBJECTS), at, data)
        )
    # A few other types and duplicates the fold must skip.
    events += [events[0]._replace(type="other"), events[1], events[2]]
    return events


@pytest.fixture(scope="module")
def setup(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ApiProcess, list[UsageEvent]]]:
    namespace = f"qry-{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("api")
    meter = meter_manifest(namespace, "tokens", group_by={"model": "$.model"})
    daily = meter_manifest(namespace, "daily", window_size="DAY")
    for manifest in (meter, daily):
        create_meter_topics(kafka_bootstrap, namespace, manifest["metadata"]["name"])
    events = random_events(7, 1500)
    produce_totals(kafka_bootstrap, namespace, "tokens", spec_of(meter), events, batches=5)
    produce_totals(kafka_bootstrap, namespace, "daily", spec_of(daily), events, batches=2)
    ghost = [UsageEvent("g1", "test", "llm.completion", "ghost", START, {"tokens": 5})]
    produce_totals(kafka_bootstrap, namespace, "tokens", spec_of(meter), ghost, abort=True)
    process = ApiProcess(
        kafka_bootstrap,
        folder,
        manifests=write_manifests(folder / "meters", [meter, daily]),
        tokens=write_tokens(folder / "tokens.yaml", {namespace: [TOKEN]}),
    )
    process.start()
    yield process, events
    process.stop()


def oracle(events: list[UsageEvent], params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Straight from the raw events: filter, find each event's local window, sum."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for event in events:
        if event.type == "llm.completion" and (event.source, event.id) not in seen:
            seen.add((event.source, event.id))
            unique.append(event)
    start = datetime.fromisoformat(params["from"]) if "from" in params else None
    end = datetime.fromisoformat(params["to"]) if "to" in params else None
    subjects = params.get("subject")
    group_by = params.get("groupBy", [])
    wanted_model = params.get("filterGroupBy[model]")
    by_subject = "subject" in group_by or subjects is not None
    zone = ZoneInfo(params.get("windowTimeZone", "UTC"))
    sums: dict[tuple[Any, ...], Decimal] = defaultdict(Decimal)
    for event in unique:
        assert event.data is not None
        if (start and event.time < start) or (end and event.time >= end):
            continue
        if subjects is not None and event.subject not in subjects:
            continue
        if wanted_model is not None and event.data.get("model") != wanted_model:
            continue
        if "windowSize" in params:
            window = local_window(event.time, WindowSize(params["windowSize"]), zone)
            begin = max(window.start, start) if start else window.start
            finish = min(window.end, end) if end else window.end
        else:
            assert start is not None
            assert end is not None
            begin, finish = start, end
        labels = tuple(event.data.get(name) for name in group_by if name != "subject")
        key = (begin, finish, event.subject if by_subject else None, labels)
        sums[key] += Decimal(event.data["tokens"])
    return sorted(
        (
            (begin, finish, subject, labels, value)
            for (begin, finish, subject, labels), value in sums.items()
        ),
        key=order,
    )


def order(row: tuple[Any, ...]) -> Any:
    begin, finish, subject, labels, _ = row
    return (begin, finish, subject or "", [(label is not None, label or "") for label in labels])


def rows_of(answer: Any, group_by: list[str]) -> list[tuple[Any, ...]]:
    names = [name for name in group_by if name != "subject"]
    rows = [
        (
            datetime.fromisoformat(row["windowStart"]),
            datetime.fromisoformat(row["windowEnd"]),
            row["subject"],
            tuple(row["groupBy"][name] for name in names),
            row["value"],
        )
        for row in answer["data"]
    ]
    return sorted(rows, key=order)


def get(api: ApiProcess, meter: str, params: dict[str, Any], accept: str | None = None) -> Any:
    query = urllib.parse.urlencode(params, doseq=True)
    answer = api.call("GET", f"/api/v1/meters/{meter}/query?{query}", token=TOKEN, accept=accept)
    check_documented(DOCUMENT, QUERY, "GET", answer)
    return answer


CASES: list[dict[str, Any]] = [
    {"from": "2024-03-08T00:00:00+00:00", "to": "2024-03-13T00:00:00+00:00"},
    {"windowSize": "DAY", "windowTimeZone": "America/New_York", "groupBy": ["subject"]},
    {"windowSize": "HOUR", "windowTimeZone": "America/New_York", "groupBy": ["model"]},
    {"windowSize": "DAY", "windowTimeZone": "Asia/Kolkata", "subject": ["customer-1"]},
    {"windowSize": "HOUR", "windowTimeZone": "Asia/Kathmandu", "filterGroupBy[model]": "mini"},
    {"windowSize": "MONTH", "windowTimeZone": "UTC", "groupBy": ["subject", "model"]},
    {
        "windowSize": "MINUTE",
        "from": "2024-03-10T06:00:00+00:00",
        "to": "2024-03-10T08:00:00+00:00",
        "groupBy": ["subject"],
    },
    {
        "windowSize": "DAY",
        "windowTimeZone": "Asia/Kathmandu",
        "from": "2024-03-09T00:15:00+00:00",
        "to": "2024-03-12T00:00:00+00:00",
        "subject": ["customer-2", "customer-3"],
        "groupBy": ["model"],
    },
]


@pytest.mark.parametrize("params", CASES)
def test_queries_equal_the_oracle_exactly(
    setup: tuple[ApiProcess, list[UsageEvent]], params: dict[str, Any]
) -> None:
    api, events = setup
    answer = get(api, "tokens", params)
    assert answer.status == 200, answer.body
    # Numbers read as exact decimals: the JSON text must be the exact value.
    result = json.loads(answer.body, parse_float=Decimal, parse_int=Decimal)
    expected = oracle(events, params)
    assert rows_of(result, params.get("groupBy", [])) == expected
    assert expected, "a case without rows proves little"
    assert result.get("windowSize") == params.get("windowSize")


def test_values_are_exact_number_text(setup: tuple[ApiProcess, list[UsageEvent]]) -> None:
    api, events = setup
    params = {"from": "2024-03-08T00:00:00+00:00", "to": "2024-03-13T00:00:00+00:00"}
    ((*_, want),) = oracle(events, params)
    body = get(api, "tokens", params).body.decode()
    assert f'"value":{format_decimal(want)},' in body


def test_csv_has_openmeter_columns(setup: tuple[ApiProcess, list[UsageEvent]]) -> None:
    api, _ = setup
    params = {"windowSize": "DAY", "groupBy": ["subject", "model"]}
    answer = get(api, "tokens", params, accept="text/csv")
    assert answer.status == 200
    assert answer.content_type == "text/csv"
    lines = answer.body.decode().splitlines()
    assert lines[0] == "window_start,window_end,subject,model,value"
    json_rows = get(api, "tokens", params).json()["data"]
    assert len(lines) == len(json_rows) + 1
    first = json_rows[0]
    assert lines[1].split(",")[0] == first["windowStart"]


def test_inexact_rollups_are_refused_with_the_reason(
    setup: tuple[ApiProcess, list[UsageEvent]],
) -> None:
    api, _ = setup
    answer = get(
        api,
        "daily",
        {
            "windowSize": "DAY",
            "windowTimeZone": "Asia/Kolkata",
            "from": "2024-03-08T00:00:00Z",
            "to": "2024-03-12T00:00:00Z",
        },
    )
    assert answer.status == 400
    assert "Asia/Kolkata" in answer.json()["detail"]
    assert get(api, "daily", {"windowSize": "HOUR"}).status == 400
    for params in (
        {"from": "2024-03-08T00:00:30Z"},
        {"from": "yesterday"},
        {"windowSize": "WEEK"},
        {"windowTimeZone": "Mars/Olympus"},
        {"groupBy": ["region"]},
    ):
        refused = get(api, "tokens", params)
        assert refused.status == 400
        assert refused.json()["extensions"]["parameter"] in params  # which one, as documented
    utc = get(api, "daily", {"windowSize": "DAY"})
    assert utc.status == 200


@pytest.mark.parametrize("key", ["filterGroupBy[]", "filterGroupBy[model", "filterGroupBy"])
def test_a_malformed_filter_is_refused_not_ignored(
    setup: tuple[ApiProcess, list[UsageEvent]], key: str
) -> None:
    # ignored, it would answer unfiltered usage to someone who asked for a filter
    answer = get(setup[0], "tokens", {key: "mini"})
    assert answer.status == 400
    assert "filterGroupBy[name]=value" in answer.json()["detail"]
    assert key in answer.json()["detail"]
    assert answer.json()["extensions"]["parameter"] == "filterGroupBy"


@pytest.mark.parametrize(
    ("params", "twice"),
    [
        ({"windowSize": ["DAY", "HOUR"]}, "windowSize"),
        ({"windowTimeZone": ["UTC", "Europe/Paris"], "windowSize": "HOUR"}, "windowTimeZone"),
        ({"from": ["2024-03-08T00:00:00Z", "2024-03-09T00:00:00Z"]}, "from"),
    ],
)
def test_a_parameter_given_twice_is_refused_not_half_ignored(
    setup: tuple[ApiProcess, list[UsageEvent]], params: dict[str, Any], twice: str
) -> None:
    answer = get(setup[0], "tokens", params)
    assert answer.status == 400
    assert "give it at most once" in answer.json()["detail"]
    assert answer.json()["extensions"]["parameter"] == twice


def test_subjects_take_from_and_to_by_the_rules_of_a_query(
    setup: tuple[ApiProcess, list[UsageEvent]],
) -> None:
    api, _ = setup

    def subjects(**params: str) -> Any:
        query = urllib.parse.urlencode(params)
        answer = api.call("GET", f"/api/v1/meters/tokens/subjects?{query}", token=TOKEN)
        check_documented(DOCUMENT, "/api/v1/meters/{meterIdOrSlug}/subjects", "GET", answer)
        return answer

    off_boundary = subjects(**{"from": "2024-03-08T00:00:30Z"})
    assert off_boundary.status == 400
    assert off_boundary.json()["extensions"]["parameter"] == "from"
    backwards = subjects(**{"from": "2024-03-09T00:00:00Z", "to": "2024-03-08T00:00:00Z"})
    assert backwards.status == 400
    assert "to must be after from" in backwards.json()["detail"]
    assert subjects(**{"from": "2024-03-08T00:00:00Z"}).json() == SUBJECTS


def test_aborted_totals_are_never_seen(setup: tuple[ApiProcess, list[UsageEvent]]) -> None:
    api, _ = setup
    answer = api.call("GET", "/api/v1/meters/tokens/subjects", token=TOKEN)
    check_documented(DOCUMENT, "/api/v1/meters/{meterIdOrSlug}/subjects", "GET", answer)
    assert answer.json() == SUBJECTS


def test_meters_are_listed_in_openmeter_shape(setup: tuple[ApiProcess, list[UsageEvent]]) -> None:
    api, _ = setup
    answer = api.call("GET", "/api/v1/meters", token=TOKEN)
    check_documented(DOCUMENT, "/api/v1/meters", "GET", answer)
    meters = {meter["slug"]: meter for meter in answer.json()}
    assert set(meters) == {"daily", "tokens"}
    assert meters["tokens"]["groupBy"] == {"model": "$.model"}
    assert meters["tokens"]["valueProperty"] == "$.tokens"
    one = api.call("GET", "/api/v1/meters/tokens", token=TOKEN)
    check_documented(DOCUMENT, "/api/v1/meters/{meterIdOrSlug}", "GET", one)
    assert one.json() == meters["tokens"]
    missing = api.call("GET", "/api/v1/meters/nope", token=TOKEN)
    check_documented(DOCUMENT, "/api/v1/meters/{meterIdOrSlug}", "GET", missing)
    assert missing.status == 404


def test_a_restarted_api_gives_the_same_answers(
    setup: tuple[ApiProcess, list[UsageEvent]],
) -> None:
    api, _ = setup
    before = [get(api, "tokens", params).body for params in CASES]
    api.stop()
    api.start()
    assert [get(api, "tokens", params).body for params in CASES] == before


def test_a_new_total_is_visible_within_a_second(
    setup: tuple[ApiProcess, list[UsageEvent]], kafka_bootstrap: str
) -> None:
    api, _ = setup
    namespace = next(iter(api.call("GET", "/api/v1/meters", token=TOKEN).json()))["namespace"]
    meter = meter_manifest(namespace, "tokens", group_by={"model": "$.model"})
    fresh = [UsageEvent("fresh", "t", "llm.completion", "late-comer", START, {"tokens": 1})]
    produce_totals(kafka_bootstrap, namespace, "tokens", spec_of(meter), fresh)
    began = time.monotonic()
    eventually(
        lambda: (
            "late-comer" in api.call("GET", "/api/v1/meters/tokens/subjects", token=TOKEN).json()
        ),
        timeout=5,
        what="the new subject is visible",
    )
    assert time.monotonic() - began < 1.0
