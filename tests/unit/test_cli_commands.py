"""The usage-API commands' behaviour at the edges: bad flags, bad files, an unreachable API,
refusals, retries and splits — against a small stand-in HTTP server (the real API is exercised by
tests/integration/test_cli.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from tests.support.api import KMETER
from tests.support.http import serve_in_thread
from tests.support.operator import free_port
from typer.testing import CliRunner

from kmeter.cli import app
from kmeter.client.event_lines import parse_lines
from kmeter.client.sender import Sender, SendReport
from kmeter.client.usage_api import UsageApi


@dataclass
class StandIn:
    """What the stand-in API received, and how it should answer ``POST /api/v1/events``."""

    url: str = ""
    batches: list[list[dict[str, object]]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    refuse_subject: str = "refused-by-server"
    max_body: int = 10**9
    unavailable: int = 0
    status: int | None = None
    queries: list[list[tuple[str, str]]] = field(default_factory=list)


def problem(status: int, detail: str, **extensions: object) -> web.Response:
    body: dict[str, object] = {"type": "about:blank", "status": status, "detail": detail}
    if extensions:
        body["extensions"] = extensions
    return web.json_response(body, status=status, content_type="application/problem+json")


@pytest.fixture
def api() -> Iterator[StandIn]:
    state = StandIn()

    async def events(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if state.status is not None:
            return problem(state.status, f"status {state.status} as told")
        if state.unavailable:
            state.unavailable -= 1
            return (
                problem(503, "Kafka is unreachable", headers=None)
                if False
                else web.Response(status=503, headers={"Retry-After": "0"}, text="busy")
            )
        if len(body) > state.max_body:
            return problem(413, "the request body is too large")
        batch = orjson.loads(body)
        state.batches.append(batch)
        invalid = [
            {"index": i, "field": "subject", "code": "invalid_event", "message": "refused here"}
            for i, event in enumerate(batch)
            if event["subject"] == state.refuse_subject
        ]
        if invalid:
            return problem(400, "some events are invalid", validationErrors=invalid)
        state.accepted += [str(event["id"]) for event in batch]
        return web.Response(status=204)

    async def query(request: web.Request) -> web.Response:
        state.queries.append(list(request.query.items()))
        if request.headers.get("Authorization") != "Bearer right":
            return problem(401, "the bearer token is not valid")
        return web.json_response({"data": []})

    application = web.Application()
    application.router.add_post("/api/v1/events", events)
    application.router.add_get("/api/v1/meters/{meter}/query", query)
    with serve_in_thread(application) as served:
        state.url = f"http://127.0.0.1:{served.port}"
        yield state


def kmeter(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=stdin, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def write_events(path: Path, subjects: list[str]) -> Path:
    lines = [
        orjson.dumps(
            {"specversion": "1.0", "id": f"e{n}", "source": "t", "type": "x", "subject": s}
        )
        for n, s in enumerate(subjects, start=1)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_from_that_is_not_rfc_3339_fails_in_one_line_before_any_request(api: StandIn) -> None:
    code, out, err = kmeter("usage", "m", "--from", "yesterday", "--api-url", api.url)
    assert (code, out) == (2, "")
    assert err == 'kmeter usage: --from: "yesterday" is not an RFC 3339 timestamp\n'
    assert api.queries == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time-zone", "Mars/Base"], "kmeter usage: --time-zone: 'Mars/Base' is not an IANA"),
        (["--filter", "model"], "kmeter usage: --filter: 'model' is not KEY=VALUE"),
        (
            ["--from", "2024-05-02T00:00:00Z", "--to", "2024-05-01T00:00:00Z"],
            "kmeter usage: --from 2024-05-02T00:00:00Z is not before --to",
        ),
        (["--api-url", "localhost:8888"], "kmeter usage: --api-url: 'localhost:8888' is not"),
    ],
)
def test_bad_flags_fail_with_exit_code_2_and_name_the_flag(
    api: StandIn, args: list[str], message: str
) -> None:
    code, _, err = kmeter("usage", "m", *args)
    assert code == 2
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_an_unreachable_api_is_one_line_naming_the_url_and_how_to_change_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = kmeter("meters", "--api-url", url)
    assert code == 1
    assert err.startswith(f"kmeter meters: cannot reach the usage API at {url} (")
    assert "--api-url or KMETER_API_URL" in err
    assert err.count("\n") == 1


def test_progress_asked_for_is_drawn_also_when_standard_error_is_not_a_terminal(
    api: StandIn, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", [f"customer-{n % 7}" for n in range(50)])
    for flag, drawn in (("--progress", True), ("--no-progress", False), (None, False)):
        code, _, err = kmeter(
            "events", "send", str(events), "--api-url", api.url, *([flag] if flag else [])
        )
        assert code == 0, err
        assert ("sending" in err) is drawn, (flag, err)


def test_the_api_refuses_one_port_for_both_its_requests_and_its_metrics() -> None:
    code, _, err = kmeter(
        "api", "--kafka-bootstrap", "k:9092", "--port", "9000", "--metrics-port", "9000"
    )
    assert code == 2
    assert err == "kmeter api: --metrics-port must differ from --port\n"


EXAMPLES_DEV = Path(__file__).resolve().parents[2] / "examples" / "dev"


def test_a_port_the_api_cannot_have_is_one_line_and_status_1(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with taken:
        other = str(free_port())
        for flags in (["--port", str(port)], ["--port", other, "--metrics-port", str(port)]):
            ran = subprocess.run(
                [KMETER, "api", "--kafka-bootstrap", f"127.0.0.1:{free_port()}",
                 "--manifests", str(EXAMPLES_DEV), "--tokens", str(tmp_path / "none.yaml"),
                 "--host", "127.0.0.1", *flags],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert ran.returncode == 1
            assert ran.stderr.splitlines()[-1].startswith(
                f"kmeter api: cannot listen on 127.0.0.1:{port}: "
            )


def test_a_refused_token_says_how_to_pass_one(api: StandIn) -> None:
    code, _, err = kmeter("usage", "m", "--api-url", api.url, "--token", "wrong")
    assert code == 1
    assert err == (
        "kmeter usage: GET /api/v1/meters/m/query: the API answered 401: the bearer token is "
        "not valid (pass a valid token with --token or KMETER_API_TOKEN)\n"
    )


def test_the_flags_become_the_apis_query_parameters(api: StandIn) -> None:
    code, out, _ = kmeter(
        "usage", "m", "--api-url", api.url, "--token", "right", "-s", "a", "-s", "b",
        "--from", "2024-05-01T00:00:00Z", "--to", "2024-05-02T00:00:00+02:00", "--window", "hour",
        "-g", "model", "--filter", "model=gpt-4o", "-z", "Europe/Paris", "-o", "json",
    )  # fmt: skip
    assert (code, json.loads(out)) == (0, {"data": []})
    assert api.queries == [
        [
            ("from", "2024-05-01T00:00:00Z"),
            ("to", "2024-05-02T00:00:00+02:00"),
            ("windowSize", "HOUR"),
            ("windowTimeZone", "Europe/Paris"),
            ("subject", "a"),
            ("subject", "b"),
            ("groupBy", "model"),
            ("filterGroupBy[model]", "gpt-4o"),
        ]
    ]


def test_a_missing_file_fails_with_exit_code_2(tmp_path: Path) -> None:
    code, _, err = kmeter("events", "send", str(tmp_path / "none.jsonl"))
    assert code == 2
    assert (
        err
        == f"kmeter events send: cannot read {tmp_path / 'none.jsonl'}: No such file or directory\n"
    )


def test_events_the_api_refuses_are_reported_by_line_and_the_others_sent_once(
    api: StandIn, tmp_path: Path
) -> None:
    subjects = ["a", "refused-by-server", "b", "c", "refused-by-server", "d", "e"]
    path = write_events(tmp_path / "events.jsonl", subjects)
    code, out, err = kmeter(
        "events", "send", str(path), "--batch-size", "3", "--concurrency", "1", "--api-url", api.url
    )
    assert code == 1
    assert api.accepted == ["e1", "e3", "e4", "e6", "e7"]
    assert err.splitlines() == ["line 2: subject: refused here", "line 5: subject: refused here"]
    assert out == "sent 5 events in 5 requests; 2 of 7 lines rejected (listed on standard error)\n"


def test_a_batch_too_large_for_the_api_is_split_in_order(api: StandIn, tmp_path: Path) -> None:
    path = write_events(tmp_path / "events.jsonl", [f"s{n}" for n in range(10)])
    api.max_body = 300
    code, out, _ = kmeter("events", "send", str(path), "--concurrency", "1", "--api-url", api.url)
    assert code == 0, out
    assert api.accepted == [f"e{n}" for n in range(1, 11)]
    assert all(len(orjson.dumps(batch)) <= 300 for batch in api.batches)


def test_an_unavailable_api_is_retried_with_the_same_events(api: StandIn, tmp_path: Path) -> None:
    path = write_events(tmp_path / "events.jsonl", ["a", "b", "c"])
    api.unavailable = 2
    code, out, _ = kmeter(
        "events", "send", "-", "--concurrency", "1", "--api-url", api.url, stdin=path.read_bytes()
    )
    assert code == 0
    assert api.accepted == ["e1", "e2", "e3"]
    assert out == "sent 3 events in 3 requests (2 retried)\n"


def test_a_refusal_of_the_whole_batch_stops_and_says_where_to_resume(
    api: StandIn, tmp_path: Path
) -> None:
    path = write_events(tmp_path / "events.jsonl", ["a", "b", "c", "d", "e"])
    api.status = 409
    code, out, err = kmeter("events", "send", str(path), "--batch-size", "2", "--api-url", api.url)
    assert code == 1
    assert out.startswith("sent 0 events in ")
    assert err.startswith(
        "kmeter events send: POST /api/v1/events: the API answered 409: status 409 as told; "
        "stopped at line 1: 0 events were sent, not all of those from line 1 on"
    )
    assert err.count("\n") == 1


@pytest.mark.parametrize("concurrency", ["1", "3", "16"])
def test_batches_in_flight_together_deliver_every_event_exactly_once(
    api: StandIn, tmp_path: Path, concurrency: str
) -> None:
    path = write_events(tmp_path / "events.jsonl", [f"s{n % 7}" for n in range(1000)])
    code, out, _ = kmeter(
        "events", "send", str(path), "--batch-size", "7", "--concurrency", concurrency,
        "--api-url", api.url,
    )  # fmt: skip
    assert (code, out) == (0, "sent 1,000 events in 143 requests\n")
    assert sorted(api.accepted) == sorted(f"e{n}" for n in range(1, 1001))
    assert [len(batch) for batch in api.batches] == [7] * 142 + [6]


def test_progress_only_moves_forward_and_ends_at_the_last_byte(
    api: StandIn, tmp_path: Path
) -> None:
    path = write_events(tmp_path / "events.jsonl", ["a", "", "b"] * 100)
    seen: list[int] = []

    async def send() -> SendReport:
        sender = Sender(
            UsageApi(api.url, None), max_events=10, max_bytes=10**6, progress=seen.append,
            concurrency=4,
        )  # fmt: skip
        async with sender.api:
            with path.open("rb") as lines:
                return await sender.send(parse_lines(lines, ingest_time=datetime.now(UTC)))

    report = asyncio.run(send())
    assert (report.sent, len(report.rejected)) == (200, 100)
    assert seen == sorted(seen)
    assert seen[-1] == path.stat().st_size
