"""Quotas in ``kmeter dev``: evaluated as the worker evaluates them, enforced by the proxy.

The cluster's path is: the operator writes a Meter's valid Quotas into its worker's quota file;
the worker parses it (:func:`kmeter.worker.quotas.parse_quotas`), and for every batch, before
applying it, advances each Quota's usage and decides per subject
(:class:`kmeter.worker.quotas.PartitionQuotas`, over the pure :mod:`kmeter.core.quota`); the
decisions go to the namespace's decisions topic, which every sidecar follows into its
:class:`kmeter_sidecar.quotas.QuotaTable`.

``kmeter dev`` runs the same code without the transport: the Quotas checked from the manifests
(:mod:`.manifests`, the operator's :func:`~kmeter.operator.quota_reconcile.check_quota`) become
the same quota-file entries (:func:`~kmeter.operator.quota_reconcile.quota_config`); a
:class:`~kmeter.worker.quotas.PartitionQuotas` per Meter plans each folded batch (the
:class:`~kmeter.dev.pipeline.Pipeline`'s observer, called before the batch is applied); and the
records it would write to the decisions topic are applied to the in-process proxy's
``QuotaTable`` directly — so a customer is refused with 429 as soon as the batch that took it
over its limit is folded, a few milliseconds after its request.

**Kept across restarts.** Decisions are also appended to ``DATA_DIR/<ns>/decisions`` (a local
log, like the events) and read back at start (:meth:`PartitionQuotas.restore`), so that a
``notifyAt`` threshold that fired is not fired again after a restart in the same period.
Threshold crossings (notifications) are printed and appended to ``DATA_DIR/<ns>/notifications``;
``kmeter dev`` does not POST webhooks. Usage itself is rebuilt from the windows after the replay
(:meth:`PartitionQuotas.reevaluate`), never read from old decisions.

The clock is the worker's: the wall clock plus ``KMETER_CLOCK_OFFSET_SECONDS``, which the
proxy is given too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson

from kmeter import topics
from kmeter.api.quotas import QuotaBook
from kmeter.decisions import encode_decision, policy_key, subject_key
from kmeter.dev.manifests import Manifests
from kmeter.dev.pipeline import LocalMeter, Pipeline
from kmeter.operator.quota_reconcile import quota_config
from kmeter.worker.partition import BatchWork
from kmeter.worker.quotas import (
    Outgoing,
    PartitionQuotas,
    QuotaSet,
    QuotaWork,
    parse_quotas,
    policy_records,
    wall_clock,
)

__all__ = ["LocalQuotas"]

log = logging.getLogger("kmeter.dev")

Records = list[tuple[bytes | None, bytes]]
Apply = Callable[[bytes | None, bytes | None], None]


@dataclass
class _MeterQuotas:
    namespace: str
    meter: str
    quotas: QuotaSet
    state: PartitionQuotas


@dataclass
class LocalQuotas:
    """Every Meter's Quotas; see the module docstring."""

    manifests: Manifests
    decisions_log: Callable[[str, Records], None]
    """(namespace, records) → appended to the namespace's decisions log."""
    notifications_log: Callable[[str, Records], None]
    out: Callable[[str], None]
    clock_offset: timedelta = timedelta(0)
    by_meter: dict[tuple[str, str], _MeterQuotas] = field(default_factory=dict)
    table: Apply | None = None
    """The proxy's ``QuotaTable.apply`` (its namespace only), once attached."""
    namespace: str | None = None
    live: bool = False
    enforced: set[str] = field(default_factory=set)
    """The Quotas whose policies the proxy's table has."""
    books: dict[str, QuotaBook] = field(default_factory=dict)
    """Per namespace, the policies and decisions the API's Quota endpoints read."""

    # --- the usage API's QuotaViews ------------------------------------------------------

    def book(self, namespace: str) -> QuotaBook | None:
        return self.books.get(namespace)

    def now(self) -> datetime:
        return wall_clock(self.clock_offset)

    def __post_init__(self) -> None:
        self.reset(self.manifests)

    def reset(self, manifests: Manifests) -> None:
        """Start again from nothing with the Quotas of ``manifests`` (then :meth:`restore`,
        replay, :meth:`start`); until :meth:`start`, batches are not evaluated."""
        self.manifests = manifests
        self.by_meter = {}
        self.live = False
        entries: dict[tuple[str, str], list[dict[str, object]]] = {}
        for quota in self.manifests.quotas:
            meter = (quota.namespace, quota.resource.spec.meter_ref.name)
            spec = quota.resource.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
            # no API server, no generations: every Quota is at generation 1
            entries.setdefault(meter, []).append(quota_config(quota.name, 1, spec))
        meters = {info.key: info for info in self.manifests.meters}
        for (namespace, name), configs in entries.items():
            info = meters[(namespace, name)]
            quotas = parse_quotas(orjson.dumps(configs), meter_name=name, meter=info.spec)
            for problem in quotas.problems:  # the manifests were checked: not expected
                log.error("Meter %s/%s: %s", namespace, name, problem)
            state = PartitionQuotas(
                0,
                namespace=namespace,
                meter_name=name,
                topic=topics.quota_decisions_topic(namespace),
                notifications_topic=topics.notifications_topic(namespace),
            )
            self.by_meter[(namespace, name)] = _MeterQuotas(namespace, name, quotas, state)

    def restore(self, namespace: str, values: list[bytes]) -> None:
        """Load the decisions of earlier runs (the namespace's decisions log, in order)."""
        for quotas in self.by_meter.values():
            if quotas.namespace == namespace:
                quotas.state.restore(values)

    def start(self, pipeline: Pipeline, namespace: str, table: Apply) -> None:
        """After the replay: decide again from the rebuilt windows, hand the policies and every
        decision to the proxy's table, and evaluate each batch folded from now on."""
        self.namespace, self.table = namespace, table
        now = wall_clock(self.clock_offset)
        enforced = {q.name for q in self.manifests.quotas if q.namespace == namespace}
        for gone in sorted(self.enforced - enforced):  # removed from the manifests
            table(policy_key(gone), None)
        self.enforced = enforced
        self.books = {}
        for quotas in self.by_meter.values():
            meter = pipeline.meter(quotas.namespace, quotas.meter)
            assert meter is not None
            work = quotas.state.reevaluate(quotas.quotas, meter.fold_state.windows, now)
            self._write(quotas.namespace, work, apply=False)
            book = self.books.setdefault(quotas.namespace, QuotaBook(caught_up=True))
            records = [
                (record.key, record.value)
                for record in policy_records(
                    topics.quota_decisions_topic(quotas.namespace), quotas.quotas, ()
                )
            ] + [
                (subject_key(d.quota, d.subject), encode_decision(d))
                for d in quotas.state.decisions.values()
            ]
            for key, value in records:
                book.apply(key, value)
                if quotas.namespace == namespace:
                    table(key, value)
        self.live = True

    def observe(self, namespace: str, meter: LocalMeter, work: BatchWork) -> None:
        """The pipeline's observer: plan the Quotas of ``meter`` for a batch not yet applied."""
        quotas = self.by_meter.get((namespace, meter.name))
        if quotas is None or not self.live or not work.result.changed:
            return
        planned = quotas.state.plan(
            quotas.quotas,
            meter.fold_state.windows,
            work.result.changed,
            wall_clock(self.clock_offset),
        )
        self._write(namespace, planned, apply=True)

    def _write(self, namespace: str, work: QuotaWork, *, apply: bool) -> None:
        decisions: Records = []
        for record in work.records:
            if record.topic != topics.quota_decisions_topic(namespace):
                continue
            if apply and self.table is not None and namespace == self.namespace:
                self._apply(record)
            if apply and namespace in self.books:
                self.books[namespace].apply(record.key, record.value)
            if record.value is not None:
                decisions.append((record.key, record.value))
        if decisions:
            self.decisions_log(namespace, decisions)
        notes: Records = []
        for note in work.notifications:
            d = note.decision
            self.out(
                f"quota {namespace}/{d.quota}: {d.subject} reached {note.threshold}% "
                f"({d.used} of {d.limit} in the period from {d.period_start:%Y-%m-%d %H:%M} UTC)"
                + (": refused with 429 until the period ends" if d.blocked else "")
            )
            notes.append((f"{d.quota}/{d.subject}".encode(), note.encode()))
        if notes:
            self.notifications_log(namespace, notes)

    def _apply(self, record: Outgoing) -> None:
        assert self.table is not None
        try:
            self.table(record.key, record.value)
        except ValueError as error:  # DecisionFormatError: a bug, not input; keep serving
            log.error("the proxy refused a quota decision: %s", error)
