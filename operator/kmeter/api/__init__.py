"""The usage API (``kmeter api``): OpenMeter-compatible ingest and query over Kafka.

Modules, one concept each:

| module | what |
|---|---|
| :mod:`.app` | settings, wiring of the aiohttp application, start and stop |
| :mod:`.auth` | bearer tokens → namespaces (Kubernetes Secrets or a file) |
| :mod:`.meters` | where Meters come from: the Kubernetes API or a folder of manifests |
| :mod:`.ingest` | ``POST /api/v1/events`` → the namespace's ingest topic, 204 once durable |
| :mod:`.store` | window totals of one Meter in memory, indexed for queries |
| :mod:`.materializer` | Kafka output topics → stores, readiness |
| :mod:`.query` | meters, query and subjects endpoints |
| :mod:`.encoding` | exact JSON (Decimals as number text) and CSV |
| :mod:`.errors` | ``application/problem+json`` answers |
| :mod:`.openapi` | the OpenAPI 3.1 document (``/openapi.json``, ``docs/openapi.json``) |
| :mod:`.metrics` | Prometheus metrics ``kmeter_api_*`` |

The user documentation is ``docs/api.md``.
"""
