"""``kmeter dev``: the whole pipeline in one process on one machine — no cluster, no Kafka.

Same core code, another transport: the worker's decoding, fold and quota evaluation, the
sidecar's proxy and the usage API's application run as they do in a cluster; Kafka's topics are
replaced by embedded local logs. One module per concept:

| module | what |
|---|---|
| :mod:`.log` | the embedded, durable, append-only log: segments, CRC framing, crash recovery |
| :mod:`.transport` | group commit into a log from asyncio; the API's and the proxy's sinks |
| :mod:`.manifests` | Meters and Quotas from YAML, checked as the API server and operator do |
| :mod:`.pipeline` | the log folded by the worker's core into the stores the API queries |
| :mod:`.quotas` | quota evaluation after each batch, decisions into the proxy's quota table |
| :mod:`.local` | the logs of each namespace, loading (replay) and reloading the manifests |
| :mod:`.runner` | the command: options, start-up in order, printing, shutdown |

The user documentation is ``docs/dev.md``.
"""
