"""Clients of kmeter's usage API, for the ``kmeter`` command line.

* :mod:`.usage_api` — the HTTP client (aiohttp): one session, a bearer token, and every failure
  turned into a :class:`~.usage_api.ClientError` whose message is one line a person reads;
* :mod:`.event_lines` — the pure part of ``kmeter events send``: a JSON Lines file cut into
  lines validated by the same codec as the API, and valid lines into batches;
* :mod:`.sender` — sending those batches: retries, splitting, and rejects mapped to line numbers.
"""

DEFAULT_URL = "http://127.0.0.1:8888"
"""Where ``kmeter api`` listens by default (``--port 8888``, OpenMeter's port)."""
