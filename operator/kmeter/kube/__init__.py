"""A thin asynchronous client for the Kubernetes API, over aiohttp.

Kopf watches and patches the resources it handles; what the operator does beyond that —
server-side apply of worker Deployments and ConfigMaps, reading Meters for Quotas — goes
through :mod:`kmeter.kube.client`. It is a few verbs over raw JSON, not a model library:
the official client's thousand generated classes cost ~50 MB of RSS, and the operator's
memory goal is well under that (see docs/benchmarks.md). Credentials are the ones Kopf's
login handler produced, so both speak as the same identity.
"""
