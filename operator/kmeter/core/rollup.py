"""Query-side roll-up: stored window totals → the rows of a usage query (pure, no I/O).

The usage API (``GET /api/v1/meters/{meter}/query``) and ``kmeter dev`` answer a query with
:func:`roll_up`. Its input is a Meter's stored windows as ``(WindowKey, state)`` pairs — exactly
the items of :attr:`kmeter.core.fold.FoldState.windows`, or what the API materialized from the
Meter's output topic. Keys need not be unique: every pair that matches is merged (the API keeps
one entry per output record; after a ``groupBy`` change two records may map to the same key).

A :class:`Query` says (OpenMeter's query parameters):

* ``start`` / ``end`` (``from`` / ``to``): the half-open range ``[start, end)``. Each must lie on
  a boundary of the meter's stored (UTC) windows — usage inside one stored window cannot be
  split — otherwise the query is refused with a reason. Absent: unbounded on that side.
* ``window_size`` / ``zone``: roll up into ``MINUTE``, ``HOUR``, ``DAY`` or ``MONTH`` windows of
  the zone's local calendar (see :mod:`kmeter.core.windows`), or, when ``window_size`` is None,
  into **one** window for the whole range. Windows are cut at ``start`` and ``end`` (the first
  row of a month queried from its 15th starts on the 15th); an unbounded side is not cut. A roll-up
  that cannot be exact (``DAY`` storage to a Kolkata day) is refused with
  :func:`~kmeter.core.windows.rollup_problem`'s reason.
* ``subjects``: only these subjects. As in OpenMeter, filtering by subject also groups by it.
* ``group_by``: dimensions to keep apart: names of the meter's ``groupBy`` and the reserved
  ``subject``. Everything else is merged: without ``group_by`` a row totals all subjects and
  groups of its window (its ``subject`` is None).
* ``filter_group_by``: exact matches on ``groupBy`` labels (the null group never matches).

Rows exist only for windows with usage (no zero rows), sorted by window, subject, then group
labels (null first). Values are the aggregation's exact results (:meth:`Aggregator.result`).

**Speed.** Work is linear in the matching stored windows plus one local-window computation per
query window that has data: for ``MINUTE``, ``HOUR`` and ``DAY`` a window is derived from the
zone's UTC offset and verified (offsets equal just before, at, and at the end of it), falling back
to :func:`~kmeter.core.windows.local_window` around clock changes; ``MINUTE`` windows are the
stored minutes themselves (every UTC offset since 1972 is a whole number of minutes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, Final

from kmeter.core.aggregation import Aggregation, aggregator_for
from kmeter.core.events import format_timestamp
from kmeter.core.fold import WindowKey
from kmeter.core.windows import (
    RollupError,
    Window,
    WindowSize,
    local_window,
    query_windows,
    rollup_problem,
    storage_seconds,
)

__all__ = ["SUBJECT", "Query", "QueryError", "Row", "check_query", "roll_up"]

SUBJECT: Final = "subject"
"""The reserved ``groupBy`` name of the subject dimension (as in OpenMeter)."""

_RANK: Final = {WindowSize.MINUTE: 0, WindowSize.HOUR: 1, WindowSize.DAY: 2, WindowSize.MONTH: 3}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Since 1972 every zone's UTC offset is a whole number of minutes; before, some zones kept local
# mean time with seconds. Stored minutes from here on are local minutes in every zone.
_WHOLE_MINUTES_SINCE: Final = int(datetime(1972, 7, 1, tzinfo=UTC).timestamp())


class QueryError(ValueError):
    """The query cannot be answered as asked; ``parameter`` names the culprit, ``str()`` why."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(reason)
        self.parameter = parameter
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Query:
    """A usage query; see the module documentation for each field."""

    start: datetime | None = None
    end: datetime | None = None
    window_size: WindowSize | None = None
    zone: tzinfo = UTC
    subjects: frozenset[str] | None = None
    group_by: tuple[str, ...] = ()
    filter_group_by: Mapping[str, str] = field(default_factory=dict)

    @property
    def by_subject(self) -> bool:
        """Whether rows are per subject: ``subject`` in ``group_by``, or a subject filter."""
        return SUBJECT in self.group_by or self.subjects is not None

    @property
    def group_names(self) -> tuple[str, ...]:
        """The meter ``groupBy`` names kept apart, in the order asked, without ``subject``."""
        seen: dict[str, None] = {}
        for name in self.group_by:
            if name != SUBJECT:
                seen.setdefault(name)
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a query result (OpenMeter's ``MeterQueryRow``)."""

    window_start: datetime
    window_end: datetime
    subject: str | None
    group_by: Mapping[str, str | None]
    value: Decimal | None


def _seconds(instant: datetime) -> int:
    elapsed = instant - _EPOCH
    return elapsed.days * 86400 + elapsed.seconds


def _misaligned(name: str, instant: datetime, storage_size: WindowSize) -> str | None:
    step = storage_seconds(storage_size)
    elapsed = instant - _EPOCH
    if elapsed.microseconds == 0 and (elapsed.days * 86400 + elapsed.seconds) % step == 0:
        return None
    return (
        f"{name} {format_timestamp(instant)} is inside one of this meter's stored UTC "
        f"{storage_size} windows, whose usage cannot be split. Give a {name} on a whole UTC "
        f"{storage_size.lower()}."
    )


def check_query(query: Query, *, storage_size: WindowSize, meter_groups: Iterable[str]) -> None:
    """Refuse, with :class:`QueryError`, what no data could make answerable.

    Checks the ``groupBy`` and ``filterGroupBy`` names against the meter's, the range, the
    alignment of ``start``/``end`` with the stored windows, the window size against the storage
    size and, when both bounds are given, the exactness of the roll-up over the whole range.
    :func:`roll_up` calls it; the API calls it first to answer 400 before touching data.
    """
    known = set(meter_groups)
    listed = ", ".join(sorted(known)) or "nothing"
    for name in query.group_names:
        if name not in known:
            raise QueryError(
                "groupBy",
                f"groupBy {name!r} is not a groupBy of this meter (it groups by {listed}; "
                f"{SUBJECT!r} groups by subject)",
            )
    for name in query.filter_group_by:
        if name not in known:
            raise QueryError(
                "filterGroupBy",
                f"filterGroupBy[{name}]: {name!r} is not a groupBy of this meter "
                f"(it groups by {listed})",
            )
    for name, instant in (("from", query.start), ("to", query.end)):
        if instant is None:
            continue
        if instant.utcoffset() is None:
            raise QueryError(name, f"{name} must have a time zone offset")
        problem = _misaligned(name, instant, storage_size)
        if problem:
            raise QueryError(name, problem)
    if query.start is not None and query.end is not None and query.end <= query.start:
        raise QueryError("to", "to must be after from")
    size = query.window_size
    if size is None:
        return
    if _RANK[size] < _RANK[storage_size]:
        problem = rollup_problem(storage_size, size, [], query.zone)
        raise QueryError("windowSize", problem or f"cannot answer by {size}")
    if query.start is not None and query.end is not None:
        _check_range(query, storage_size, size, query.start, query.end)


def _check_range(
    query: Query, storage_size: WindowSize, size: WindowSize, start: datetime, end: datetime
) -> None:
    """The data-independent exactness check over ``[start, end)`` (skipped where it always
    holds: MINUTE storage since 1972)."""
    if storage_size is WindowSize.MINUTE and _seconds(start) >= _WHOLE_MINUTES_SINCE:
        return
    try:
        windows = query_windows(start, end, size, query.zone)
    except ValueError as error:
        raise QueryError("windowSize", str(error)) from None
    problem = rollup_problem(storage_size, size, windows, query.zone)
    if problem:
        raise QueryError("windowTimeZone", problem)


def _offset(seconds: int, zone: tzinfo) -> int:
    offset = datetime.fromtimestamp(seconds, zone).utcoffset()
    return 0 if offset is None else offset.days * 86400 + offset.seconds


class _Locator:
    """Maps storage window starts (visited in ascending order) to their local query window."""

    def __init__(self, size: WindowSize, zone: tzinfo, storage_size: WindowSize) -> None:
        self.size = size
        self.zone = zone
        self.storage_size = storage_size
        self.storage_step = storage_seconds(storage_size)
        self.step = 0 if size is WindowSize.MONTH else storage_seconds(size)
        self.current = (0, -1)

    def locate(self, start: int) -> tuple[int, int]:
        window_start, window_end = self.current
        if window_start <= start < window_end:
            return self.current
        found: tuple[int, int] | None
        if self.size is WindowSize.MINUTE and start >= _WHOLE_MINUTES_SINCE:
            found = (start, start + 60)
        else:
            found = self._fixed(start) if self.step else None
            if found is None:
                window = local_window(datetime.fromtimestamp(start, UTC), self.size, self.zone)
                found = (_seconds(window.start), _seconds(window.end))
        if start + self.storage_step > found[1]:
            window = Window(
                datetime.fromtimestamp(found[0], UTC), datetime.fromtimestamp(found[1], UTC)
            )
            problem = rollup_problem(self.storage_size, self.size, [window], self.zone)
            raise RollupError(problem or "a stored window straddles a query window")
        self.current = found
        return found

    def _fixed(self, start: int) -> tuple[int, int] | None:
        """The window from the zone's offset, when the offset is constant around it."""
        zone, step = self.zone, self.step
        offset = _offset(start, zone)
        begin = start - (start + offset) % step
        end = begin + step
        for probe in (begin - 1, begin, end - 1, end):
            if _offset(probe, zone) != offset:
                return None
        return (begin, end)


def roll_up(
    windows: Iterable[tuple[WindowKey, Any]],
    *,
    aggregation: Aggregation | str,
    storage_size: WindowSize,
    meter_groups: tuple[str, ...],
    query: Query,
) -> list[Row]:
    """The rows answering ``query`` from a meter's stored windows.

    ``meter_groups`` are the meter's ``groupBy`` names in the order of the labels in the keys
    (sorted, as :class:`~kmeter.core.fold.MeterSpec` keeps them). Raises :class:`QueryError`
    for a query that cannot be answered (see :func:`check_query`).
    """
    check_query(query, storage_size=storage_size, meter_groups=meter_groups)
    aggregator = aggregator_for(aggregation)
    merge = aggregator.merge
    step = storage_seconds(storage_size)
    low = None if query.start is None else _seconds(query.start)
    high = None if query.end is None else _seconds(query.end)
    subjects = query.subjects
    by_subject = query.by_subject
    position = {name: index for index, name in enumerate(meter_groups)}
    filters = [(position[name], value) for name, value in query.filter_group_by.items()]
    kept_names = query.group_names
    kept = [position[name] for name in kept_names]

    selected: list[tuple[int, str | None, tuple[str | None, ...], Any]] = []
    for (subject, labels, start), state in windows:
        if subjects is not None and subject not in subjects:
            continue
        if (low is not None and start < low) or (high is not None and start >= high):
            continue
        if filters and any(labels[index] != value for index, value in filters):
            continue
        selected.append(
            (
                start,
                subject if by_subject else None,
                tuple([labels[index] for index in kept]),
                state,
            )
        )
    if not selected:
        return []

    starts = sorted({item[0] for item in selected})
    bounds = _bounds(query, storage_size, step, starts, low, high)

    groups: dict[tuple[int, int, str | None, tuple[str | None, ...]], Any] = {}
    for start, who, labels, state in selected:
        begin, end = bounds[start]
        key = (begin, end, who, labels)
        current = groups.get(key)
        groups[key] = state if current is None else merge(current, state)

    result = aggregator.result
    moments: dict[int, datetime] = {}  # a few windows, many rows: one datetime each
    rows = []
    for (begin, end, who, labels), state in sorted(groups.items(), key=_order):
        start_at = moments.get(begin) or moments.setdefault(begin, _moment(begin))
        end_at = moments.get(end) or moments.setdefault(end, _moment(end))
        rows.append(
            Row(start_at, end_at, who, dict(zip(kept_names, labels, strict=True)), result(state))
        )
    return rows


def _moment(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _order(item: tuple[tuple[int, int, str | None, tuple[str | None, ...]], Any]) -> Any:
    (begin, _, subject, labels), _ = item
    return (
        begin,
        subject is not None,
        subject or "",
        tuple([(label is not None, label or "") for label in labels]) if labels else (),
    )


def _bounds(  # noqa: PLR0917 - a private helper of roll_up
    query: Query,
    storage_size: WindowSize,
    step: int,
    starts: list[int],
    low: int | None,
    high: int | None,
) -> dict[int, tuple[int, int]]:
    """The (cut) query window of every stored window start in ``starts`` (sorted)."""
    size = query.window_size
    if size is None:
        whole = (starts[0] if low is None else low, starts[-1] + step if high is None else high)
        return dict.fromkeys(starts, whole)
    if query.start is None or query.end is None:
        # The data-independent check over the range the data spans (check_query did it
        # when both bounds were given).
        first = starts[0] if low is None else low
        last = starts[-1] + step if high is None else high
        _check_range(
            query,
            storage_size,
            size,
            datetime.fromtimestamp(first, UTC),
            datetime.fromtimestamp(last, UTC),
        )
    locator = _Locator(size, query.zone, storage_size)
    found = {}
    for start in starts:
        try:
            begin, end = locator.locate(start)
        except RollupError as error:
            raise QueryError("windowTimeZone", str(error)) from None
        if low is not None and begin < low:
            begin = low
        if high is not None and end > high:
            end = high
        found[start] = (begin, end)
    return found
