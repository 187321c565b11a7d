"""Quota evaluation in the aggregation worker: decisions and notifications, exactly once.

**Configuration.** The operator writes the valid Quotas on this worker's Meter to a ConfigMap
mounted at ``KMETER_QUOTAS_FILE`` (a JSON list of ``{"name", "generation", "spec"}``, see
:func:`kmeter.operator.quota_reconcile.quota_config`). A ConfigMap volume is updated in place,
so :class:`QuotaFile` re-reads it (every :data:`RELOAD_EVERY_S`) and hands over a new
:class:`QuotaSet` when the content changed. An entry that does not validate is skipped with a
log line naming it; the others are evaluated. A missing file means "no Quotas yet".

**Evaluation, per ingest partition.** :class:`PartitionQuotas` holds, for the partition's
subjects, the running usage of each Quota in its current period
(:class:`kmeter.core.quota.PeriodUsage`) and the last decision written per (Quota, subject).
For each batch, before the batch is applied to the window state, :meth:`PartitionQuotas.plan`
advances the usage with the windows the batch changed and, for each subject whose usage
changed, evaluates it (:func:`kmeter.core.quota.evaluate`). It returns the records to write:

* a :class:`~kmeter.decisions.SubjectDecision` per subject whose decision changed, to the
  namespace's decisions topic, **partition p** (the ingest partition: co-partitioned, so that
  whoever owns *p* finds there the decisions of *p*'s subjects);
* a notification per threshold fired, to the namespace's notifications topic.

The runner writes them **in the same transaction** as the window totals, dedup pairs and the
consumed offset. So a threshold fires exactly once per subject and period, whatever crashes:
the ``notified`` set of the decision and the notification commit together with the usage that
crossed the threshold, or not at all.

**Restore.** When a worker takes *p* over it reads partition *p* of the decisions topic
(``read_committed``, after fencing, like the window totals) and keeps the latest decision per
(Quota, subject) written by this Meter (``SubjectDecision.meter``). Usage is never restored
from decisions: it is rebuilt from the restored windows (:meth:`PeriodUsage.build`), so it
cannot drift from the totals. What decisions restore is ``notified`` — the thresholds already
fired this period — and what was last written (unchanged decisions are not rewritten).

**Quota edits** (a new file content): :meth:`PartitionQuotas.reevaluate` re-evaluates every
subject with usage this period under the new rule and writes the decisions that changed (a
limit raised from 100 to 200 unblocks a subject at 150 without any new event); a Quota gone
from the file gets its subjects' decisions tombstoned. These are written in a transaction of
*p*'s producer without an offset.

**Clock.** Periods are taken at the worker's clock: the wall clock plus
``KMETER_CLOCK_OFFSET_SECONDS`` (a float, default 0; a testing and demo knob that the sidecar
honours too). The offset moves only quota periods, not the fold's retention or dedup clocks.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from kmeter import decisions
from kmeter.core.aggregation import Aggregation
from kmeter.core.events import format_timestamp
from kmeter.core.fold import MeterSpec
from kmeter.core.quota import Enforcement, PeriodUsage, QuotaRule, evaluate
from kmeter.core.windows import Window, WindowSize
from kmeter.decisions import QuotaPolicy, RateLimitPolicy, SubjectDecision
from kmeter.resources.quota import QuotaSpec

log = logging.getLogger("kmeter.worker.quotas")

RELOAD_EVERY_S = 1.0
CLOCK_OFFSET_VARIABLE = "KMETER_CLOCK_OFFSET_SECONDS"

WindowKey = tuple[str, tuple[str | None, ...], int]


def clock_offset(environ: Mapping[str, str]) -> timedelta:
    """``KMETER_CLOCK_OFFSET_SECONDS`` as a timedelta; ValueError with the reason if bad."""
    text = environ.get(CLOCK_OFFSET_VARIABLE, "").strip()
    if not text:
        return timedelta(0)
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{CLOCK_OFFSET_VARIABLE}={text!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or abs(seconds) > 100 * 365 * 86400:
        raise ValueError(f"{CLOCK_OFFSET_VARIABLE}={text!r} is out of range")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Webhook:
    """Where a Quota's notifications are POSTed — ``url``, or the Secret key that holds it — and
    the Secret key that signs them. Secrets are read from the files the operator mounts."""

    url: str | None
    secret_name: str | None = None
    secret_key: str | None = None
    url_secret_name: str | None = None
    url_secret_key: str | None = None


@dataclass(frozen=True)
class QuotaEntry:
    """One Quota of the file, as evaluation, the sidecars and notifications need it."""

    rule: QuotaRule
    policy: QuotaPolicy
    webhook: Webhook | None
    uid: str | None = None
    """The Quota's ``metadata.uid``, for the Events on it (when the operator gave it)."""


@dataclass(frozen=True)
class QuotaSet:
    """The valid Quotas of one version of the file, by name."""

    quotas: Mapping[str, QuotaEntry] = field(default_factory=dict)
    problems: tuple[str, ...] = ()


def parse_quotas(content: bytes, *, meter_name: str, meter: MeterSpec) -> QuotaSet:
    """The Quotas of a quota file's content; invalid entries are left out, with the reason."""
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError as error:
        return QuotaSet(problems=(f"the quota file is not JSON: {error}",))
    if not isinstance(document, list):
        return QuotaSet(problems=("the quota file is not a JSON list",))
    quotas: dict[str, QuotaEntry] = {}
    problems = []
    for index, item in enumerate(document):
        name = item.get("name") if isinstance(item, dict) else None
        try:
            if not isinstance(name, str) or not name:
                raise ValueError("no name")
            generation = item.get("generation", 0)
            if not isinstance(generation, int):
                raise ValueError("generation is not an integer")
            uid = item.get("uid")
            quotas[name] = _entry(name, generation, item.get("spec"), meter_name, meter)
            if isinstance(uid, str) and uid:
                quotas[name] = QuotaEntry(
                    quotas[name].rule, quotas[name].policy, quotas[name].webhook, uid
                )
        except (ValidationError, ValueError, TypeError) as error:
            problems.append(f"quota #{index} ({name!r}) is not evaluated: {error}")
    return QuotaSet(quotas, tuple(problems))


def _entry(name: str, generation: int, raw: Any, meter_name: str, meter: MeterSpec) -> QuotaEntry:
    spec = QuotaSpec.model_validate(raw)
    overrides = {item.subject: item.limit for item in spec.overrides or []}
    rule = QuotaRule(
        name=name,
        generation=generation,
        aggregation=meter.aggregation,
        limit=spec.limit,
        every=WindowSize(spec.period.every.value),
        zone_name=spec.period.time_zone,
        all_subjects=bool(spec.subjects.all),
        names=frozenset(spec.subjects.names or ()),
        overrides=overrides,
        filter_group_by=dict(spec.filter_group_by or {}),
        group_names=meter.group_names,
        enforcement=Enforcement(spec.enforcement.value),
        notify_at=tuple(spec.notify_at),
    )
    rate = spec.rate_limit
    policy = QuotaPolicy(
        quota=name,
        generation=generation,
        meter=meter_name,
        event_type=meter.event_type,
        limit=spec.limit,
        period=rule.every.value,
        time_zone=rule.zone_name,
        enforcement=rule.enforcement.value,
        overrides=overrides,
        rate_limit=None
        if rate is None
        else RateLimitPolicy(rate.requests, rate.per_seconds, rate.burst or rate.requests),
        subjects=None if rule.all_subjects else rule.names,
        counts_requests=meter.aggregation is Aggregation.COUNT and not rule.filter_group_by,
        sums_value=meter.value_property.expression
        if meter.aggregation is Aggregation.SUM
        and meter.value_property is not None
        and not rule.filter_group_by
        else None,
    )
    hook = spec.webhook
    webhook = None
    if hook is not None:
        secret, url_secret = hook.secret_ref, hook.url_secret_ref
        webhook = Webhook(
            hook.url,
            None if secret is None else secret.name,
            None if secret is None else secret.key,
            None if url_secret is None else url_secret.name,
            None if url_secret is None else url_secret.key,
        )
    return QuotaEntry(rule, policy, webhook)


class QuotaFile:
    """The quota file, re-read when its content changes."""

    def __init__(self, path: str | None, *, meter_name: str, meter: MeterSpec) -> None:
        self.path = None if not path else Path(path)
        self.meter_name = meter_name
        self.meter = meter
        self.digest: str | None = None
        self.current = QuotaSet()
        self.loaded = False
        """Whether the file was read once: until then no decision is tombstoned."""
        self._checked = 0.0

    def poll(self, *, force: bool = False) -> QuotaSet | None:
        """The new :class:`QuotaSet` when the file changed since the last call, else None."""
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_EVERY_S:
            return None
        self._checked = now
        if self.path is None:
            return None
        try:
            content = self.path.read_bytes()
        except OSError as error:
            log.warning("cannot read the quota file %s: %s", self.path, error)
            return None
        digest = hashlib.sha256(content).hexdigest()
        if digest == self.digest:
            return None
        self.digest = digest
        quotas = parse_quotas(content, meter_name=self.meter_name, meter=self.meter)
        for problem in quotas.problems:
            log.error("%s: %s", self.path, problem)
        log.info("quota file %s: evaluating %s", self.path, ", ".join(quotas.quotas) or "nothing")
        self.current = quotas
        self.loaded = True
        return quotas


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """A record to write: to the decisions topic (partition given) or notifications topic."""

    topic: str
    key: bytes
    value: bytes | None
    partition: int | None = None


@dataclass(frozen=True)
class Notification:
    """A threshold crossing, as written to the notifications topic (and POSTed to webhooks)."""

    namespace: str
    meter: str
    decision: SubjectDecision
    threshold: int
    enforcement: str

    @property
    def id(self) -> str:
        """Stable across retries and redeliveries: the receiver's idempotency key."""
        d = self.decision
        return f"{d.quota}/{format_timestamp(d.period_start)}/{self.threshold}/{d.subject}"

    def document(self) -> dict[str, Any]:
        d = self.decision
        return {
            "kind": "threshold",
            "id": self.id,
            "namespace": self.namespace,
            "meter": self.meter,
            "quota": d.quota,
            "generation": d.generation,
            "subject": d.subject,
            "threshold": self.threshold,
            "used": str(d.used),
            "limit": str(d.limit),
            "periodStart": format_timestamp(d.period_start),
            "periodEnd": format_timestamp(d.period_end),
            "enforcement": self.enforcement,
            "blocked": d.blocked,
            "time": format_timestamp(d.evaluated_at),
        }

    def encode(self) -> bytes:
        return orjson.dumps(self.document())


@dataclass
class QuotaWork:
    """What one batch (or re-evaluation) of one partition writes for its Quotas."""

    records: list[Outgoing] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    decisions: int = 0
    removed: set[str] = field(default_factory=set)
    """Quotas whose decisions were tombstoned (gone from the file)."""


# --- one partition ------------------------------------------------------------------------------


def _same(a: SubjectDecision, b: SubjectDecision) -> bool:
    return (a.used, a.limit, a.blocked, a.notified, a.period_start, a.generation) == (
        b.used,
        b.limit,
        b.blocked,
        b.notified,
        b.period_start,
        b.generation,
    )


class PartitionQuotas:
    """The quota state of one ingest partition (see the module documentation)."""

    def __init__(
        self,
        partition: int,
        *,
        namespace: str,
        meter_name: str,
        topic: str,
        notifications_topic: str,
    ) -> None:
        self.partition = partition
        self.namespace = namespace
        self.meter_name = meter_name
        self.topic = topic
        self.notifications_topic = notifications_topic
        self.decisions: dict[tuple[str, str], SubjectDecision] = {}
        self.usage: dict[str, PeriodUsage] = {}
        self.invalid = 0

    def restore(self, values: Iterable[bytes]) -> int:
        """Load this Meter's decisions from partition *p* of the decisions topic (log order)."""
        for value in values:
            try:
                decision = decisions.decode_decision(value)
            except decisions.DecisionFormatError:
                continue  # a policy, or a record of another version: not ours to judge
            if decision.meter == self.meter_name:
                self.decisions[(decision.quota, decision.subject)] = decision
        return len(self.decisions)

    def _usage(
        self, rule: QuotaRule, now: datetime, windows: Mapping[WindowKey, Any]
    ) -> PeriodUsage:
        """The rule's usage in the period holding ``now``, rebuilt when the period or the rule
        changed."""
        usage = self.usage.get(rule.name)
        if usage is None or now not in usage.period or usage.rule != rule:
            usage = PeriodUsage.build(rule, rule.period_at(now), windows.items())
            self.usage[rule.name] = usage
        return usage

    def _decide(
        self, entry: QuotaEntry, usage: PeriodUsage, subject: str, now: datetime, work: QuotaWork
    ) -> None:
        rule = entry.rule
        period: Window = usage.period
        previous = self.decisions.get((rule.name, subject))
        before = previous.notified if previous and previous.period_start == period.start else ()
        result = evaluate(rule, subject, usage.used(subject), before)
        decision = SubjectDecision(
            quota=rule.name,
            subject=subject,
            generation=rule.generation,
            used=result.used,
            limit=result.limit,
            period_start=period.start,
            period_end=period.end,
            blocked=result.blocked,
            evaluated_at=now,
            notified=result.notified,
            meter=self.meter_name,
        )
        if previous is not None and _same(previous, decision):
            return
        self.decisions[(rule.name, subject)] = decision
        work.decisions += 1
        work.records.append(
            Outgoing(
                self.topic,
                decisions.subject_key(rule.name, subject),
                decisions.encode_decision(decision),
                self.partition,
            )
        )
        for threshold in result.fired:
            note = Notification(
                self.namespace, self.meter_name, decision, threshold, rule.enforcement.value
            )
            work.notifications.append(note)
            work.records.append(
                Outgoing(self.notifications_topic, f"{rule.name}/{subject}".encode(), note.encode())
            )

    def plan(
        self,
        quotas: QuotaSet,
        windows: Mapping[WindowKey, Any],
        changed: Mapping[WindowKey, Any],
        now: datetime,
    ) -> QuotaWork:
        """Advance with a batch's changed windows (``windows`` is the state *before* the batch)
        and decide for every subject whose usage changed. Updates this state at once."""
        work = QuotaWork()
        for entry in quotas.quotas.values():
            usage = self._usage(entry.rule, now, windows)
            touched: dict[str, None] = {}
            for key, after in changed.items():
                if usage.advance(key, windows.get(key), after):
                    touched[key[0]] = None
            for subject in touched:
                self._decide(entry, usage, subject, now, work)
        return work

    def reevaluate(
        self, quotas: QuotaSet, windows: Mapping[WindowKey, Any], now: datetime
    ) -> QuotaWork:
        """After a quota file change: decide again for every subject with usage this period,
        and tombstone the decisions of Quotas no longer in the file."""
        work = QuotaWork()
        for entry in quotas.quotas.values():
            usage = self._usage(entry.rule, now, windows)
            for subject in usage.subjects():
                self._decide(entry, usage, subject, now, work)
        for quota, subject in list(self.decisions):
            if quota not in quotas.quotas:
                del self.decisions[(quota, subject)]
                work.removed.add(quota)
                work.records.append(
                    Outgoing(
                        self.topic, decisions.subject_key(quota, subject), None, self.partition
                    )
                )
        for quota in list(self.usage):
            if quota not in quotas.quotas:
                del self.usage[quota]
        return work

    def counts(self, now: datetime) -> dict[str, tuple[int, int]]:
        """Per Quota: (subjects over, subjects near) among decisions in force at ``now``."""
        found: dict[str, tuple[int, int]] = {}
        for (quota, _), decision in self.decisions.items():
            if not decision.in_force(now):
                continue
            over, near = found.get(quota, (0, 0))
            is_over = decision.used >= decision.limit
            is_near = not is_over and any(t < 100 for t in decision.notified)
            found[quota] = (over + is_over, near + is_near)
        return found


def policy_records(topic: str, quotas: QuotaSet, gone: Iterable[str]) -> list[Outgoing]:
    """The policy records for a change of the quota file: each Quota's policy, tombstones for
    the Quotas ``gone``. Keyed ``policy/<quota>``, partitioned by Kafka's default partitioner."""
    records = [
        Outgoing(topic, decisions.policy_key(name), decisions.encode_policy(entry.policy))
        for name, entry in quotas.quotas.items()
    ]
    records.extend(
        Outgoing(topic, decisions.policy_key(name), None)
        for name in sorted(set(gone))
        if name not in quotas.quotas
    )
    return records


class QuotaMetrics:
    """``kmeter_worker_quota_decisions_total`` and ``kmeter_worker_quota_crossings_total``:
    decisions and threshold crossings written in committed transactions."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "kmeter_worker_quota_decisions",
            "Quota decisions written (committed) to the decisions topic.",
            registry=registry,
        )
        self.crossings = Counter(
            "kmeter_worker_quota_crossings",
            "notifyAt thresholds crossed (committed to the notifications topic).",
            registry=registry,
        )

    def committed(self, work: QuotaWork) -> None:
        self.decisions.inc(work.decisions)
        self.crossings.inc(len(work.notifications))


def wall_clock(offset: timedelta) -> datetime:
    """The worker's quota clock: now plus the configured offset."""
    return datetime.now(UTC) + offset


__all__ = [
    "CLOCK_OFFSET_VARIABLE",
    "Notification",
    "Outgoing",
    "PartitionQuotas",
    "QuotaEntry",
    "QuotaFile",
    "QuotaMetrics",
    "QuotaSet",
    "QuotaWork",
    "Webhook",
    "clock_offset",
    "parse_quotas",
    "policy_records",
    "wall_clock",
]
