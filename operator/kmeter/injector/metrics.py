"""The injector's Prometheus metrics (``/metrics``), prefix ``kmeter_injector_``.

* ``kmeter_injector_admissions_total{outcome}`` — Pod admissions answered, by outcome:
  ``injected``, ``not_requested``, ``already_injected``, ``excluded_namespace``, ``refused``
  (a bad annotation: admitted unchanged with a warning), ``ignored`` (not a Pod CREATE),
  ``error`` (an internal error: admitted unchanged), ``malformed`` (not an AdmissionReview);
* ``kmeter_injector_admission_seconds`` — time to answer one review;
* ``kmeter_injector_events_total{result}`` — Events about refusals: ``posted``, ``coalesced``
  (counted into an Event posted moments ago), ``failed``;
* ``kmeter_injector_certificate_reloads_total`` — the serving certificate re-read after a change.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ADMISSIONS = Counter(
    "kmeter_injector_admissions", "Pod admissions answered, by outcome.", ["outcome"]
)
ADMISSION_SECONDS = Histogram(
    "kmeter_injector_admission_seconds",
    "Time to answer one AdmissionReview.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
EVENTS = Counter("kmeter_injector_events", "Events about refused injections.", ["result"])
CERTIFICATE_RELOADS = Counter(
    "kmeter_injector_certificate_reloads", "The serving certificate re-read after a change."
)
