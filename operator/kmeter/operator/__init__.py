"""The kmeter operator: Kopf handlers that turn Meters and Quotas into running metering.

Layout (the crate-operator way): :mod:`.main` only wires Kopf handlers to functions; each
other module is named for the resource and the action —

* :mod:`.meter_reconcile` — a Meter's topics, worker Deployment and status, level-based;
* :mod:`.meter_delete` — the finalizer: ``deletionPolicy`` Retain or Delete;
* :mod:`.meter_topics` and :mod:`.meter_worker` — the desired topics and Deployment (pure);
* :mod:`.quota_reconcile` — a Quota checked against its Meter, and the quota configuration
  the Meter's worker evaluates;
* :mod:`.conditions` — status conditions the kubebuilder way (pure);
* :mod:`.settings`, :mod:`.metrics`.

Every reconcile is idempotent and computes the whole desired state, so the create, update,
resume and periodic (drift-repair) paths are the same function.
"""
