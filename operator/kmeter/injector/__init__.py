"""The sidecar injector (``kmeter injector``): a mutating admission webhook on Pod CREATE.

A pod whose template says ``kmeter.io/inject: "true"`` gets the metering sidecar
(``kmeter-sidecar``), configured from the pod's ``kmeter.io/*`` annotations. Modules, one
concept each:

| module | what |
|---|---|
| :mod:`.settings` | the injector's environment: sidecar defaults, server, TLS files |
| :mod:`.annotations` | ``kmeter.io/*`` annotations → the sidecar's settings, or a refusal (pure) |
| :mod:`.patch` | a Pod → the JSONPatch that adds the sidecar, a skip, or a refusal (pure) |
| :mod:`.review` | AdmissionReview in → AdmissionReview out, never refusing a pod (pure) |
| :mod:`.events` | Kubernetes Events saying why a pod was not injected |
| :mod:`.certificates` | the serving certificate, reloaded when renewed |
| :mod:`.metrics` | Prometheus metrics ``kmeter_injector_*`` |
| :mod:`.server` | the aiohttp HTTPS server: ``/mutate``, ``/healthz``, ``/readyz``, ``/metrics`` |

The user documentation is the "Injection" section of ``docs/sidecar.md``.
"""
