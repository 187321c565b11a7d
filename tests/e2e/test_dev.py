"""End to end: ``kmeter dev`` as a user runs it — a real process, the example manifests, the
example OpenAI-style upstream — meters requests through its proxy and events through its API
exactly, and keeps them, each counted once, across a clean stop and a crash.

Needs no Kafka and no cluster (it is ``kmeter dev``'s point); it sits in ``e2e`` because it runs
the whole product.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.http import serve_in_thread
from tests.support.operator import eventually, free_port
from tests.support.processes import REPO, ManagedProcess

from kmeter.dev.log import EventLog

KMETER = str(Path(sys.executable).parent / "kmeter")
EXAMPLE = REPO / "examples" / "dev"
READY = "Ctrl-C stops."  # printed once everything listens


def _example_upstream() -> Any:
    spec = importlib.util.spec_from_file_location(
        "openai_upstream", REPO / "examples" / "openai-upstream" / "server.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def upstream() -> Iterator[str]:
    """The example's OpenAI-style upstream, served from a thread."""
    with serve_in_thread(_example_upstream().application()) as served:
        yield f"http://127.0.0.1:{served.port}"


class DevProcess(ManagedProcess):
    """``kmeter dev`` in a subprocess, its output in a file."""

    def __init__(self, upstream: str, data_dir: Path, manifests: Path = EXAMPLE) -> None:
        self.upstream = upstream
        self.data_dir = data_dir
        self.manifests = manifests
        self.proxy_port = free_port()
        self.api_port = free_port()
        self.log_path = data_dir.parent / f"dev-{os.urandom(3).hex()}.log"

    def command(self) -> list[str]:
        return [
            KMETER,
            "dev",
            "--manifests",
            str(self.manifests),
            "--upstream",
            self.upstream,
            "--proxy-port",
            str(self.proxy_port),
            "--api-port",
            str(self.api_port),
            "--data-dir",
            str(self.data_dir),
            "--value",
            "usage=$.usage",
            "--value",
            "model=$.model",
        ]

    def start(self) -> None:
        started = self.output().count(READY)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        eventually(self.healthy, timeout=30, what="kmeter dev's API answers")
        eventually(
            lambda: self.output().count(READY) > started, timeout=10, what="the proxy listens"
        )

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"kmeter dev exited; output:\n{self.log_tail()}")
        try:
            return get(f"{self.api}/healthz")[0] == 200
        except OSError:
            return False

    def terminate(self, signum: int) -> int:
        assert self.process is not None
        os.killpg(self.process.pid, signum)
        return self.process.wait(timeout=30)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(url: str, body: Any, content_type: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": content_type, **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def chat(dev: DevProcess, customer: str, model: str, max_tokens: int, stream: bool) -> int:
    """One completion through the proxy; the total tokens the client saw in the response."""
    request = urllib.request.Request(
        f"{dev.proxy}/v1/chat/completions",
        data=json.dumps(
            {
                "model": model,
                "max_tokens": max_tokens,
                "stream": stream,
                "messages": [{"role": "user", "content": "count these five words"}],
            }
        ).encode(),
        headers={"Content-Type": "application/json", "X-Customer-Id": customer},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read().decode()
    if not stream:
        return int(json.loads(body)["usage"]["total_tokens"])
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in body.splitlines()
        if line.startswith("data: {")
    ]
    return int(chunks[-1]["usage"]["total_tokens"])


def tokens(dev: DevProcess) -> dict[tuple[str, str], int]:
    status, body = get(f"{dev.api}/api/v1/meters/llm-tokens/query?groupBy=subject&groupBy=model")
    assert status == 200, body
    return {
        (row["subject"], row["groupBy"]["model"]): int(row["value"])
        for row in json.loads(body)["data"]
    }


def requests_by_status(dev: DevProcess) -> dict[tuple[str, str | None], int]:
    status, body = get(f"{dev.api}/api/v1/meters/llm-requests/query?groupBy=subject&groupBy=status")
    assert status == 200, body
    return {
        (row["subject"], row["groupBy"]["status"]): int(row["value"])
        for row in json.loads(body)["data"]
    }


def event(event_id: str, subject: str, model: str, total: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "billing-import",
        "type": "llm.completion",
        "subject": subject,
        "data": {"model": model, "usage": {"total_tokens": total}},
    }


def test_kmeter_dev_meters_traffic_and_events_exactly_and_keeps_them_once_across_restarts(
    upstream: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    dev = DevProcess(upstream, data_dir)
    dev.start()
    try:
        output = dev.log_path.read_text()
        for expected in ("Meter default/llm-tokens", "Quota default/free-tier", dev.proxy, dev.api):
            assert expected in output, output

        sent_tokens: Counter[tuple[str, str]] = Counter()
        sent_requests: Counter[tuple[str, str | None]] = Counter()
        plan = [("acme", "gpt-4o", 7), ("globex", "gpt-4o-mini", 31), ("acme", "gpt-4o-mini", 3)]
        for round_number in range(6):
            for customer, model, size in plan:
                seen = chat(dev, customer, model, size + round_number, round_number % 2 == 1)
                sent_tokens[(customer, model)] += seen
                sent_requests[(customer, "200")] += 1

        batch = [event(f"imp-{n}", "umbrella", "gpt-4o", 1000 + n) for n in range(5)]
        assert post(f"{dev.api}/api/v1/events", batch, "application/cloudevents-batch+json") == 204
        # sent again, as a client does after a timeout: the same (source, id) counts once
        assert post(f"{dev.api}/api/v1/events", batch, "application/cloudevents-batch+json") == 204
        bad = event("imp-bad", "umbrella", "gpt-4o", "many")
        assert post(f"{dev.api}/api/v1/events", bad, "application/cloudevents+json") == 204
        invalid = {"specversion": "1.0", "type": "llm.completion"}
        assert post(f"{dev.api}/api/v1/events", invalid, "application/cloudevents+json") == 400
        sent_tokens[("umbrella", "gpt-4o")] += sum(1000 + n for n in range(5))
        sent_requests[("umbrella", None)] += 6  # no status: the null group; the bad value counts

        expected_tokens = dict(sent_tokens)
        expected_requests = dict(sent_requests)
        eventually(
            lambda: tokens(dev) == expected_tokens, timeout=10, what="the proxy's events counted"
        )
        assert requests_by_status(dev) == expected_requests

        assert dev.terminate(signal.SIGTERM) == 0
        assert "kmeter dev: stopped" in dev.log_path.read_text()
        with EventLog.open(data_dir / "default" / "dead-letters") as letters:
            reasons = [json.loads(letter.value)["reason"] for letter in letters.read()]
        assert reasons == ['$.usage.total_tokens: expected a number or numeric string, got "many"']

        dev.start()
        assert tokens(dev) == expected_tokens
        assert requests_by_status(dev) == expected_requests
        sent = chat(dev, "globex", "gpt-4o", 11, stream=True)
        expected_tokens[("globex", "gpt-4o")] = sent
        eventually(lambda: tokens(dev) == expected_tokens, timeout=10, what="a new request")

        assert dev.terminate(signal.SIGKILL) == -signal.SIGKILL
        dev.start()
        assert tokens(dev) == expected_tokens
        assert post(f"{dev.api}/api/v1/events", batch, "application/cloudevents-batch+json") == 204
        assert tokens(dev) == expected_tokens  # the batch a third time: still counted once
        dev.terminate(signal.SIGINT)
        with EventLog.open(data_dir / "default" / "dead-letters") as letters:
            assert len(list(letters.read())) == 1  # restarts did not write it again
    finally:
        dev.stop()


def test_a_bad_manifest_stops_kmeter_dev_with_the_file_document_and_field(
    upstream: str, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    text = (EXAMPLE / "llm-tokens.yaml").read_text()
    (manifests / "meters.yaml").write_text(
        text
        + "---\n"
        + text.replace("name: llm-tokens", "name: broken").replace(
            "valueProperty: $.usage.total_tokens", "valueProperty: usage.total_tokens"
        )
    )
    dev = DevProcess(upstream, tmp_path / "data", manifests)
    result = subprocess.run(dev.command(), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert f'{manifests / "meters.yaml"}, document 2: Meter "broken": spec.valueProperty: ' in (
        result.stderr
    )
    assert "must be a JSONPath into the event's data" in result.stderr
    assert not (tmp_path / "data").exists()


def test_a_second_kmeter_dev_on_the_same_data_is_refused(upstream: str, tmp_path: Path) -> None:
    first = DevProcess(upstream, tmp_path / "data")
    first.start()
    try:
        second = DevProcess(upstream, tmp_path / "data")
        result = subprocess.run(
            second.command(), capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 1
        assert "is in use by another kmeter dev" in result.stderr
        assert first.healthy()
    finally:
        first.stop()


def refused(dev: DevProcess, customer: str) -> tuple[int, str, dict[str, Any]] | None:
    """Send a completion; None when it was served, else (status, content type, body)."""
    request = urllib.request.Request(
        f"{dev.proxy}/v1/chat/completions",
        data=b'{"model": "gpt-4o", "max_tokens": 400, "messages": []}',
        headers={"Content-Type": "application/json", "X-Customer-Id": customer},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return None
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), json.loads(error.read())


def test_a_customer_over_the_free_tier_is_refused_with_429_also_after_a_restart(
    upstream: str, tmp_path: Path
) -> None:
    dev = DevProcess(upstream, tmp_path / "data")
    dev.start()
    try:
        used = 0
        answer = None
        for _ in range(10):
            answer = refused(dev, "initech")
            if answer is not None:
                break
            used += 400  # no prompt: each completion is max_tokens tokens
            eventually(
                lambda: tokens(dev).get(("initech", "gpt-4o")) == used,  # noqa: B023
                timeout=10,
                what=f"initech's {used} tokens counted",
            )
        # served while under the limit of 2,000; refused from the first request after it
        assert used == 2000
        assert answer is not None
        status, content_type, problem = answer
        assert (status, content_type) == (429, "application/problem+json")
        assert (problem["quota"], problem["used"], problem["limit"]) == (
            "free-tier",
            "2000",
            "2000",
        )
        assert refused(dev, "globex") is None  # another free-tier customer is not affected
        assert refused(dev, "acme") is None
        status, body = get(f"{dev.api}/api/v1/quotas/free-tier/subjects/initech")
        standing = json.loads(body)
        assert status == 200, standing
        assert (standing["used"], standing["limit"], standing["blocked"]) == ("2000", "2000", True)
        status, body = get(f"{dev.api}/api/v1/quotas")
        (listed,) = json.loads(body)["items"]
        assert (listed["name"], listed["subjectsOver"]) == ("free-tier", 1)
        eventually(
            lambda: "free-tier: initech reached 100%" in dev.output(),
            timeout=10,
            what="the 100% notification printed",
        )

        assert dev.terminate(signal.SIGTERM) == 0
        dev.start()
        answer = refused(dev, "initech")
        assert answer is not None
        assert answer[0] == 429
        assert refused(dev, "globex") is None
        # the thresholds fired once in this period, not again at the restart
        assert dev.output().count("free-tier: initech reached 100%") == 1
        assert dev.output().count("free-tier: initech reached 80%") == 1
    finally:
        dev.stop()


def test_a_quota_added_while_kmeter_dev_runs_is_enforced_and_a_bad_edit_is_refused(
    upstream: str, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for name in ("llm-tokens.yaml", "llm-requests.yaml"):
        (manifests / name).write_text((EXAMPLE / name).read_text())
    dev = DevProcess(upstream, tmp_path / "data", manifests)
    dev.start()
    try:
        for _ in range(3):
            assert refused(dev, "hooli") is None  # no Quota yet: 1,200 tokens served
        eventually(lambda: tokens(dev).get(("hooli", "gpt-4o")) == 1200, timeout=10)

        (manifests / "typo.yaml").write_text(
            (EXAMPLE / "free-tier.yaml").read_text().replace("name: llm-tokens", "name: llm-token")
        )
        eventually(
            lambda: "the manifests changed but are invalid" in dev.output(),
            timeout=15,
            what="the bad edit reported",
        )
        assert "Meter default/llm-token does not exist" in dev.output()
        assert refused(dev, "hooli") is None  # nothing changed: still no Quota; 1,600 tokens
        eventually(lambda: tokens(dev).get(("hooli", "gpt-4o")) == 1600, timeout=10)

        (manifests / "typo.yaml").unlink()
        (manifests / "hooli.yaml").write_text(
            "apiVersion: kmeter.io/v1alpha1\n"
            "kind: Quota\n"
            "metadata: {name: hooli-cap}\n"
            "spec:\n"
            "  meterRef: {name: llm-tokens}\n"
            "  limit: 1000\n"
            "  period: {every: MONTH}\n"
            "  subjects: {names: [hooli]}\n"
        )
        eventually(
            lambda: "manifests reloaded (+Quota default/hooli-cap)" in dev.output(),
            timeout=15,
            what="the new Quota loaded",
        )
        answer = refused(dev, "hooli")
        assert answer is not None
        status, _, problem = answer
        assert (status, problem["quota"], problem["used"]) == (429, "hooli-cap", "1600")
        assert refused(dev, "globex") is None  # the Quota names hooli only
        assert tokens(dev)[("hooli", "gpt-4o")] == 1600  # the reload kept every count, once
    finally:
        dev.stop()
