"""Time windows: UTC storage windows, and query windows in any IANA time zone.

**Storage.** A Meter stores usage in fixed UTC windows of one :class:`WindowSize`: ``MINUTE``,
``HOUR`` or ``DAY`` (:data:`STORAGE_SIZES`). They are plain epoch arithmetic: a window starts at a
multiple of 60, 3600 or 86400 seconds since 1970-01-01T00:00:00Z (no leap seconds, like every
Unix clock) and is identified by that start.

**Queries** roll storage windows up to ``MINUTE``, ``HOUR``, ``DAY`` or ``MONTH`` windows of the
local calendar of a time zone (``windowTimeZone``). A local window starts where the *wall clock*
of the zone crosses a boundary of its size — the hour turns, the day turns, the month turns:

* A boundary is an instant whose wall time is exactly on the boundary (``01:00:00`` for hours),
  or the instant of a forward clock change that jumps over one. So when New York springs forward
  (02:00 → 03:00) the local day is 23 hours, and the hour starting at 01:00 ends at 03:00 after
  one hour; when it falls back (02:00 → 01:00) the local day is 25 hours and there are *two*
  one-hour windows starting at 01:00 wall time (01:00 EDT and 01:00 EST).
* A clock change that goes back by less than a window (Lord Howe Island moves back 30 minutes)
  makes that window longer: the hour starting at 01:00 then lasts 90 minutes.
* A day that the zone skips entirely (Pacific/Apia skipped 2011-12-30) has no window.
* Offsets of half or quarter hours (Asia/Kolkata +05:30, Asia/Kathmandu +05:45,
  Australia/Adelaide +09:30/+10:30) simply move the boundaries: a Kathmandu hour starts at xx:15
  UTC.

Windows are returned as :class:`Window` pairs of **UTC** datetimes. This is deliberate: Python
compares and subtracts two datetimes with the *same* ``ZoneInfo`` by their wall times, ignoring
``fold``, so in local time a 25-hour day would measure 24 hours. Convert for display with
``window.start.astimezone(zone)``.

**Roll-up exactness.** A storage window can only be added to a query window it lies inside.
For ``MINUTE`` storage that always holds for today's zones, whose offsets are all whole minutes
(before 1972 some zones used local mean time offsets with seconds). ``HOUR`` storage rolls up
exactly only in zones whose offsets are whole hours over the queried range (not Kolkata, Adelaide,
Kathmandu, St Johns, nor Lord Howe's half-hour DST), and ``DAY`` storage essentially only in UTC
(London's summer days start at 23:00 UTC). A query window can never be smaller than a storage
window. **kmeter refuses an inexact roll-up** rather than guess: :func:`rollup_problem` returns
the reason (the usage API answers 400 with it) and :class:`WindowIndex` raises
:class:`RollupError`. Choose ``MINUTE`` storage for meters queried in arbitrary time zones.

All functions take timezone-aware datetimes and never read the clock.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from itertools import pairwise
from typing import Final, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "EARLIEST",
    "LATEST",
    "MAX_QUERY_WINDOWS",
    "STORAGE_SIZES",
    "RollupError",
    "Window",
    "WindowIndex",
    "WindowSize",
    "local_window",
    "query_window_of",
    "query_windows",
    "rollup_problem",
    "storage_seconds",
    "storage_window",
    "time_zone",
    "window_start",
    "window_start_seconds",
]


class WindowSize(StrEnum):
    """The size of a window. Storage uses MINUTE, HOUR, DAY; queries also MONTH."""

    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


STORAGE_SIZES: Final = (WindowSize.MINUTE, WindowSize.HOUR, WindowSize.DAY)
"""The window sizes a Meter may store (``spec.windowSize``)."""

MAX_QUERY_WINDOWS: Final = 100_000
""":func:`query_windows` refuses to produce more windows than this (a year of HOURs is 8,784)."""

_SECONDS: Final = {WindowSize.MINUTE: 60, WindowSize.HOUR: 3600, WindowSize.DAY: 86400}
_NOMINAL_SECONDS: Final = {**_SECONDS, WindowSize.MONTH: 28 * 86400}
_RANK: Final = {WindowSize.MINUTE: 0, WindowSize.HOUR: 1, WindowSize.DAY: 2, WindowSize.MONTH: 3}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
"""Queries and local windows are supported from here (the same range as event times)..."""
LATEST: Final = datetime(9000, 1, 1, tzinfo=UTC)
"""...up to here (exclusive)."""


class Window(NamedTuple):
    """A half-open interval ``[start, end)`` of UTC datetimes."""

    start: datetime
    end: datetime

    def __contains__(self, instant: object) -> bool:
        return isinstance(instant, datetime) and self.start <= instant < self.end

    @property
    def duration(self) -> timedelta:
        """Its length in real (elapsed) time."""
        return self.end - self.start


class RollupError(ValueError):
    """Storage windows cannot be rolled up exactly into the requested query windows."""


def _require_aware(instant: datetime, name: str = "instant") -> None:
    if instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _require_supported(instant: datetime, name: str) -> None:
    _require_aware(instant, name)
    if not EARLIEST <= instant <= LATEST:
        raise ValueError(
            f"{name} {instant.isoformat()} is outside the supported range "
            f"[{EARLIEST.isoformat()}, {LATEST.isoformat()}]"
        )


# --- storage windows (UTC, fixed length) ------------------------------------------------------


def storage_seconds(size: WindowSize) -> int:
    """The length of a storage window in seconds (MONTH is not a storage size)."""
    try:
        return _SECONDS[size]
    except KeyError:
        raise ValueError(f"{size} is not a storage window size; use MINUTE, HOUR or DAY") from None


def window_start_seconds(epoch_seconds: int, size: WindowSize) -> int:
    """The start of the storage window holding a whole epoch second.

    Takes an ``int`` on purpose: a float timestamp with microseconds can round up to the next
    second (and window) for dates after ~2100. Use :func:`window_start` for datetimes.
    """
    step = storage_seconds(size)
    return epoch_seconds - epoch_seconds % step


def window_start(instant: datetime, size: WindowSize) -> datetime:
    """The start (UTC) of the storage window of ``size`` holding ``instant``."""
    _require_aware(instant)
    step = storage_seconds(size)
    elapsed = instant - _EPOCH
    seconds = elapsed.days * 86400 + elapsed.seconds  # exact; microseconds never cross a window
    return _EPOCH + timedelta(seconds=seconds - seconds % step)


def storage_window(instant: datetime, size: WindowSize) -> Window:
    """The storage window of ``size`` holding ``instant``."""
    start = window_start(instant, size)
    return Window(start, start + timedelta(seconds=storage_seconds(size)))


# --- local calendar windows ---------------------------------------------------------------------


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``Europe/London``), or ValueError with a reason."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{name!r} is not an IANA time zone name (e.g. Europe/Berlin)") from None


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    """The naive wall-clock time of ``instant`` in ``zone``."""
    return instant.astimezone(zone).replace(tzinfo=None)


def _truncate(wall: datetime, size: WindowSize) -> datetime:
    if size is WindowSize.MINUTE:
        return wall.replace(second=0, microsecond=0)
    if size is WindowSize.HOUR:
        return wall.replace(minute=0, second=0, microsecond=0)
    if size is WindowSize.DAY:
        return wall.replace(hour=0, minute=0, second=0, microsecond=0)
    return wall.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _shift(wall: datetime, size: WindowSize, steps: int) -> datetime:
    if size is WindowSize.MONTH:
        years, month = divmod(wall.month - 1 + steps, 12)
        return wall.replace(year=wall.year + years, month=month + 1)
    return wall + timedelta(seconds=_SECONDS[size] * steps)


_ONE_DAY: Final = timedelta(days=1)
_NO_OFFSET: Final = timedelta(0)


def _offset_at(epoch_seconds: int, zone: tzinfo) -> timedelta | None:
    return datetime.fromtimestamp(epoch_seconds, zone).utcoffset()


def _transition(before: datetime, after: datetime, zone: tzinfo) -> datetime:
    """The first instant in ``(before, after]`` with the offset in effect at ``after``."""
    low = int(before.timestamp())
    high = int(after.timestamp())
    target = _offset_at(high, zone)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset_at(middle, zone) == target:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _instants(wall: datetime, zone: tzinfo) -> list[datetime]:
    """The boundary instants (UTC) that the boundary wall time ``wall`` gives in ``zone``.

    Two for a wall time the clock shows twice, one normally, and for a wall time the clock skips
    the instant of the forward jump over it.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    found = [moment for moment in {first, second} if _wall(moment, zone) == wall]
    if found:
        return found
    # A gap: fold=1 reads the wall time with the later offset (an instant before the jump),
    # fold=0 with the earlier one (an instant after it); the jump lies between.
    return [_transition(min(first, second), max(first, second), zone)]


def _fall_back(start: datetime, end: datetime, zone: tzinfo) -> timedelta:
    """How far the wall clock may turn back near ``start`` or ``end`` (0 with no clock change
    within a day of either): the spread of the offsets a day before, at and a day after each."""
    near = (start - _ONE_DAY, start, start + _ONE_DAY, end - _ONE_DAY, end, end + _ONE_DAY)
    offsets = [moment.astimezone(zone).utcoffset() or _NO_OFFSET for moment in near]
    return max(offsets) - min(offsets)


def _boundaries(start: datetime, end: datetime, size: WindowSize, zone: tzinfo) -> list[datetime]:
    """Every boundary instant from two windows before ``start`` to two after ``end``, sorted.

    Boundaries are found by walking the wall clock. Where it turns back (end of summer time) an
    instant's wall time can be up to the turn-back earlier than that of an instant before it:
    walking only from ``start``'s wall time to ``end``'s would miss the boundaries of the
    repeated hour (a MINUTE query starting at 01:40 EDT and ending at 01:30 EST found none).
    The walk is widened by the turn-back on both sides.
    """
    margin = _fall_back(start, end, zone)
    wall = _shift(_truncate(_wall(start, zone) - margin, size), size, -2)
    last = _shift(_truncate(_wall(end, zone) + margin, size), size, 2)
    found: set[datetime] = set()
    while wall <= last:
        found.update(_instants(wall, zone))
        wall = _shift(wall, size, 1)
    return sorted(found)


def local_window(instant: datetime, size: WindowSize, zone: tzinfo) -> Window:
    """The window of ``size`` in the local calendar of ``zone`` that holds ``instant``."""
    _require_supported(instant, "instant")
    boundaries = _boundaries(instant, instant, size, zone)
    index = bisect_right(boundaries, instant)
    return Window(boundaries[index - 1], boundaries[index])


def query_windows(
    start: datetime,
    end: datetime,
    size: WindowSize,
    zone: tzinfo = UTC,
    *,
    limit: int = MAX_QUERY_WINDOWS,
) -> list[Window]:
    """The windows of ``size`` in ``zone``'s calendar that overlap ``[start, end)``, in order.

    They are whole windows: the first may begin before ``start`` and the last end after ``end``
    (the caller decides whether to require aligned bounds). Raises ValueError when ``end`` is not
    after ``start`` or when there would be more than ``limit`` windows.
    """
    _require_supported(start, "start")
    _require_supported(end, "end")
    if end <= start:
        raise ValueError("the end of a query must be after its start")
    estimate = (end - start).total_seconds() / _NOMINAL_SECONDS[size]
    if estimate > limit:
        raise ValueError(
            f"a query from {start.isoformat()} to {end.isoformat()} by {size} would have about "
            f"{int(estimate):,} windows; at most {limit:,} are allowed"
        )
    boundaries = _boundaries(start, end, size, zone)
    return [
        Window(begin, finish)
        for begin, finish in pairwise(boundaries)
        if finish > start and begin < end
    ]


# --- rolling storage windows up into query windows ----------------------------------------------


def _zone_name(zone: tzinfo) -> str:
    return getattr(zone, "key", None) or str(zone)


def rollup_problem(
    storage_size: WindowSize, query_size: WindowSize, windows: Sequence[Window], zone: tzinfo
) -> str | None:
    """Why storage windows of ``storage_size`` cannot be summed exactly into ``windows``, or None.

    ``windows`` are the query windows (of ``query_size`` in ``zone``) from :func:`query_windows`.
    The message is meant for the person who sent the query.
    """
    step = storage_seconds(storage_size)
    if _RANK[query_size] < _RANK[storage_size]:
        return (
            f"this meter stores {storage_size} windows; it cannot answer by {query_size}. "
            f"Use windowSize {storage_size} or larger."
        )
    for window in windows:
        for boundary in (window.start, window.end):
            elapsed = boundary - _EPOCH
            if elapsed.microseconds or (elapsed.days * 86400 + elapsed.seconds) % step:
                local = boundary.astimezone(zone).isoformat()
                advice = (
                    "Query in UTC"
                    if storage_size is WindowSize.DAY
                    else "Query in a time zone whose offset is a whole number of "
                    f"{storage_size.lower()}s (e.g. UTC)"
                )
                return (
                    f"{query_size} windows in {_zone_name(zone)} begin or end at {local}, inside "
                    f"one of this meter's stored UTC {storage_size} windows, whose usage cannot be "
                    f"split. {advice}, or use a meter with a smaller windowSize."
                )
    return None


def query_window_of(
    storage_start: datetime, storage_size: WindowSize, query_size: WindowSize, zone: tzinfo
) -> Window:
    """The query window that the storage window starting at ``storage_start`` rolls up into.

    Raises :class:`RollupError` when the storage window is not inside a single query window.
    For many storage windows, build a :class:`WindowIndex` once instead.
    """
    storage = storage_window(storage_start, storage_size)
    if storage.start != storage_start:
        raise ValueError(f"{storage_start.isoformat()} does not start a {storage_size} window")
    window = local_window(storage_start, query_size, zone)
    if storage.end > window.end:
        problem = rollup_problem(storage_size, query_size, [window], zone)
        raise RollupError(problem or f"{storage_start.isoformat()} straddles a {query_size}")
    return window


class WindowIndex:
    """Finds, fast, the query window each storage window rolls up into.

    Built from the query windows of one query; refuses (:class:`RollupError`) if any query
    window boundary falls inside a storage window.
    """

    def __init__(
        self,
        windows: Sequence[Window],
        storage_size: WindowSize,
        query_size: WindowSize,
        zone: tzinfo = UTC,
    ) -> None:
        problem = rollup_problem(storage_size, query_size, windows, zone)
        if problem is not None:
            raise RollupError(problem)
        self.windows: tuple[Window, ...] = tuple(windows)
        self._starts = [int(window.start.timestamp()) for window in windows]
        self._ends = [int(window.end.timestamp()) for window in windows]

    def locate_seconds(self, storage_start: int) -> int | None:
        """The index of the query window holding the storage window starting at this epoch
        second, or None when it lies outside every query window."""
        index = bisect_right(self._starts, storage_start) - 1
        if index < 0 or storage_start >= self._ends[index]:
            return None
        return index

    def locate(self, storage_start: datetime) -> int | None:
        """Like :meth:`locate_seconds`, for a datetime."""
        return self.locate_seconds(int(storage_start.timestamp()))
