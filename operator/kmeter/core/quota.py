"""Quota evaluation (pure, no I/O): a subject's usage in its period, blocking and thresholds.

A :class:`QuotaRule` is a Quota as evaluation needs it. Evaluating one subject at one instant:

1. **The period** is the calendar ``HOUR``, ``DAY`` or ``MONTH`` of the Quota's IANA time zone
   holding the instant: :func:`period_at` is :func:`kmeter.core.windows.local_window`, so clock
   changes are handled exactly as queries handle them (a New York day is 23 or 25 hours on the
   change days; a Kathmandu hour starts at xx:15 UTC).
2. **The usage** is the merge, with the Meter's aggregation, of the subject's stored windows
   that *start* in the period and whose ``groupBy`` labels match ``filterGroupBy`` (the null
   group never matches, as in queries). That one rule is exact for every limitable aggregation:
   ``SUM`` and ``COUNT`` add up across windows; ``UNIQUE_COUNT`` is the size of the *union* of the
   windows' sets of distinct values (a value seen in two minutes counts once — adding the
   windows' counts would count it twice); ``MAX`` and ``LATEST`` are levels (the largest value,
   the value of the latest event, in the period). ``AVG`` and ``MIN`` are refused: they are not a
   consumption that runs out. A stored window that straddles a period boundary (``HOUR`` storage
   and a Kolkata day) counts in the period its start lies in; choose ``MINUTE`` storage for
   Quotas in such zones.
3. **The limit** is the subject's override, else the Quota's limit. A subject is under the Quota
   when ``subjects.all`` is true, when ``subjects.names`` lists it, or when it has an override.
4. **Blocked** means ``used >= limit`` and ``enforcement: Block`` (so with a limit of 100
   requests the 100th is served and the 101st refused). ``Notify`` never blocks.
5. **Thresholds.** A ``notifyAt`` percentage *t* is crossed when ``used * 100 >= limit * t``
   (exact decimal arithmetic). Each threshold fires **once per subject and period**: the
   evaluation carries the set of thresholds already fired this period (``notified``) and fires
   only crossed thresholds not in it. When the period changes, ``notified`` starts empty. A
   threshold that fired stays fired for the period even if the limit is raised afterwards
   (it is not fired a second time when usage reaches the new percentage).

**Incremental usage.** The worker does not merge a month of minute windows for every batch:
:class:`PeriodUsage` keeps one running state per subject and is advanced by the windows a batch
changed (:meth:`PeriodUsage.advance`), from each window's state before and after the batch.
For the idempotent merges (``UNIQUE_COUNT``: set union, ``MAX``, ``LATEST``) it merges the new
window state in; for ``SUM`` and ``COUNT`` it adds the window's growth (after minus before; window
states only grow). A window of another period or group is ignored. :meth:`PeriodUsage.build`
computes the same from scratch over all windows (used when a period starts, after a restart,
and as the tests' reference).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from kmeter.core.aggregation import Aggregation, aggregator_for
from kmeter.core.decimals import EXACT, ZERO
from kmeter.core.windows import Window, WindowSize, local_window, time_zone

__all__ = [
    "LIMITABLE",
    "PERIODS",
    "Enforcement",
    "Evaluation",
    "PeriodUsage",
    "QuotaRule",
    "evaluate",
    "period_at",
]

LIMITABLE: Final = frozenset(
    {
        Aggregation.SUM,
        Aggregation.COUNT,
        Aggregation.UNIQUE_COUNT,
        Aggregation.MAX,
        Aggregation.LATEST,
    }
)
"""Aggregations a Quota can limit: totals and levels."""

PERIODS: Final = (WindowSize.HOUR, WindowSize.DAY, WindowSize.MONTH)
"""The period lengths of a Quota (``spec.period.every``)."""

_IDEMPOTENT: Final = frozenset({Aggregation.UNIQUE_COUNT, Aggregation.MAX, Aggregation.LATEST})
_HUNDRED: Final = Decimal(100)

WindowKey = tuple[str, tuple[str | None, ...], int]
"""A stored window: (subject, group labels in the meter's order, start in epoch seconds)."""


class Enforcement(StrEnum):
    """What happens at the limit."""

    BLOCK = "Block"
    NOTIFY = "Notify"


def period_at(instant: datetime, every: WindowSize, zone: tzinfo) -> Window:
    """The calendar period of ``every`` in ``zone`` that holds ``instant`` (UTC bounds)."""
    if every not in PERIODS:
        raise ValueError(f"a quota period is HOUR, DAY or MONTH, not {every}")
    return local_window(instant, every, zone)


@dataclass(frozen=True)
class QuotaRule:
    """A Quota as evaluation needs it (see the module documentation for each part)."""

    name: str
    generation: int
    aggregation: Aggregation
    limit: Decimal
    every: WindowSize
    zone_name: str = "UTC"
    all_subjects: bool = True
    names: frozenset[str] = frozenset()
    overrides: Mapping[str, Decimal] = field(default_factory=dict)
    filter_group_by: Mapping[str, str] = field(default_factory=dict)
    group_names: tuple[str, ...] = ()
    """The Meter's ``groupBy`` names, in the order of the labels of its window keys."""
    enforcement: Enforcement = Enforcement.BLOCK
    notify_at: tuple[int, ...] = ()
    zone: tzinfo = field(init=False, repr=False, compare=False)
    _filters: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.aggregation not in LIMITABLE:
            raise ValueError(
                f"a quota cannot limit a {self.aggregation} meter; it needs a total or a level "
                f"({', '.join(sorted(LIMITABLE))})"
            )
        if self.every not in PERIODS:
            raise ValueError(f"a quota period is HOUR, DAY or MONTH, not {self.every}")
        if self.limit <= 0 or any(limit <= 0 for limit in self.overrides.values()):
            raise ValueError("limits must be greater than 0")
        unknown = sorted(set(self.filter_group_by) - set(self.group_names))
        if unknown:
            raise ValueError(f"filterGroupBy {', '.join(unknown)}: not a groupBy of the meter")
        if any(not 1 <= threshold <= 100 for threshold in self.notify_at):
            raise ValueError("notifyAt thresholds are percentages from 1 to 100")
        object.__setattr__(self, "notify_at", tuple(sorted(set(self.notify_at))))
        object.__setattr__(self, "zone", time_zone(self.zone_name))
        position = {name: index for index, name in enumerate(self.group_names)}
        object.__setattr__(
            self,
            "_filters",
            tuple((position[name], value) for name, value in self.filter_group_by.items()),
        )

    def period_at(self, instant: datetime) -> Window:
        """The period holding ``instant``."""
        return period_at(instant, self.every, self.zone)

    def applies_to(self, subject: str) -> bool:
        """Whether ``subject`` is under this Quota."""
        return self.all_subjects or subject in self.names or subject in self.overrides

    def limit_for(self, subject: str) -> Decimal:
        """The subject's override, else the Quota's limit."""
        return self.overrides.get(subject, self.limit)

    def matches(self, labels: tuple[str | None, ...]) -> bool:
        """Whether a window's group labels pass ``filterGroupBy``."""
        return all(labels[index] == value for index, value in self._filters)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One subject's standing against a Quota in one period."""

    used: Decimal
    limit: Decimal
    over: bool
    """``used >= limit``, whatever the enforcement."""
    blocked: bool
    """Over the limit and ``enforcement: Block``."""
    fired: tuple[int, ...]
    """Thresholds this evaluation fires (crossed, and not fired before this period)."""
    notified: tuple[int, ...]
    """Every threshold fired this period, including ``fired``."""

    @property
    def near(self) -> bool:
        """Crossed a threshold below 100 % but not over the limit."""
        return not self.over and any(threshold < 100 for threshold in self.notified)


def crossed(used: Decimal, limit: Decimal, threshold: int) -> bool:
    """Whether ``used`` has reached ``threshold`` percent of ``limit`` (exactly)."""
    return EXACT.multiply(used, _HUNDRED) >= EXACT.multiply(limit, Decimal(threshold))


def evaluate(
    rule: QuotaRule, subject: str, used: Decimal | None, notified: Iterable[int] = ()
) -> Evaluation:
    """Evaluate ``subject`` with usage ``used`` (None: no value yet, as 0) this period.

    ``notified`` are the thresholds already fired this period (from the previous evaluation in
    the same period; pass nothing when the period is new).
    """
    amount = ZERO if used is None else used
    limit = rule.limit_for(subject)
    over = amount >= limit
    before = set(notified)
    fired = tuple(
        threshold
        for threshold in rule.notify_at
        if threshold not in before and crossed(amount, limit, threshold)
    )
    return Evaluation(
        used=amount,
        limit=limit,
        over=over,
        blocked=over and rule.enforcement is Enforcement.BLOCK,
        fired=fired,
        notified=tuple(sorted(before | set(fired))),
    )


class PeriodUsage:
    """The running usage state of every subject of one Quota in one period."""

    def __init__(self, rule: QuotaRule, period: Window) -> None:
        self.rule = rule
        self.period = period
        self.states: dict[str, Any] = {}
        self._aggregator = aggregator_for(rule.aggregation)
        self._low = int(period.start.timestamp())
        self._high = int(period.end.timestamp())

    def covers(self, key: WindowKey) -> bool:
        """Whether a stored window counts toward this Quota in this period."""
        subject, labels, start = key
        return (
            self._low <= start < self._high
            and self.rule.applies_to(subject)
            and self.rule.matches(labels)
        )

    @classmethod
    def build(
        cls, rule: QuotaRule, period: Window, windows: Iterable[tuple[WindowKey, Any]]
    ) -> PeriodUsage:
        """The usage of every subject in ``period``, from all stored windows."""
        usage = cls(rule, period)
        merge = usage._aggregator.merge
        states = usage.states
        for key, state in windows:
            if usage.covers(key):
                current = states.get(key[0])
                states[key[0]] = merge(
                    usage._aggregator.empty() if current is None else current, state
                )
        return usage

    def advance(self, key: WindowKey, before: Any, after: Any) -> bool:
        """Account for window ``key`` changing from ``before`` (None: new) to ``after``.

        Returns whether the window counts here (its subject's usage may have changed).
        """
        if not self.covers(key):
            return False
        aggregator = self._aggregator
        subject = key[0]
        current = self.states.get(subject)
        if current is None:
            current = aggregator.empty()
        aggregation = self.rule.aggregation
        if aggregation in _IDEMPOTENT:
            self.states[subject] = aggregator.merge(current, after)
        elif aggregation is Aggregation.COUNT:
            self.states[subject] = current + after - (0 if before is None else before)
        else:  # SUM
            growth = EXACT.subtract(after, ZERO if before is None else before)
            self.states[subject] = EXACT.add(current, growth)
        return True

    def used(self, subject: str) -> Decimal | None:
        """The subject's usage this period (None when it has none, or a level has no value)."""
        state = self.states.get(subject)
        return None if state is None else self._aggregator.result(state)

    def subjects(self) -> list[str]:
        return list(self.states)
