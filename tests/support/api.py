"""Running ``kmeter api`` as a real process, and what its tests need around it.

* :class:`ApiProcess` starts ``kmeter api`` in a subprocess (Meters from a folder of manifests
  or from the cluster, tokens from a file or from Secrets), waits for ``/readyz`` and talks to it
  over HTTP with :meth:`ApiProcess.call`.
* :func:`create_meter_topics` creates a Meter's topics as the operator would
  (:func:`kmeter.operator.meter_topics.meter_topics`).
* :func:`produce_totals` folds events with the core, as the worker does, and writes the window
  totals to the Meter's output topic (optionally in an aborted transaction, which
  ``read_committed`` readers never see).
* :func:`read_ingest_topic` reads back what landed in a namespace's ingest topic.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from tests.support.operator import eventually, free_port
from tests.support.processes import ManagedProcess

from kmeter import topics
from kmeter.core.events import UsageEvent
from kmeter.core.fold import FoldState, MeterSpec, fold
from kmeter.kafka.admin import KafkaAdmin
from kmeter.kafka.settings import KafkaSettings
from kmeter.kafka.topics import reconcile_topics
from kmeter.operator.meter_topics import TopicLayout, meter_topics

KMETER = str(Path(sys.executable).parent / "kmeter")


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def json(self) -> Any:
        return orjson.loads(self.body)


class ApiProcess(ManagedProcess):
    """``kmeter api`` in a subprocess, with its log in a file."""

    def __init__(
        self,
        kafka_bootstrap: str,
        log_dir: Path,
        *,
        manifests: Path | None = None,
        tokens: Path | None = None,
        kubeconfig: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kafka_bootstrap = kafka_bootstrap
        self.env = dict(env or {})
        self.manifests = manifests
        self.tokens = tokens
        self.kubeconfig = kubeconfig
        self.log_path = log_dir / f"api-{uuid.uuid4().hex[:6]}.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True) -> None:
        command = [KMETER, "api", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--refresh-seconds", "1"]
        if self.manifests is not None:
            command += ["--manifests", str(self.manifests)]
        if self.tokens is not None:
            command += ["--tokens", str(self.tokens)]
        env = {**os.environ, "KMETER_KAFKA_BOOTSTRAP": self.kafka_bootstrap, **self.env}
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        eventually(self.healthy, timeout=30, what="kmeter api answers /healthz")
        if wait_ready:
            eventually(self.ready, timeout=60, what="kmeter api is ready")

    def _alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"kmeter api exited; log:\n{self.log_tail()}")

    def healthy(self) -> bool:
        self._alive()
        try:
            return self.call("GET", "/healthz").status == 200
        except OSError:
            return False

    def ready(self) -> bool:
        self._alive()
        return self.call("GET", "/readyz").status == 200

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str | None = None,
        timeout: float = 30,
    ) -> Answer:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if content_type is not None:
            request.add_header("Content-Type", content_type)
        if accept is not None:
            request.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers), error.read())


def meter_manifest(
    namespace: str,
    name: str,
    *,
    event_type: str = "llm.completion",
    aggregation: str = "SUM",
    value_property: str | None = "$.tokens",
    group_by: Mapping[str, str] | None = None,
    window_size: str = "MINUTE",
    partitions: int = 2,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "eventType": event_type,
        "aggregation": aggregation,
        "windowSize": window_size,
        "topic": {"partitions": partitions},
    }
    if value_property is not None:
        spec["valueProperty"] = value_property
    if group_by:
        spec["groupBy"] = dict(group_by)
    return {
        "apiVersion": "kmeter.io/v1alpha1",
        "kind": "Meter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def write_manifests(folder: Path, manifests: Iterable[Mapping[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meters.yaml").write_text(yaml.safe_dump_all([dict(m) for m in manifests]))
    return folder


def write_tokens(path: Path, tokens: Mapping[str, Sequence[str]]) -> Path:
    path.write_text(yaml.safe_dump({ns: list(values) for ns, values in tokens.items()}))
    return path


def spec_of(manifest: Mapping[str, Any]) -> MeterSpec:
    spec = manifest["spec"]
    return MeterSpec.create(
        event_type=spec["eventType"],
        aggregation=spec["aggregation"],
        window_size=spec.get("windowSize", "MINUTE"),
        value_property=spec.get("valueProperty"),
        group_by=spec.get("groupBy"),
    )


def create_meter_topics(bootstrap: str, namespace: str, meter: str, partitions: int = 2) -> None:
    """The Meter's topics, as the operator creates them."""

    async def create() -> None:
        layout = TopicLayout(partitions, 1, 400 * 86400 * 1000)
        async with KafkaAdmin(KafkaSettings(bootstrap)) as admin:
            await reconcile_topics(admin, meter_topics(namespace, meter, layout, []))

    asyncio.run(create())


def produce_totals(
    bootstrap: str,
    namespace: str,
    meter: str,
    spec: MeterSpec,
    events: Sequence[UsageEvent],
    *,
    batches: int = 3,
    abort: bool = False,
) -> FoldState:
    """Fold ``events`` in ``batches`` like a worker and write every batch's window totals.

    With ``abort`` the records are written in a transaction that is aborted (and the returned
    state is empty): a ``read_committed`` reader must not see them.
    """
    state = FoldState(spec)
    topic = topics.meter_topic(namespace, meter)
    size = max(1, -(-len(events) // batches))

    async def write() -> None:
        options: dict[str, Any] = {"bootstrap_servers": bootstrap, "acks": "all"}
        if abort:
            options["transactional_id"] = f"test-{uuid.uuid4().hex}"
        producer = AIOKafkaProducer(**options)
        await producer.start()
        try:
            for first in range(0, len(events), size):
                result = fold(state, events[first : first + size], now=datetime.now(UTC))
                if abort:
                    async with producer.transaction():
                        for record in result.records:
                            await producer.send(topic, record.value, key=record.key)
                        raise _Abort
                futures = [
                    await producer.send(topic, record.value, key=record.key)
                    for record in result.records
                ]
                await asyncio.gather(*futures)
                state.apply(result)
        except _Abort:
            pass
        finally:
            await producer.stop()

    asyncio.run(write())
    return state


class _Abort(Exception):
    pass


async def _partitions(bootstrap: str, topic: str) -> set[int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        found: set[int] = await producer.partitions_for(topic)
        return found
    finally:
        await producer.stop()


def read_ingest_topic(bootstrap: str, namespace: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Every (key, event) in the namespace's ingest topic."""
    topic = topics.ingest_topic(namespace)

    async def read() -> list[tuple[bytes | None, dict[str, Any]]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in await _partitions(bootstrap, topic)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: list[tuple[bytes | None, dict[str, Any]]] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    found.extend((r.key, orjson.loads(r.value)) for r in records)
                positions = {tp: await consumer.position(tp) for tp in partitions}
                if all(positions[tp] >= ends[tp] for tp in partitions):
                    break
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


def minutes_ago(count: int) -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=count)


# --- checking answers against the OpenAPI document ---------------------------------------------

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def schema_errors(document: Mapping[str, Any], schema: Mapping[str, Any], value: Any) -> list[str]:
    """What in ``value`` does not match ``schema`` (the subset of JSON Schema the document uses)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return schema_errors(document, document["components"]["schemas"][name], value)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not schema_errors(document, s, value)]
        return [] if len(matching) == 1 else [f"{value!r} matches {len(matching)} of oneOf"]
    errors: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else kinds
        ok = any(
            isinstance(value, _TYPES[name]) and not (name != "boolean" and isinstance(value, bool))
            for name in names
        )
        if not ok:
            return [f"{value!r} is not of type {kinds}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{value!r} != {schema['const']!r}")
    if isinstance(value, dict):
        errors += [f"missing {key}" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                errors += [f"{key}: {e}" for e in schema_errors(document, properties[key], item)]
            elif isinstance(extra, dict):
                errors += [f"{key}: {e}" for e in schema_errors(document, extra, item)]
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += [f"[{index}]: {e}" for e in schema_errors(document, schema["items"], item)]
    return errors


def check_documented(document: Mapping[str, Any], path: str, method: str, answer: Answer) -> None:
    """Assert that ``answer`` is one the document promises for ``method path``."""
    operation = document["paths"][path][method.lower()]
    responses = operation["responses"]
    assert str(answer.status) in responses, (
        f"{method} {path} answered {answer.status}, documented: {sorted(responses)}"
    )
    response = responses[str(answer.status)]
    content = response.get("content")
    if not content:
        assert not answer.body, f"{method} {path} {answer.status} has an undocumented body"
        return
    assert answer.content_type in content, (
        f"{method} {path} {answer.status}: {answer.content_type} not in {sorted(content)}"
    )
    if answer.content_type.endswith("json"):
        errors = schema_errors(document, content[answer.content_type]["schema"], answer.json())
        assert not errors, f"{method} {path} {answer.status}: {errors}"
