"""Aggregations as mergeable states: SUM, COUNT, UNIQUE_COUNT, AVG, MIN, MAX, LATEST.

Each :class:`Aggregation` has an :class:`Aggregator` (get it with :func:`aggregator_for`) that
works on a *state*:

* ``empty()`` — the state of no events (the identity of ``merge``);
* ``add(state, value, event)`` — fold one event's value in. It may update ``state`` in place
  (UNIQUE_COUNT does, for speed) and returns the state to keep: never reuse the argument;
* ``merge(a, b)`` — combine two states without modifying either. It is associative and
  commutative, so states of storage windows, worker batches or partitions can be combined in any
  grouping and order and give the same ``result`` (hypothesis tests this against a plain oracle);
* ``result(state)`` — the number the API reports, a :class:`~decimal.Decimal` or ``None``;
* ``dump(state)`` / ``load(obj)`` — a JSON-able dict for the compacted output topic and back
  (numbers as canonical decimal strings, never floats; ``load`` validates and raises ValueError).

========================  ===================================  ============================
aggregation               state                                result (empty state)
========================  ===================================  ============================
``SUM``                   exact Decimal sum                    the sum (``0``)
``COUNT``                 number of events (no value needed)   the count (``0``)
``UNIQUE_COUNT``          the *set* of distinct values (text)  its size (``0``)
``AVG``                   (exact sum, count)                   sum / count (``None``)
``MIN`` / ``MAX``         the smallest / largest value         that value (``None``)
``LATEST``                value with (time, source, id)        the value of the greatest
                                                               (time, source, id) (``None``)
========================  ===================================  ============================

Exactness: sums use :data:`kmeter.core.decimals.EXACT` (80 digits, traps rounding), so SUM, AVG's
sum, MIN, MAX and LATEST are exact. ``UNIQUE_COUNT`` is exact too — its state is the set itself,
not a sketch — which costs memory proportional to the distinct values per stored window.
``AVG``'s result is the one rounded number: half-even to 18 decimal places.

``LATEST`` breaks ties deterministically: the greatest (time, source, id) wins, and if even that
is equal (the same event counted twice — which deduplication prevents) the greater value wins,
so merging is commutative whatever the input.

Values: numeric aggregations take a Decimal (from :func:`kmeter.core.jsonpath.number_at`),
``UNIQUE_COUNT`` a string (from :func:`kmeter.core.jsonpath.distinct_at`), ``COUNT`` ignores it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime
from decimal import Context, Decimal
from enum import StrEnum
from typing import Any, ClassVar, Final, Generic, NamedTuple, TypeVar

from kmeter.core.decimals import (
    EXACT,
    MAX_FRACTION_DIGITS,
    NUMERIC_STRING_PATTERN,
    PRECISION,
    ZERO,
    divide,
    format_decimal,
)
from kmeter.core.events import UsageEvent, format_timestamp, parse_timestamp

__all__ = [
    "AGGREGATORS",
    "Aggregation",
    "Aggregator",
    "Latest",
    "ValueKind",
    "aggregator_for",
]


class Aggregation(StrEnum):
    """How a Meter combines the values of its events (``spec.aggregation``)."""

    SUM = "SUM"
    COUNT = "COUNT"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    AVG = "AVG"
    MIN = "MIN"
    MAX = "MAX"
    LATEST = "LATEST"


class ValueKind(StrEnum):
    """What an aggregation needs from ``valueProperty``."""

    NONE = "none"  # COUNT: no valueProperty
    NUMBER = "number"  # an exact Decimal
    TEXT = "text"  # UNIQUE_COUNT: a distinct value as text


class Latest(NamedTuple):
    """The state of LATEST: a value and the (time, source, id) that orders it."""

    time: datetime
    source: str
    id: str
    value: Decimal


S = TypeVar("S")
V = TypeVar("V")

_NUMBER: Final = re.compile(NUMERIC_STRING_PATTERN, re.ASCII)
_WIDE: Final = Context(prec=2 * PRECISION + 2, Emin=-999_999, Emax=999_999)


# A stored number has at most 18 places and at most 60 integer digits, so adding two of them
# needs at most 80 digits: EXACT never has to round (or trap) on a loaded state.
_MAX_STORED_ADJUSTED: Final = PRECISION - MAX_FRACTION_DIGITS - 2


def _load_decimal(value: object, what: str) -> Decimal:
    if not isinstance(value, str) or len(value) > 2 * PRECISION or _NUMBER.match(value) is None:
        raise ValueError(f"{what} must be a decimal number as a string, got {value!r}")
    number = Decimal(value)
    if number.is_zero():
        return ZERO
    exponent = number.normalize(_WIDE).as_tuple().exponent
    if (
        not isinstance(exponent, int)
        or exponent < -MAX_FRACTION_DIGITS
        or number.adjusted() > _MAX_STORED_ADJUSTED
    ):
        raise ValueError(f"{what} {value} is out of the range of a stored number")
    return number


def _load_count(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _fields(obj: object, *names: str) -> list[Any]:
    if not isinstance(obj, Mapping) or set(obj) != set(names):
        raise ValueError(f"expected an object with exactly the keys {', '.join(names)}: {obj!r}")
    return [obj[name] for name in names]


class Aggregator(ABC, Generic[S, V]):
    """The operations of one aggregation on its state type ``S`` with values of type ``V``."""

    aggregation: ClassVar[Aggregation]
    value_kind: ClassVar[ValueKind] = ValueKind.NUMBER

    @abstractmethod
    def empty(self) -> S:
        """The state of no events."""

    @abstractmethod
    def add(self, state: S, value: V, event: UsageEvent) -> S:
        """Fold one event's value into ``state``; may modify ``state``; returns the new state."""

    @abstractmethod
    def merge(self, a: S, b: S) -> S:
        """Combine two states (associative, commutative); neither argument is modified."""

    @abstractmethod
    def result(self, state: S) -> Decimal | None:
        """The number reported for ``state``."""

    @abstractmethod
    def dump(self, state: S) -> dict[str, Any]:
        """``state`` as a JSON-able dict (numbers as canonical decimal strings)."""

    @abstractmethod
    def load(self, obj: object) -> S:
        """The state a :meth:`dump` produced; raises ValueError when ``obj`` is not one."""

    def __repr__(self) -> str:
        return f"<{self.aggregation} aggregator>"


class _Sum(Aggregator[Decimal, Decimal]):
    aggregation = Aggregation.SUM

    def empty(self) -> Decimal:
        return ZERO

    def add(self, state: Decimal, value: Decimal, event: UsageEvent) -> Decimal:
        return EXACT.add(state, value)

    def merge(self, a: Decimal, b: Decimal) -> Decimal:
        return EXACT.add(a, b)

    def result(self, state: Decimal) -> Decimal | None:
        return state

    def dump(self, state: Decimal) -> dict[str, Any]:
        return {"sum": format_decimal(state)}

    def load(self, obj: object) -> Decimal:
        (total,) = _fields(obj, "sum")
        return _load_decimal(total, "sum")


class _Count(Aggregator[int, object]):
    aggregation = Aggregation.COUNT
    value_kind = ValueKind.NONE

    def empty(self) -> int:
        return 0

    def add(self, state: int, value: object, event: UsageEvent) -> int:
        return state + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, state: int) -> Decimal | None:
        return Decimal(state)

    def dump(self, state: int) -> dict[str, Any]:
        return {"count": state}

    def load(self, obj: object) -> int:
        (count,) = _fields(obj, "count")
        return _load_count(count, "count")


class _UniqueCount(Aggregator[set[str], str]):
    aggregation = Aggregation.UNIQUE_COUNT
    value_kind = ValueKind.TEXT

    def empty(self) -> set[str]:
        return set()

    def add(self, state: set[str], value: str, event: UsageEvent) -> set[str]:
        state.add(value)
        return state

    def merge(self, a: set[str], b: set[str]) -> set[str]:
        return a | b

    def result(self, state: set[str]) -> Decimal | None:
        return Decimal(len(state))

    def dump(self, state: set[str]) -> dict[str, Any]:
        return {"values": sorted(state)}

    def load(self, obj: object) -> set[str]:
        (values,) = _fields(obj, "values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"values must be a list of strings, got {values!r}")
        return set(values)


class _Avg(Aggregator[tuple[Decimal, int], Decimal]):
    aggregation = Aggregation.AVG

    def empty(self) -> tuple[Decimal, int]:
        return (ZERO, 0)

    def add(
        self, state: tuple[Decimal, int], value: Decimal, event: UsageEvent
    ) -> tuple[Decimal, int]:
        return (EXACT.add(state[0], value), state[1] + 1)

    def merge(self, a: tuple[Decimal, int], b: tuple[Decimal, int]) -> tuple[Decimal, int]:
        return (EXACT.add(a[0], b[0]), a[1] + b[1])

    def result(self, state: tuple[Decimal, int]) -> Decimal | None:
        total, count = state
        return divide(total, count) if count else None

    def dump(self, state: tuple[Decimal, int]) -> dict[str, Any]:
        return {"sum": format_decimal(state[0]), "count": state[1]}

    def load(self, obj: object) -> tuple[Decimal, int]:
        total, count = _fields(obj, "sum", "count")
        loaded = (_load_decimal(total, "sum"), _load_count(count, "count"))
        if loaded[1] == 0 and not loaded[0].is_zero():
            raise ValueError("an average of no values must have sum 0")
        return loaded


class _Min(Aggregator[Decimal | None, Decimal]):
    aggregation = Aggregation.MIN
    key: ClassVar[str] = "min"

    def empty(self) -> Decimal | None:
        return None

    def add(self, state: Decimal | None, value: Decimal, event: UsageEvent) -> Decimal | None:
        return value if state is None or value < state else state

    def merge(self, a: Decimal | None, b: Decimal | None) -> Decimal | None:
        if a is None:
            return b
        if b is None:
            return a
        return b if b < a else a

    def result(self, state: Decimal | None) -> Decimal | None:
        return state

    def dump(self, state: Decimal | None) -> dict[str, Any]:
        return {self.key: None if state is None else format_decimal(state)}

    def load(self, obj: object) -> Decimal | None:
        (value,) = _fields(obj, self.key)
        return None if value is None else _load_decimal(value, self.key)


class _Max(_Min):
    aggregation = Aggregation.MAX
    key = "max"

    def add(self, state: Decimal | None, value: Decimal, event: UsageEvent) -> Decimal | None:
        return value if state is None or value > state else state

    def merge(self, a: Decimal | None, b: Decimal | None) -> Decimal | None:
        if a is None:
            return b
        if b is None:
            return a
        return b if b > a else a


def _latest_order(latest: Latest) -> tuple[datetime, str, str, Decimal, str]:
    return (latest.time, latest.source, latest.id, latest.value, format_decimal(latest.value))


class _Latest(Aggregator[Latest | None, Decimal]):
    aggregation = Aggregation.LATEST

    def empty(self) -> Latest | None:
        return None

    def add(self, state: Latest | None, value: Decimal, event: UsageEvent) -> Latest | None:
        candidate = Latest(event.time, event.source, event.id, value)
        return self.merge(state, candidate)

    def merge(self, a: Latest | None, b: Latest | None) -> Latest | None:
        if a is None:
            return b
        if b is None:
            return a
        if (a.time, a.source, a.id) != (b.time, b.source, b.id):
            return b if (b.time, b.source, b.id) > (a.time, a.source, a.id) else a
        return b if _latest_order(b) > _latest_order(a) else a

    def result(self, state: Latest | None) -> Decimal | None:
        return None if state is None else state.value

    def dump(self, state: Latest | None) -> dict[str, Any]:
        if state is None:
            return {"latest": None}
        return {
            "latest": {
                "time": format_timestamp(state.time),
                "source": state.source,
                "id": state.id,
                "value": format_decimal(state.value),
            }
        }

    def load(self, obj: object) -> Latest | None:
        (latest,) = _fields(obj, "latest")
        if latest is None:
            return None
        time, source, event_id, value = _fields(latest, "time", "source", "id", "value")
        if (
            not isinstance(time, str)
            or not isinstance(source, str)
            or not isinstance(event_id, str)
        ):
            raise ValueError(f"latest.time, .source and .id must be strings: {latest!r}")
        return Latest(parse_timestamp(time), source, event_id, _load_decimal(value, "value"))


AGGREGATORS: Final[Mapping[Aggregation, Aggregator[Any, Any]]] = {
    Aggregation.SUM: _Sum(),
    Aggregation.COUNT: _Count(),
    Aggregation.UNIQUE_COUNT: _UniqueCount(),
    Aggregation.AVG: _Avg(),
    Aggregation.MIN: _Min(),
    Aggregation.MAX: _Max(),
    Aggregation.LATEST: _Latest(),
}
"""The aggregator of every aggregation."""


def aggregator_for(aggregation: Aggregation | str) -> Aggregator[Any, Any]:
    """The :class:`Aggregator` of an aggregation (or its name, e.g. ``"SUM"``)."""
    try:
        return AGGREGATORS[Aggregation(aggregation)]
    except ValueError:
        names = ", ".join(Aggregation)
        raise ValueError(f"{aggregation!r} is not an aggregation; use one of {names}") from None
