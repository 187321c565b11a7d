"""Quota evaluation in a real worker process against the real broker.

The worker runs as ``kmeter worker`` with a quota file (as the operator's ConfigMap mounts it)
and a clock it is told (``KMETER_CLOCK_OFFSET_SECONDS``), so periods are the test's choice.
Decisions and notifications are read back from Kafka ``read_committed``, as sidecars and
webhook deliverers read them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kubernetes import client
from tests.integration.test_worker_pipeline import (
    Meter,
    WorkerProcess,
    _read_all,
    produce,
    wait_until_consumed,
)
from tests.support.api import (
    ApiProcess,
    check_documented,
    meter_manifest,
    write_manifests,
    write_tokens,
)
from tests.support.http import serve_in_thread
from tests.support.kafka import describe_topic, seen_by_kafka
from tests.support.kube import Environment, KubeUsers
from tests.support.operator import Resources, eventually

from kmeter import decisions, topics
from kmeter.api import openapi
from kmeter.decisions import QuotaPolicy, SubjectDecision, policy_key
from kmeter.operator.meter_worker import worker_role

EVENT_TYPE = "api.request"


@dataclass
class CountMeter(Meter):
    """A COUNT meter of requests."""

    name: str = "requests"
    partitions: int = 2

    @property
    def spec(self) -> dict[str, Any]:
        return {
            "eventType": EVENT_TYPE,
            "aggregation": "COUNT",
            "groupBy": {"plan": "$.plan"},
            "windowSize": "MINUTE",
            "topic": {"partitions": self.partitions, "replicationFactor": 1, "retention": "P1D"},
            "workers": {"replicas": 1},
            "deletionPolicy": "Retain",
        }


@dataclass
class Clock:
    """The worker's clock: real time moved to ``target`` at the start of the test."""

    target: datetime
    offset: timedelta = field(init=False)

    def __post_init__(self) -> None:
        self.offset = self.target - datetime.now(UTC)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    @property
    def env(self) -> dict[str, str]:
        return {"KMETER_CLOCK_OFFSET_SECONDS": repr(self.offset.total_seconds())}


@dataclass
class Harness:
    meter: CountMeter
    quota_file: Path
    clock: Clock
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)
    sent: int = 0

    def write_quotas(self, *quotas: dict[str, Any]) -> None:
        """Replace the file atomically, as the kubelet swaps a ConfigMap volume."""
        partial = self.quota_file.with_suffix(".tmp")
        partial.write_text(json.dumps(list(quotas)))
        partial.replace(self.quota_file)

    def start_worker(self, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            self.meter,
            self.log_dir,
            KMETER_QUOTAS_FILE=str(self.quota_file),
            **self.clock.env,
            **env,
        )
        self.workers.append(worker)
        worker.wait_ready()
        return worker

    def send(self, subject: str, count: int, *, at: datetime | None = None) -> None:
        records: list[tuple[bytes | None, bytes]] = []
        for _ in range(count):
            self.sent += 1
            event = {
                "specversion": "1.0",
                "id": f"e-{self.sent}",
                "source": "gateway",
                "type": EVENT_TYPE,
                "subject": subject,
                "time": (at or self.clock.now()).isoformat().replace("+00:00", "Z"),
                "data": {"plan": "pro"},
            }
            records.append((subject.encode(), json.dumps(event).encode()))
        produce(self.meter.bootstrap, self.meter.ingest, records)

    def consumed(self) -> None:
        alive = [w for w in self.workers if w.process.poll() is None]
        wait_until_consumed(self.meter, alive=alive)

    def records(self, topic: str) -> list[Any]:
        return asyncio.run(_read_all(self.meter.bootstrap, topic, self.meter.partitions))

    def decisions(self) -> dict[tuple[str, str], SubjectDecision]:
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        for record in self.records(topics.quota_decisions_topic(self.meter.namespace)):
            latest[record.key] = (record.partition, record.value)
        found = {}
        for key, (_, value) in latest.items():
            quota, subject = decisions.parse_key(key)
            if subject is not None and value is not None:
                found[(quota, subject)] = decisions.decode_decision(value)
        return found

    def policies(self) -> dict[str, QuotaPolicy | None]:
        found: dict[str, QuotaPolicy | None] = {}
        for record in self.records(topics.quota_decisions_topic(self.meter.namespace)):
            quota, subject = decisions.parse_key(record.key)
            if subject is None:
                found[quota] = (
                    None if record.value is None else decisions.decode_policy(record.value)
                )
        return found

    def notifications(self) -> list[dict[str, Any]]:
        return [
            json.loads(record.value)
            for record in self.records(topics.notifications_topic(self.meter.namespace))
        ]

    def decision(
        self, quota: str, subject: str, timeout: float = 30, **expected: Any
    ) -> SubjectDecision:
        """The subject's decision once it has the ``expected`` attribute values."""
        deadline = time.monotonic() + timeout
        found = None
        while time.monotonic() < deadline:
            found = self.decisions().get((quota, subject))
            if found is not None and all(getattr(found, k) == v for k, v in expected.items()):
                return found
            time.sleep(0.2)
        logs = "\n".join(worker.log() for worker in self.workers)
        raise AssertionError(f"decision {found} never had {expected}\n{logs}")


def quota(name: str, limit: int, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "name": name,
        "generation": generation,
        "spec": {
            "meterRef": {"name": "requests"},
            "limit": limit,
            "period": {"every": "DAY", "timeZone": "UTC"},
            **spec,
        },
    }


@pytest.fixture
def harness(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Harness]:
    meter = CountMeter(kafka_bootstrap, namespace=f"q{uuid.uuid4().hex[:10]}")
    meter.create_topics()
    found = Harness(meter, tmp_path / "quotas.json", Clock(NOON), tmp_path)
    yield found
    for worker in found.workers:
        worker.kill()


# The worker's clock is moved ahead (events older than the Meter's retention would be refused):
# to noon, two days from now.
DAY_START = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=2)
DAY_END = DAY_START + timedelta(days=1)
NOON = DAY_START + timedelta(hours=12)


def test_a_subject_is_blocked_from_request_101_and_thresholds_fire_once_across_sigkills(
    harness: Harness,
) -> None:
    harness.write_quotas(quota("daily", 100, notifyAt=[50, 80, 100]))
    worker = harness.start_worker()
    harness.send("alice", 49)
    harness.consumed()
    first = harness.decision("daily", "alice", used=Decimal(49))
    assert (first.blocked, first.limit, first.notified) == (False, Decimal(100), ())
    assert (first.period_start, first.period_end) == (DAY_START, DAY_END)

    harness.send("alice", 30)  # 79: the 50 % threshold
    harness.consumed()
    harness.decision("daily", "alice", used=Decimal(79), notified=(50,))
    worker.kill()  # SIGKILL in the middle of the period

    worker = harness.start_worker()
    harness.send("alice", 20)  # 99: the 80 % threshold; usage did not reset
    harness.consumed()
    assert not harness.decision("daily", "alice", used=Decimal(99), notified=(50, 80)).blocked
    worker.kill()

    last = harness.start_worker()
    harness.send("alice", 1)  # 100: the limit is used up, request 101 onward is refused
    harness.consumed()
    blocked = harness.decision("daily", "alice", used=Decimal(100))
    assert blocked.blocked
    assert blocked.notified == (50, 80, 100)
    assert blocked.meter == "requests"
    harness.send("alice", 5)
    harness.consumed()
    assert harness.decision("daily", "alice", used=Decimal(105)).blocked

    assert last.metrics()["kmeter_worker_quota_crossings_total"] == 1  # 100 %, by this one
    fired = [(n["subject"], n["threshold"]) for n in harness.notifications()]
    assert sorted(fired) == [("alice", 50), ("alice", 80), ("alice", 100)]
    crossing = next(n for n in harness.notifications() if n["threshold"] == 100)
    assert (crossing["used"], crossing["limit"], crossing["blocked"]) == ("100", "100", True)
    assert crossing["id"] == f"daily/{DAY_START:%Y-%m-%dT%H:%M:%SZ}/100/alice"
    policy = harness.policies()["daily"]
    assert policy is not None
    assert (policy.event_type, policy.limit, policy.period) == (EVENT_TYPE, Decimal(100), "DAY")


def test_an_override_subject_gets_its_own_limit_and_a_subject_not_named_gets_none(
    harness: Harness,
) -> None:
    harness.write_quotas(
        quota(
            "named",
            5,
            subjects={"names": ["bob"]},
            overrides=[{"subject": "vip", "limit": 20}],
        )
    )
    harness.start_worker()
    for subject in ("bob", "vip", "carol"):
        harness.send(subject, 7)
    harness.consumed()
    assert harness.decision("named", "bob", used=Decimal(7)).blocked
    vip = harness.decision("named", "vip", used=Decimal(7))
    assert (vip.limit, vip.blocked) == (Decimal(20), False)
    assert ("named", "carol") not in harness.decisions()


def test_a_quota_edited_from_5_to_10_unblocks_without_new_events_and_a_removed_quota_is_tombstoned(
    harness: Harness,
) -> None:
    harness.write_quotas(quota("edited", 5), quota("notify-only", 5, enforcement="Notify"))
    harness.start_worker()
    harness.send("dave", 7)
    harness.consumed()
    assert harness.decision("edited", "dave", used=Decimal(7)).blocked
    notify_only = harness.decision("notify-only", "dave", used=Decimal(7))
    assert not notify_only.blocked
    assert notify_only.notified == (80, 100)

    harness.write_quotas(quota("edited", 10, generation=2))
    unblocked = harness.decision("edited", "dave", generation=2)
    assert (unblocked.used, unblocked.limit, unblocked.blocked) == (Decimal(7), Decimal(10), False)
    deadline = time.monotonic() + 30
    while ("notify-only", "dave") in harness.decisions() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ("notify-only", "dave") not in harness.decisions()
    assert harness.policies()["notify-only"] is None


def test_the_period_rolls_over_at_the_hour_of_the_worker_clock_and_the_subject_is_served_again(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = CountMeter(kafka_bootstrap, namespace=f"q{uuid.uuid4().hex[:10]}")
    meter.create_topics()
    # Kathmandu is UTC+05:45: its hours start at xx:15 UTC. The worker's clock starts 15 s
    # before one.
    boundary = NOON + timedelta(hours=1, minutes=15)
    clock = Clock(boundary - timedelta(seconds=15))
    harness = Harness(meter, tmp_path / "quotas.json", clock, tmp_path)
    try:
        harness.write_quotas(
            quota("hourly", 10, period={"every": "HOUR", "timeZone": "Asia/Kathmandu"})
        )
        harness.start_worker()
        harness.send("erin", 10)
        harness.consumed()
        blocked = harness.decision("hourly", "erin", used=Decimal(10))
        assert blocked.blocked
        assert blocked.period_end == boundary
        while clock.now() < blocked.period_end:
            time.sleep(0.5)  # the worker's clock crosses the period boundary
        harness.send("erin", 3)
        harness.consumed()
        served = harness.decision("hourly", "erin", used=Decimal(3))
        assert not served.blocked
        assert (served.period_start, served.period_end) == (
            boundary,
            boundary + timedelta(hours=1),
        )
    finally:
        for worker in harness.workers:
            worker.kill()


@dataclass
class Receiver:
    """A webhook receiver that answers 500 to the first request and 200 afterwards."""

    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            status = 500 if not self.requests else 200
            self.requests.append((dict(request.headers), await request.read(), status))
            self.queries.append(dict(request.query))
            return web.Response(status=status)

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app


@pytest.mark.parametrize("url_from", ["quota", "secret"])
def test_a_webhook_gets_each_crossing_signed_retried_after_a_500_and_the_quota_gets_events(
    kafka_bootstrap: str,
    tmp_path: Path,
    namespace: str,
    testenv: Environment,
    kube_users: KubeUsers,
    *,
    url_from: str,
) -> None:
    meter = CountMeter(kafka_bootstrap, namespace=namespace)
    meter.create_topics()
    # The worker runs with exactly the Role the operator gives it.
    role = worker_role(
        {
            "apiVersion": "kmeter.io/v1alpha1",
            "kind": "Meter",
            "metadata": {"name": meter.name, "namespace": namespace, "uid": "none"},
        }
    )
    del role["metadata"]["ownerReferences"]  # no Meter object here to own it
    rbac = client.RbacAuthorizationV1Api(testenv.api_client())
    rbac.create_namespaced_role(namespace, role)
    kubeconfig = kube_users.kubeconfig_for("Role", role["metadata"]["name"], namespace)
    key = b"correct horse battery staple"
    (tmp_path / "secrets" / "hook-signing").mkdir(parents=True)
    (tmp_path / "secrets" / "hook-signing" / "key").write_bytes(key)
    receiver = Receiver()
    harness = Harness(meter, tmp_path / "quotas.json", Clock(NOON), tmp_path)
    try:
        with serve_in_thread(receiver.app()) as served:
            url = f"http://127.0.0.1:{served.port}/hook"
            where: dict[str, Any] = {"url": url}
            if url_from == "secret":  # a URL with a credential, mounted like the signing key
                (tmp_path / "secrets" / "hook-url").mkdir(parents=True)
                (tmp_path / "secrets" / "hook-url" / "url").write_text(f"{url}?token=s3cret\n")
                where = {"urlSecretRef": {"name": "hook-url", "key": "url"}}
            harness.write_quotas(
                quota(
                    "hooked",
                    10,
                    notifyAt=[50, 100],
                    webhook={**where, "secretRef": {"name": "hook-signing", "key": "key"}},
                )
            )
            harness.start_worker(
                KMETER_SECRETS_DIR=str(tmp_path / "secrets"), KUBECONFIG=str(kubeconfig)
            )
            harness.send("frank", 10)
            harness.consumed()

            def delivered() -> set[str] | None:
                ids = {
                    h["X-Kmeter-Delivery"] for h, _, status in receiver.requests if status == 200
                }
                return ids if len(ids) == 2 else None

            ids = eventually(delivered, timeout=30, what="both notifications delivered")
    finally:
        for worker in harness.workers:
            worker.kill()
    day = f"{DAY_START:%Y-%m-%dT%H:%M:%SZ}"
    assert ids == {f"hooked/{day}/50/frank", f"hooked/{day}/100/frank"}
    _, first_body, first_status = receiver.requests[0]
    assert first_status == 500
    retried = [body for headers, body, status in receiver.requests[1:] if body == first_body]
    assert retried, "the notification answered with 500 was sent again, byte for byte"
    if url_from == "secret":
        assert all(query == {"token": "s3cret"} for query in receiver.queries)
        assert "s3cret" not in "".join(worker.log() for worker in harness.workers)
    for headers, body, _ in receiver.requests:
        expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Kmeter-Signature"], expected)
        document = json.loads(body)
        assert document["id"] == headers["X-Kmeter-Delivery"]
        assert (document["quota"], document["subject"], document["limit"]) == (
            "hooked",
            "frank",
            "10",
        )
    events = client.CoreV1Api(testenv.api_client()).list_namespaced_event(namespace).items
    on_quota = [e for e in events if e.involved_object.kind == "Quota"]
    assert sorted((e.involved_object.name, e.reason, e.type) for e in on_quota) == [
        ("hooked", "LimitReached", "Warning"),
        ("hooked", "ThresholdReached", "Normal"),
    ]


TOKEN = "quota-reader"
OTHER_TOKEN = "someone-else"


def test_the_usage_api_answers_used_limit_remaining_and_reset_as_a_plain_count_expects(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = {"alice": 100, "bob": 100, "vip": 1000, "carol": 100}
    sent = {"alice": 85, "bob": 100, "vip": 5}
    harness.write_quotas(
        quota("daily", 100, notifyAt=[80, 100], overrides=[{"subject": "vip", "limit": 1000}])
    )
    harness.start_worker()
    for subject, count in sent.items():
        harness.send(subject, count)
    harness.consumed()
    harness.decision("daily", "bob", used=Decimal(100))
    namespace = harness.meter.namespace
    manifest = meter_manifest(
        namespace,
        "requests",
        event_type=EVENT_TYPE,
        aggregation="COUNT",
        value_property=None,
        group_by={"plan": "$.plan"},
    )
    monkeypatch.setenv(
        "KMETER_CLOCK_OFFSET_SECONDS", harness.clock.env["KMETER_CLOCK_OFFSET_SECONDS"]
    )
    api = ApiProcess(
        harness.meter.bootstrap,
        tmp_path,
        manifests=write_manifests(tmp_path / "manifests", [manifest]),
        tokens=write_tokens(tmp_path / "tokens.yaml", {namespace: [TOKEN], "other": [OTHER_TOKEN]}),
    )
    api.start()
    document = openapi.document()
    try:

        def listed() -> Any:
            answer = api.call("GET", "/api/v1/quotas", token=TOKEN)
            check_documented(document, "/api/v1/quotas", "GET", answer)
            items = answer.json()["items"]
            return items if items and items[0]["subjectsOver"] == 1 else None

        assert eventually(listed, timeout=30, what="the quota listed") == [
            {
                "name": "daily",
                "meter": "requests",
                "limit": "100",
                "period": "DAY",
                "timeZone": "UTC",
                "enforcement": "Block",
                "subjectsOver": 1,  # bob
                "subjectsNear": 1,  # alice, past 80 %
            }
        ]
        path = "/api/v1/quotas/{quota}/subjects/{subject}"
        for subject, limit in limits.items():
            used = sent.get(subject, 0)
            answer = api.call(
                "GET", f"/api/v1/quotas/daily/subjects/{urllib.parse.quote(subject)}", token=TOKEN
            )
            check_documented(document, path, "GET", answer)
            standing = answer.json()
            assert (standing["used"], standing["limit"], standing["remaining"]) == (
                str(used),
                str(limit),
                str(max(limit - used, 0)),
            ), subject
            assert standing["periodStart"] == f"{DAY_START:%Y-%m-%dT%H:%M:%SZ}"
            assert standing["resetsAt"] == f"{DAY_END:%Y-%m-%dT%H:%M:%SZ}"
            assert standing["blocked"] is (used >= limit)
        missing = api.call("GET", "/api/v1/quotas/nope/subjects/alice", token=TOKEN)
        check_documented(document, path, "GET", missing)
        assert missing.status == 404
        foreign = api.call("GET", f"/api/v1/namespaces/{namespace}/quotas", token=OTHER_TOKEN)
        assert foreign.status == 403
        assert api.call("GET", "/api/v1/quotas", token=OTHER_TOKEN).json() == {"items": []}
    finally:
        api.stop()


def zone_at_noon() -> str:
    """A fixed-offset zone whose local time is now about noon: far from its day's ends."""
    shift = 12 - datetime.now(UTC).hour  # local = UTC + shift; Etc/GMT signs are inverted
    return "UTC" if shift == 0 else f"Etc/GMT{'-' if shift > 0 else '+'}{abs(shift)}"


@pytest.mark.usefixtures("operator")
def test_the_operator_sets_up_quota_topics_and_worker_identity_and_counts_subjects_in_status(
    kafka_bootstrap: str, testenv: Environment, namespace: str, tmp_path: Path
) -> None:
    resources = Resources(testenv.api_client(), namespace)
    meter = CountMeter(kafka_bootstrap, namespace=namespace)
    resources.create("meters", meter.name, meter.spec)
    resources.create(
        "quotas",
        "daily",
        {
            "meterRef": {"name": meter.name},
            "limit": 10,
            "period": {"every": "DAY", "timeZone": zone_at_noon()},
            "notifyAt": [50, 100],
        },
    )
    eventually(lambda: resources.ready("quotas", "daily"), timeout=60, what="Quota Ready")
    eventually(lambda: resources.ready("meters", meter.name), timeout=60, what="Meter Ready")
    decided = describe_topic(kafka_bootstrap, topics.quota_decisions_topic(namespace))
    ingest = describe_topic(kafka_bootstrap, meter.ingest)
    assert decided is not None
    assert ingest is not None
    assert decided.partitions == ingest.partitions == meter.partitions, "co-partitioned"
    assert decided.overrides["cleanup.policy"] == "compact"
    assert describe_topic(kafka_bootstrap, topics.notifications_topic(namespace)) is not None
    worker_identity = f"kmeter-worker-{meter.name}"
    rbac = client.RbacAuthorizationV1Api(testenv.api_client())
    [rule] = rbac.read_namespaced_role(worker_identity, namespace).rules
    assert (rule.resources, sorted(rule.verbs)) == (["events"], ["create", "patch"])
    assert rbac.read_namespaced_role_binding(worker_identity, namespace).subjects[0].name == (
        worker_identity
    )
    deployment = resources.deployment(worker_identity)
    assert deployment.spec.template.spec.service_account_name == worker_identity

    # The worker's quota file is the operator's ConfigMap, as the kubelet would mount it (once
    # it holds the Quota: Ready and the ConfigMap are written by separate reconciles).
    def quotas_json() -> str | None:
        configmap = resources.core.read_namespaced_config_map(
            f"{worker_identity}-quotas", namespace
        )
        content = (configmap.data or {}).get("quotas.json", "")
        return content if '"daily"' in content else None

    harness = Harness(meter, tmp_path / "quotas.json", Clock(datetime.now(UTC)), tmp_path)
    harness.quota_file.write_text(eventually(quotas_json, what="the Quota in its ConfigMap"))
    try:
        harness.start_worker()
        harness.send("over", 10)
        harness.send("near", 6)
        harness.send("fine", 2)
        harness.consumed()

        def counted() -> tuple[int, int] | None:
            status = (resources.get("quotas", "daily") or {}).get("status") or {}
            found = (status.get("subjectsOver"), status.get("subjectsNear"))
            return found if found == (1, 1) else None

        assert eventually(counted, timeout=30, what="subjects over and near in status") == (1, 1)
    finally:
        for worker in harness.workers:
            worker.kill()


def test_a_worker_counts_without_the_quota_topics_and_evaluates_once_they_exist(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    meter = CountMeter(kafka_bootstrap, namespace=f"q{uuid.uuid4().hex[:10]}")
    meter.create_topics(with_quota_topics=False)  # as before an upgrade
    harness = Harness(meter, tmp_path / "quotas.json", Clock(NOON), tmp_path)
    try:
        harness.write_quotas(quota("late", 5))
        harness.start_worker()
        harness.send("gina", 6)
        harness.consumed()  # counting did not wait for the quota topics
        meter.create_topics()
        late = harness.decision("late", "gina", timeout=60, used=Decimal(6))
        assert late.blocked
    finally:
        for worker in harness.workers:
            worker.kill()


def test_thresholds_fire_exactly_once_per_subject_across_a_rebalance_and_a_sigkill(
    harness: Harness,
) -> None:
    harness.write_quotas(quota("shared", 10, notifyAt=[50, 100]))
    subjects = [f"customer-{n}" for n in range(20)]
    first = harness.start_worker()
    for _ in range(3):  # 3 of each subject's 10 requests
        for subject in subjects:
            harness.send(subject, 1)
    harness.start_worker()  # a second replica joins: the partitions are shared out
    for _ in range(3):  # 6: past 50 %, while the group rebalances
        for subject in subjects:
            harness.send(subject, 1)
    first.kill()  # the first replica dies: the second takes all partitions over
    for _ in range(4):  # 10: the limit
        for subject in subjects:
            harness.send(subject, 1)
    harness.consumed()
    for subject in subjects:
        assert harness.decision("shared", subject, used=Decimal(10)).blocked
    fired = sorted((n["subject"], n["threshold"]) for n in harness.notifications())
    assert fired == sorted((subject, t) for subject in subjects for t in (50, 100))


async def _latest_values(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """The latest committed value of every key of ``topic`` (None: a tombstone)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        seen = await seen_by_kafka(bootstrap, topic)
        assert seen is not None
        partitions = [TopicPartition(topic, p) for p in range(seen.partitions)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        latest: dict[bytes, bytes | None] = {}

        async def behind() -> bool:
            return any([await consumer.position(p) < end for p, end in ends.items()])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    assert record.key is not None
                    latest[record.key] = record.value
        return latest
    finally:
        await consumer.stop()


@pytest.mark.usefixtures("operator")
def test_deleting_a_meter_withdraws_its_quotas_policies_from_the_sidecars(
    kafka_bootstrap: str, testenv: Environment, namespace: str
) -> None:
    resources = Resources(testenv.api_client(), namespace)
    meter = CountMeter(kafka_bootstrap, namespace=namespace)
    resources.create("meters", meter.name, meter.spec)
    spec = {
        "meterRef": {"name": meter.name},
        "limit": 5,
        "period": {"every": "DAY"},
        "rateLimit": {"requests": 1, "per": "1s"},
    }
    resources.create("quotas", "capped", spec)
    eventually(lambda: resources.ready("quotas", "capped"), timeout=60, what="Quota Ready")
    topic = topics.quota_decisions_topic(namespace)
    # The policy as the Meter's worker writes it (no kubelet runs the worker here).
    asyncio.run(_produce(kafka_bootstrap, topic, policy_key("capped"), b'{"kind": "policy"}'))
    resources.delete("meters", meter.name)
    eventually(lambda: resources.gone("meters", meter.name), timeout=60, what="Meter deleted")
    latest = asyncio.run(_latest_values(kafka_bootstrap, topic))
    assert latest[policy_key("capped")] is None, "the policy is tombstoned"
    eventually(
        lambda: (
            (resources.condition("quotas", "capped", "MeterFound") or {}).get("status") == "False"
        ),
        timeout=60,
        what="the Quota, which stays, reports its Meter missing",
    )


async def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
