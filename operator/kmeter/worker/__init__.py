"""The aggregation worker (``kmeter worker``): a Meter's events from Kafka, folded exactly-once.

A thin I/O shell around the pure core (:mod:`kmeter.core.fold`, :mod:`kmeter.core.dedup`,
:mod:`kmeter.core.events`). One module per concept:

* :mod:`.settings` — the worker's configuration from its environment;
* :mod:`.records` — what the worker reads and writes, as bytes: ingest records decoded into
  events, the dedup changelog, dead letters, the transactional id (pure);
* :mod:`.partition` — the state of one ingest partition and the work of one batch (pure);
* :mod:`.restore` — rebuilding a partition's state from its output and dedup partitions;
* :mod:`.runner` — the consumer loop, one transaction per partition and batch, rebalances,
  fencing and shutdown;
* :mod:`.metrics` and :mod:`.health` — ``/metrics``, ``/healthz`` and ``/readyz``.

Why it is exact, and the tests that prove it: ``docs/guarantees.md``; how it runs:
the module docstrings here.
"""
