"""kmeter: Kubernetes-native usage metering.

The package is layered (the layers are enforced by import-linter, see ``pyproject.toml``):

* ``kmeter.core`` — the pure core: window arithmetic, aggregation, dedup, quota decisions and
  event parsing. It performs no I/O and imports no network, Kafka or Kubernetes library, so it
  can be tested exhaustively and reused by every transport (Kafka in a cluster, the embedded
  log of ``kmeter dev``).
* the adapters and processes (operator, worker, usage API, injector, CLI) build on the core.

``kmeter_sidecar`` (a separate package in ``sidecar/``) may import only the light shared
contracts of this package, never Kopf or the Kubernetes client.
"""

__version__ = "0.1.0.dev0"
