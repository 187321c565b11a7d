"""Real clients through the sidecar in front of an OpenAI-style app: the tokens they are billed
for are the tokens the app reported.

The app is ``examples/openai-upstream/server.py`` (OpenAI's response shapes, streaming with a
final usage chunk as OpenAI sends with ``stream_options.include_usage``). The clients are
OpenAI's official Python client — streaming and not — and ``curl``. The sidecar reads
``usage.total_tokens`` from JSON bodies and from the last chunk of a stream; the test reads the
usage events back from Kafka and compares them with what each client saw.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from tests.support.kafka import create_ingest_topic, read_events
from tests.support.operator import eventually, free_port
from tests.support.sidecar import SidecarProcess, launch_sidecar

REPO = Path(__file__).resolve().parents[2]
UPSTREAM = REPO / "examples" / "openai-upstream" / "server.py"
CHAT = "/v1/chat/completions"


@pytest.fixture
def openai_app(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    with (tmp_path / "upstream.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(UPSTREAM), "--port", str(port)], stdout=log, stderr=log
        )
    try:
        eventually(lambda: _answers(port), what="the OpenAI-style app answers")
        yield port
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture
def sidecar(kafka_bootstrap: str, openai_app: int, tmp_path: Path) -> Iterator[SidecarProcess]:
    namespace = f"oa-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_ingest_topic(kafka_bootstrap, namespace))
    process = launch_sidecar(
        kafka_bootstrap,
        openai_app,
        tmp_path,
        namespace,
        "--event-type", "llm.completion",
        "--subject-from", "header:X-Customer-Id",
        "--value", "tokens=$.usage.total_tokens",
    )  # fmt: skip
    try:
        process.wait_ready()
        yield process
    finally:
        process.kill()


def test_the_official_openai_client_streaming_and_curl_are_billed_the_tokens_the_app_reported(
    sidecar: SidecarProcess, kafka_bootstrap: str
) -> None:
    client = openai.OpenAI(
        base_url=f"{sidecar.url}/v1",
        api_key="not-checked-by-the-example-app",
        default_headers={"X-Customer-Id": "acme"},
        max_retries=0,
    )
    expected: list[tuple[str, int]] = []

    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me about usage-based billing, briefly."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    words: list[str] = []
    usage = None
    for chunk in stream:
        words.extend(choice.delta.content or "" for choice in chunk.choices)
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None, "the app's last chunk carries the usage"
    assert "".join(words).strip()
    expected.append(("acme", usage.total_tokens))

    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "And per token?"}],
        max_tokens=12,
    )
    assert reply.usage is not None
    expected.append(("acme", reply.usage.total_tokens))

    if shutil.which("curl") is None:
        pytest.fail("curl is missing: apt-get install -y curl")
    answered = subprocess.run(
        [
            "curl", "-sS", "--fail", "-N", f"{sidecar.url}{CHAT}",
            "-H", "Content-Type: application/json", "-H", "X-Customer-Id: globex",
            "-d", json.dumps({"model": "gpt-4o-mini", "stream": True,
                              "messages": [{"role": "user", "content": "Hi from curl"}]}),
        ],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    data = [line[6:] for line in answered.stdout.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    expected.append(("globex", json.loads(data[-2])["usage"]["total_tokens"]))

    def billed() -> list[tuple[str, int]] | None:
        events = [
            event
            for _, event in asyncio.run(read_events(kafka_bootstrap, sidecar.namespace))
            if event["data"]["route"] == CHAT
        ]
        found = [(event["subject"], int(event["data"]["tokens"])) for event in events]
        return found if len(found) >= len(expected) else None

    found = eventually(billed, timeout=30, what="one usage event per completion")
    assert sorted(found) == sorted(expected)
    for _, event in asyncio.run(read_events(kafka_bootstrap, sidecar.namespace)):
        if event["data"]["route"] == CHAT:
            assert event["type"] == "llm.completion"
            assert (event["data"]["method"], event["data"]["status"]) == ("POST", 200)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False
