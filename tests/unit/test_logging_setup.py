"""Every kmeter process's logging set-up: chatty libraries turned down, malformed requests quiet."""

from __future__ import annotations

import logging

from kmeter.logging_setup import configure_logging


def test_configure_logging_turns_the_named_libraries_down_and_quiets_malformed_requests() -> None:
    server, chatty = logging.getLogger("aiohttp.server"), logging.getLogger("kmeter.test.chatty")
    filters_before, level_before = list(server.filters), chatty.level
    try:
        server.filters[:] = []  # as in a fresh process
        configure_logging(logging.INFO, quieter=["kmeter.test.chatty"])
        assert chatty.level == logging.WARNING
        assert not chatty.isEnabledFor(logging.INFO)
        assert [type(kept).__name__ for kept in server.filters] == ["_MalformedRequestFilter"]
    finally:
        server.filters[:] = filters_before
        chatty.setLevel(level_before)
