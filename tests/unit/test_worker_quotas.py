"""The worker's quota evaluation without Kafka: the quota file, decisions, notifications,
restore, edits; and the signatures and Events of notifications."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from kmeter import decisions
from kmeter.api.quotas import QuotaBook, subject_standing
from kmeter.core.events import UsageEvent
from kmeter.core.fold import FoldState, MeterSpec, fold
from kmeter.notifications import webhook
from kmeter.notifications.events import event_body, event_name
from kmeter.worker.quotas import (
    PartitionQuotas,
    QuotaFile,
    QuotaSet,
    clock_offset,
    parse_quotas,
    policy_records,
)

METER = MeterSpec.create(
    event_type="api.request",
    aggregation="COUNT",
    window_size="MINUTE",
    value_property=None,
    group_by={"plan": "$.plan"},
)
NOW = datetime(2026, 6, 15, 12, tzinfo=UTC)


def entry(name: str = "daily", limit: int = 10, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "name": name,
        "generation": generation,
        "uid": f"uid-{name}",
        "spec": {
            "meterRef": {"name": "requests"},
            "limit": limit,
            "period": {"every": "DAY", "timeZone": "UTC"},
            **spec,
        },
    }


def quotas(*entries: dict[str, Any]) -> QuotaSet:
    return parse_quotas(json.dumps(list(entries)).encode(), meter_name="requests", meter=METER)


def partition() -> PartitionQuotas:
    return PartitionQuotas(
        3, namespace="team-a", meter_name="requests", topic="decisions", notifications_topic="notes"
    )


class Pipeline:
    """A partition's fold state and quota state, fed batch by batch as the runner does."""

    def __init__(self) -> None:
        self.fold = FoldState(METER)
        self.quotas = partition()
        self.sent = 0

    def batch(self, configured: QuotaSet, subject: str, count: int, plan: str = "pro") -> Any:
        events = []
        for _ in range(count):
            self.sent += 1
            events.append(
                UsageEvent(str(self.sent), "s", "api.request", subject, NOW, {"plan": plan})
            )
        result = fold(self.fold, events, now=NOW)
        work = self.quotas.plan(configured, self.fold.windows, result.changed, NOW)
        self.fold.apply(result)
        return work


def decided(work: Any) -> dict[str | None, decisions.SubjectDecision]:
    return {
        decisions.parse_key(r.key)[1]: decisions.decode_decision(r.value)
        for r in work.records
        if r.topic == "decisions" and r.value is not None
    }


def test_the_quota_file_gives_defaults_and_skips_an_invalid_entry_with_its_reason() -> None:
    found = parse_quotas(
        json.dumps([entry(), {"name": "broken", "spec": {"limit": "lots"}}]).encode(),
        meter_name="requests",
        meter=METER,
    )
    assert list(found.quotas) == ["daily"]
    [problem] = found.problems
    assert "'broken'" in problem
    daily = found.quotas["daily"]
    assert daily.rule.notify_at == (80, 100)
    assert daily.policy.counts_requests
    assert (daily.policy.event_type, daily.policy.enforcement) == ("api.request", "Block")
    assert daily.uid == "uid-daily"
    assert parse_quotas(b"{not json", meter_name="m", meter=METER).problems


def test_a_quota_file_is_read_again_only_when_its_content_changes(tmp_path: Any) -> None:
    path = tmp_path / "quotas.json"
    file = QuotaFile(str(path), meter_name="requests", meter=METER)
    assert file.poll(force=True) is None  # no file yet: nothing loaded, nothing tombstoned
    assert not file.loaded
    path.write_text(json.dumps([entry()]))
    assert file.poll(force=True) is not None
    assert file.poll(force=True) is None
    path.write_text(json.dumps([entry(limit=20, generation=2)]))
    changed = file.poll(force=True)
    assert changed is not None
    assert changed.quotas["daily"].rule.limit == 20


def test_decisions_and_notifications_follow_the_usage_and_each_threshold_fires_once() -> None:
    configured = quotas(entry(notifyAt=[50, 100]))
    pipeline = Pipeline()
    first = pipeline.batch(configured, "alice", 4)
    assert decided(first)["alice"].used == 4
    assert first.notifications == []
    crossing = pipeline.batch(configured, "alice", 6)  # 10: both thresholds at once
    decision = decided(crossing)["alice"]
    assert (decision.used, decision.blocked, decision.notified) == (Decimal(10), True, (50, 100))
    assert [n.threshold for n in crossing.notifications] == [50, 100]
    assert all(r.partition == 3 for r in crossing.records if r.topic == "decisions")
    later = pipeline.batch(configured, "alice", 1)
    assert later.notifications == []
    assert decided(later)["alice"].used == 11


def test_usage_outside_the_filter_changes_no_decision() -> None:
    configured = quotas(entry(filterGroupBy={"plan": "free"}))
    pipeline = Pipeline()
    assert pipeline.batch(configured, "alice", 5, plan="pro").records == []
    assert decided(pipeline.batch(configured, "alice", 2, plan="free"))["alice"].used == 2


def test_a_restored_partition_does_not_fire_again_what_its_committed_decisions_say_fired() -> None:
    configured = quotas(entry(notifyAt=[50]))
    pipeline = Pipeline()
    written = pipeline.batch(configured, "alice", 6)
    other_meter = decisions.SubjectDecision(
        "daily", "bob", 1, Decimal(9), Decimal(10), NOW, NOW, False, NOW, (50,), meter="other"
    )
    restored = partition()
    values = [r.value for r in written.records if r.topic == "decisions" and r.value]
    assert restored.restore([*values, decisions.encode_decision(other_meter)]) == 1
    again = restored.reevaluate(configured, pipeline.fold.windows, NOW)
    assert again.records == []  # the same standing: nothing rewritten, nothing fired


def test_an_edited_limit_unblocks_and_a_removed_quota_is_tombstoned() -> None:
    pipeline = Pipeline()
    pipeline.batch(quotas(entry(limit=5), entry("other", 5)), "dave", 7)
    work = pipeline.quotas.reevaluate(
        quotas(entry(limit=10, generation=2)), pipeline.fold.windows, NOW
    )
    decision = decided(work)["dave"]
    assert (decision.limit, decision.blocked, decision.generation) == (Decimal(10), False, 2)
    tombstones = [r.key for r in work.records if r.value is None]
    assert tombstones == [decisions.subject_key("other", "dave")]
    assert work.removed == {"other"}
    records = policy_records("decisions", quotas(entry()), work.removed)
    assert [(r.key, r.value is None) for r in records] == [
        (decisions.policy_key("daily"), False),
        (decisions.policy_key("other"), True),
    ]


def test_counts_are_subjects_over_and_near_among_decisions_in_force() -> None:
    configured = quotas(entry(notifyAt=[50, 100]))
    pipeline = Pipeline()
    pipeline.batch(configured, "over", 10)
    pipeline.batch(configured, "near", 6)
    pipeline.batch(configured, "fine", 1)
    assert pipeline.quotas.counts(NOW) == {"daily": (1, 1)}
    assert pipeline.quotas.counts(NOW + timedelta(days=1)) == {}


def test_the_clock_offset_is_a_number_of_seconds_or_refused_with_the_reason() -> None:
    assert clock_offset({"KMETER_CLOCK_OFFSET_SECONDS": "-1.5"}) == timedelta(seconds=-1.5)
    assert clock_offset({}) == timedelta(0)
    with pytest.raises(ValueError, match="not a number"):
        clock_offset({"KMETER_CLOCK_OFFSET_SECONDS": "soon"})


def test_a_signature_is_the_hmac_sha256_of_the_exact_body() -> None:
    body, key = b'{"id": "x"}', b"k"
    signature = webhook.sign(body, key)
    assert signature == "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    assert webhook.verify(body, key, signature)
    assert not webhook.verify(body + b" ", key, signature)
    assert webhook.delays() == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_an_event_names_the_subject_and_is_the_same_for_a_redelivery() -> None:
    note = {
        "id": "daily/2026-06-15T00:00:00Z/100/alice",
        "namespace": "team-a",
        "quota": "daily",
        "subject": "alice",
        "threshold": 100,
        "used": "10",
        "limit": "10",
        "periodStart": "2026-06-15T00:00:00Z",
        "periodEnd": "2026-06-16T00:00:00Z",
        "blocked": True,
        "time": "2026-06-15T12:00:00Z",
    }
    body = event_body(note, uid="u1", instance="pod")
    assert (body["reason"], body["type"]) == ("LimitReached", "Warning")
    assert body["involvedObject"] == {
        "apiVersion": "kmeter.io/v1alpha1",
        "kind": "Quota",
        "name": "daily",
        "namespace": "team-a",
        "uid": "u1",
    }
    assert "subject alice reached 100% of quota daily: 10 of 10" in body["message"]
    assert event_name(note) == event_name(dict(note))
    assert event_name(note) != event_name({**note, "id": "daily/x/80/alice"})


def test_the_api_book_keeps_the_latest_decision_per_key_and_counts_those_in_force() -> None:
    old = decisions.SubjectDecision(
        "daily", "alice", 1, Decimal(10), Decimal(10), NOW, NOW + timedelta(days=1), True, NOW
    )
    newer = decisions.SubjectDecision(
        "daily",
        "alice",
        2,
        Decimal(10),
        Decimal(20),
        NOW,
        NOW + timedelta(days=1),
        False,
        NOW + timedelta(minutes=1),
        (50,),
    )
    book = QuotaBook()
    key = decisions.subject_key("daily", "alice")
    # After the ingest topic grew, one key can be in two partitions: the latest evaluation wins,
    # in whichever order the partitions are read.
    book.apply(key, decisions.encode_decision(newer))
    book.apply(key, decisions.encode_decision(old))
    assert book.decisions[("daily", "alice")] == newer
    assert book.counts("daily", NOW) == (0, 1)
    assert book.counts("daily", NOW + timedelta(days=1)) == (0, 0)
    book.apply(b"garbage", b"{}")
    book.apply(decisions.subject_key("daily", "bob"), b"not json")
    assert book.unreadable == 2
    book.apply(key, None)
    assert book.decisions == {}


def test_a_subject_without_a_decision_in_force_has_used_nothing_of_the_current_period() -> None:
    policy = quotas(entry(overrides=[{"subject": "vip", "limit": 50}])).quotas["daily"].policy
    expired = decisions.SubjectDecision(
        "daily", "vip", 1, Decimal(60), Decimal(50), NOW - timedelta(days=1), NOW, True, NOW
    )
    standing = subject_standing(policy, expired, "vip", NOW + timedelta(hours=1))
    assert standing == {
        "quota": "daily",
        "subject": "vip",
        "used": "0",
        "limit": "50",
        "remaining": "50",
        "periodStart": "2026-06-15T00:00:00Z",
        "resetsAt": "2026-06-16T00:00:00Z",
        "blocked": False,
        "enforcement": "Block",
        "notified": [],
    }
