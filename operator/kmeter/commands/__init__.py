"""The ``kmeter`` commands that are clients of the usage API: ``usage``, ``events send``,
``meters``, ``quotas`` (docs/cli.md).

Each module holds one command (or group) and its options; :mod:`.render` turns the API's answers
into tables; :mod:`.common` holds the shared options and the one-line error handling. The HTTP
client is :mod:`kmeter.client`. Heavy imports (aiohttp, rich) happen when a command runs, so
``kmeter --help`` and the other commands stay light.
"""
