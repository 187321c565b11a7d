"""kmeter-sidecar: the metering proxy injected into annotated pods.

It imports only the light, shared contracts of ``kmeter`` (event codec, topic names, quota
decision format) and never Kopf or the Kubernetes client, so the image stays small and the
request path stays fast. import-linter enforces this (see ``pyproject.toml``).
"""

__version__ = "0.1.0.dev0"
