"""The pure core of kmeter: computation without I/O.

Everything here is a function of its inputs: no sockets, no files, no clocks read behind the
caller's back, no asyncio. Callers (the worker, the usage API, ``kmeter dev``) bring the data
and the current time; the core folds, decides and answers. This is what makes the numbers
customers are billed by testable against a plain oracle with hypothesis.

Modules (each one concept; their docstrings explain the design and its caveats, and
``docs/core.md`` is the user-facing summary):

* :mod:`kmeter.core.events` — the event contract: CloudEvents 1.0 JSON, validation with reasons
  a person reads, one codec (single and batch) for every component.
* :mod:`kmeter.core.exactjson` — JSON decoding at orjson speed that keeps every number exact.
* :mod:`kmeter.core.decimals` — the Decimal context, the accepted range of usage values, and
  conversions; values are never binary floats.
* :mod:`kmeter.core.jsonpath` — the JSONPath subset of ``valueProperty`` and ``groupBy`` and the
  conversion of the values it selects.
* :mod:`kmeter.core.windows` — UTC storage windows and query windows in any IANA time zone
  (half-hour and 45-minute offsets, DST days of 23 and 25 hours), and when a roll-up is exact.
* :mod:`kmeter.core.aggregation` — SUM, COUNT, UNIQUE_COUNT, AVG, MIN, MAX, LATEST as mergeable
  states with a JSON form.
* :mod:`kmeter.core.dedup` — deduplication by (source, id) within a horizon, in bounded memory.
* :mod:`kmeter.core.fold` — the worker's pure function: (window state, events) → (changes,
  output records, rejects).
* :mod:`kmeter.core.durations` — ISO 8601 durations of exact units (Meter retention).
"""
