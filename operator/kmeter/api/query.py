"""The Meter endpoints: list, get, query (JSON or CSV) and subjects, in OpenMeter's shapes.

Meters are addressed by name within the request's namespace (:func:`~.auth.namespace_of`):
``GET /api/v1/meters/llm-tokens/query`` reads the Meter ``llm-tokens`` of the token's namespace;
the Meter of another namespace is never found there, and naming that namespace explicitly
(``/api/v1/namespaces/<other>/meters/...``) is 403.

Query parameters (OpenMeter's): ``from``, ``to`` (RFC 3339), ``windowSize`` (``MINUTE``,
``HOUR``, ``DAY``, ``MONTH``; absent: one row per subject/group for the whole range),
``windowTimeZone`` (IANA name, default ``UTC``), ``subject`` (repeatable; filters and groups by
subject), ``groupBy`` (repeatable: ``groupBy`` names of the Meter, or ``subject``),
``filterGroupBy[name]=value``. Other parameters (``clientId``) are ignored. The semantics are
:mod:`kmeter.core.rollup`'s; an unanswerable query is 400 with the reason.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from kmeter.api.auth import namespace_of
from kmeter.api.backends import MeterViews
from kmeter.api.encoding import dumps, row_objects, rows_csv
from kmeter.api.errors import ApiError
from kmeter.api.materializer import MeterView
from kmeter.api.store import MeterStore
from kmeter.core.events import parse_timestamp
from kmeter.core.rollup import Query, QueryError, Row, check_query, roll_up
from kmeter.core.windows import WindowSize, time_zone

JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
_FILTER = re.compile(r"^filterGroupBy\[(.+)\]$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def meter_object(view: MeterView) -> dict[str, Any]:
    """A Meter in OpenMeter's shape, plus its ``namespace``."""
    info = view.info
    spec = info.resource.spec
    annotations = info.resource.metadata.annotations or {}
    found: dict[str, Any] = {
        "id": info.uid,
        "slug": info.name,
        "name": info.name,
        "namespace": info.namespace,
        "aggregation": str(spec.aggregation),
        "eventType": spec.event_type,
        "groupBy": dict(spec.group_by or {}),
        "windowSize": str(spec.window_size),
    }
    if spec.value_property is not None:
        found["valueProperty"] = spec.value_property
    if "kmeter.io/description" in annotations:
        found["description"] = annotations["kmeter.io/description"]
    if info.created:
        found["createdAt"] = info.created
    return found


def _json(body: Any) -> web.Response:
    return web.Response(body=dumps(body), content_type=JSON_TYPE)


def _view(request: web.Request, materializer: MeterViews) -> MeterView:
    namespace = namespace_of(request)
    name = request.match_info["meter"]
    view = materializer.get(namespace, name)
    if view is None:
        raise ApiError(404, f"there is no Meter {name!r} in namespace {namespace!r}")
    return view


def _single(request: web.Request, name: str) -> str | None:
    """A parameter given at most once (a second value would be silently ignored otherwise)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, f"{name}: give it at most once", extensions={"parameter": name})
    return values[0] if values else None


def _instant(request: web.Request, name: str) -> datetime | None:
    value = _single(request, name)
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as error:
        raise ApiError(400, f"{name}: {error}", extensions={"parameter": name}) from None


def parse_query(request: web.Request) -> Query:
    """A :class:`Query` from the query string; 400 naming the parameter when malformed."""
    params = request.query
    size = None
    size_name = _single(request, "windowSize")
    if size_name is not None:
        try:
            size = WindowSize(size_name)
        except ValueError:
            raise ApiError(
                400,
                f"windowSize: {size_name!r} is not one of MINUTE, HOUR, DAY, MONTH",
                extensions={"parameter": "windowSize"},
            ) from None
    try:
        zone = time_zone(_single(request, "windowTimeZone") or "UTC")
    except ValueError as error:
        raise ApiError(
            400, f"windowTimeZone: {error}", extensions={"parameter": "windowTimeZone"}
        ) from None
    subjects = params.getall("subject", [])
    filters: dict[str, str] = {}
    for key, value in params.items():
        match = _FILTER.match(key)
        if match is None:
            # filterGroupBy, filterGroupBy[], filterGroupBy[a: ignoring any of them would
            # answer unfiltered usage to someone who asked for a filter
            if key.startswith("filterGroupBy"):
                raise ApiError(
                    400,
                    f"filterGroupBy: give each filter as filterGroupBy[name]=value "
                    f"(a deepObject, as in OpenMeter); got {key}={value!r}",
                    extensions={"parameter": "filterGroupBy"},
                )
            continue
        if match.group(1) in filters:
            raise ApiError(
                400, f"{key}: give it at most once", extensions={"parameter": "filterGroupBy"}
            )
        filters[match.group(1)] = value
    return Query(
        start=_instant(request, "from"),
        end=_instant(request, "to"),
        window_size=size,
        zone=zone,
        subjects=frozenset(subjects) if subjects else None,
        group_by=tuple(params.getall("groupBy", [])),
        filter_group_by=filters,
    )


def _seconds(instant: datetime | None) -> int | None:
    if instant is None:
        return None
    elapsed = instant - _EPOCH
    return elapsed.days * 86400 + elapsed.seconds


def _wants_csv(request: web.Request) -> bool:
    """Content negotiation between JSON (the default) and CSV, by the Accept header's q-values."""
    best, best_q = JSON_TYPE, -1.0
    for part in request.headers.get("Accept", "").split(","):
        media, *options = (item.strip() for item in part.split(";"))
        quality = 1.0
        for option in options:
            name, _, value = option.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        for candidate in (JSON_TYPE, CSV_TYPE):
            if media.lower() == candidate and quality > best_q:
                best, best_q = candidate, quality
    return best == CSV_TYPE


def _require_ready(view: MeterView) -> None:
    if not view.ready:
        raise ApiError(
            503,
            f"the totals of Meter {view.info.name!r} are still being loaded; try again shortly",
            headers={"Retry-After": "1"},
        )


def answer(store: MeterStore, query: Query) -> list[Row]:
    """The rows of ``query`` (already checked against the stored windows) from ``store``.

    From the coarsest of the store's levels whose UTC buckets fit inside the query's windows —
    ``roll_up`` with the level as the storage size refuses a level that does not fit (a bound
    inside a bucket, an hour split by a half-hour zone's day, a UTC day split by another zone's),
    and then the next finer one is tried — else from the stored windows. Every level gives the
    same rows; a coarser one merges fewer items. A query without ``windowSize`` and an open
    bound reports the first stored window's start, so it always reads the stored windows.
    """
    subjects = None if query.subjects is None else sorted(query.subjects)
    low, high = _seconds(query.start), _seconds(query.end)
    usable = query.window_size is not None or (low is not None and high is not None)
    finest = _RANK[query.window_size] if query.window_size is not None else len(_RANK)
    levels = [level for level in store.levels if _RANK[level] <= finest] if usable else []
    for level in reversed(levels):
        try:
            return roll_up(
                store.windows(subjects, low, high, level),
                aggregation=store.aggregation,
                storage_size=level,
                meter_groups=store.group_names,
                query=query,
            )
        except QueryError:
            continue
    return roll_up(
        store.windows(subjects, low, high),
        aggregation=store.aggregation,
        storage_size=store.window_size,
        meter_groups=store.group_names,
        query=query,
    )


_RANK = {WindowSize.MINUTE: 0, WindowSize.HOUR: 1, WindowSize.DAY: 2, WindowSize.MONTH: 3}


def routes(materializer: MeterViews) -> dict[str, Any]:
    """The handlers, by operation id."""

    async def list_meters(request: web.Request) -> web.Response:
        namespace = namespace_of(request)
        return _json([meter_object(view) for view in materializer.in_namespace(namespace)])

    async def get_meter(request: web.Request) -> web.Response:
        return _json(meter_object(_view(request, materializer)))

    async def query_meter(request: web.Request) -> web.Response:
        view = _view(request, materializer)
        query = parse_query(request)
        spec = view.info.spec
        try:
            check_query(query, storage_size=spec.window_size, meter_groups=spec.group_names)
            _require_ready(view)
            rows = answer(view.store, query)
        except QueryError as error:
            raise ApiError(400, f"{error}", extensions={"parameter": error.parameter}) from None
        if _wants_csv(request):
            body = rows_csv(rows, by_subject=query.by_subject, group_names=query.group_names)
            return web.Response(
                body=body,
                content_type=CSV_TYPE,
                charset="utf-8",
                headers={"Content-Disposition": f'attachment; filename="{view.info.name}.csv"'},
            )
        result: dict[str, Any] = {}
        if query.start is not None:
            result["from"] = query.start
        if query.end is not None:
            result["to"] = query.end
        if query.window_size is not None:
            result["windowSize"] = str(query.window_size)
        result["data"] = row_objects(rows)
        return _json(result)

    async def list_subjects(request: web.Request) -> web.Response:
        view = _view(request, materializer)
        start, end = _instant(request, "from"), _instant(request, "to")
        spec = view.info.spec
        try:  # the query's rules for the range: on stored-window boundaries, to after from
            check_query(
                Query(start=start, end=end),
                storage_size=spec.window_size,
                meter_groups=spec.group_names,
            )
        except QueryError as error:
            raise ApiError(400, f"{error}", extensions={"parameter": error.parameter}) from None
        _require_ready(view)
        return _json(view.store.subjects(_seconds(start), _seconds(end)))

    return {
        "listMeters": list_meters,
        "getMeter": get_meter,
        "queryMeter": query_meter,
        "listMeterSubjects": list_subjects,
    }
