"""The serving certificate: a TLS context that picks up a renewed certificate without a restart.

cert-manager (or Helm on upgrade) rewrites the mounted Secret's ``tls.crt`` and ``tls.key``;
the kubelet swaps the files atomically. :class:`ServingCertificate` checks their modification
times every ``interval`` seconds and loads the new pair into the *same* ``SSLContext``, which
applies to every later handshake. A half-written or mismatched pair (possible for a moment
when files are copied by hand) fails to load and is retried at the next check; the old
certificate keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from kmeter.injector import metrics

log = logging.getLogger("kmeter.injector")


class ServingCertificate:
    """A server ``SSLContext`` for ``cert_file``/``key_file``, reloaded when they change."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._mtimes()
        self.context.load_cert_chain(cert_file, key_file)

    def _mtimes(self) -> tuple[int, int]:
        return self.cert_file.stat().st_mtime_ns, self.key_file.stat().st_mtime_ns

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last load; True if reloaded."""
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return False
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            log.warning("serving certificate not reloaded (will retry): %s", error)
            return False
        self._stamp = stamp
        metrics.CERTIFICATE_RELOADS.inc()
        log.info("serving certificate reloaded from %s", self.cert_file)
        return True

    async def watch(self, interval: float = 10.0) -> None:
        """Reload on change, forever (run it as a task; cancel it to stop)."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
