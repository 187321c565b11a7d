"""A Quota checked against its Meter, and turned into the worker's quota configuration.

A Quota names a Meter of its own namespace (``spec.meterRef.name``; there is no namespace field,
so a Quota can never reach another tenant's Meter). It is valid when the Meter exists and
aggregates something a limit makes sense for: a total (``SUM``, ``COUNT``, ``UNIQUE_COUNT``) or a
level (``MAX``, ``LATEST``). ``AVG`` and ``MIN`` are refused — an average or a minimum over a
period is not a consumption that can run out.

Conditions: ``MeterFound`` (reasons ``MeterFound``, ``MeterNotFound``,
``AggregationNotLimitable``, ``UnknownTimeZone`` — the API server checks only the form of
``period.timeZone``, not that the zone exists — and ``UnknownGroupByKey`` — a ``filterGroupBy``
key the Meter does not group by) and ``Ready``. A Quota whose Meter is missing retries with backoff
and is re-checked on every resync tick, so it recovers by itself when the Meter appears.

Valid Quotas reach the Meter's worker in its quota ConfigMap (see :mod:`.meter_worker`); the
entry for a Quota is :func:`quota_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kmeter.core.windows import time_zone
from kmeter.operator.conditions import Condition

METER_FOUND = "MeterFound"
LIMITABLE = frozenset({"SUM", "COUNT", "UNIQUE_COUNT", "MAX", "LATEST"})


def meter_ref(quota_spec: Mapping[str, Any]) -> str:
    return str((quota_spec.get("meterRef") or {}).get("name", ""))


def check_quota(
    namespace: str, quota_spec: Mapping[str, Any], meter_spec: Mapping[str, Any] | None
) -> Condition:
    """Whether the Quota can be enforced on its Meter, as the ``MeterFound`` condition."""
    meter = meter_ref(quota_spec)
    if meter_spec is None:
        return Condition(
            METER_FOUND,
            "False",
            "MeterNotFound",
            f"Meter {namespace}/{meter} does not exist (a Quota refers to a Meter of its own "
            "namespace); the Quota takes effect when it is created.",
        )
    aggregation = str(meter_spec.get("aggregation", ""))
    if aggregation not in LIMITABLE:
        return Condition(
            METER_FOUND,
            "False",
            "AggregationNotLimitable",
            f"Meter {namespace}/{meter} aggregates with {aggregation}; a limit needs a total "
            f"or a level: one of {', '.join(sorted(LIMITABLE))}.",
        )
    zone = str((quota_spec.get("period") or {}).get("timeZone", "UTC"))
    try:
        time_zone(zone)
    except ValueError as error:
        return Condition(METER_FOUND, "False", "UnknownTimeZone", f"spec.period.timeZone: {error}")
    unknown = sorted(
        set(quota_spec.get("filterGroupBy") or {}) - set(meter_spec.get("groupBy") or {})
    )
    if unknown:
        return Condition(
            METER_FOUND,
            "False",
            "UnknownGroupByKey",
            f"spec.filterGroupBy: Meter {namespace}/{meter} does not group by "
            f"{', '.join(unknown)} (it groups by: "
            f"{', '.join(sorted(meter_spec.get('groupBy') or {})) or 'nothing'}).",
        )
    return Condition(
        METER_FOUND, "True", "MeterFound", f"Enforced on Meter {namespace}/{meter} ({aggregation})."
    )


def quota_config(
    name: str, generation: int, spec: Mapping[str, Any], uid: str | None = None
) -> dict[str, Any]:
    """The entry of one Quota in its Meter's quota ConfigMap: the spec the worker evaluates
    (and the uid, for the Events the worker posts on the Quota)."""
    entry = {"name": name, "generation": generation, "spec": dict(spec)}
    if uid:
        entry["uid"] = uid
    return entry
