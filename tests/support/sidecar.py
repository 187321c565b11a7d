"""kmeter-sidecar as a real process for tests: started, asked over its admin port, stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.operator import free_port

REPO = Path(__file__).resolve().parents[2]
SIDECAR = REPO / ".venv" / "bin" / "kmeter-sidecar"


@dataclass
class SidecarProcess:
    """A running ``kmeter-sidecar``; its output goes to ``log``."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    namespace: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def admin(self, path: str) -> tuple[int, str]:
        """(status, body) of ``GET path`` on the admin port."""
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.decode().partition("\r\n\r\n")
        return int(head.split(" ", 2)[1]), body

    def metric(self, series: str) -> float:
        """The value of one series, such as ``kmeter_sidecar_kafka_up`` or
        ``kmeter_sidecar_requests_refused_total{reason="quota"}``."""
        for line in self.admin("/metrics")[1].splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {series}")

    def accepts_connections(self) -> bool:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        return False

    def wait_ready(self, timeout: float = 30) -> None:
        """Until ``/readyz`` is 200 (the decisions are loaded or given up on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the sidecar exited: {self.output()}")
            with contextlib.suppress(OSError):
                if self.admin("/readyz")[0] == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"the sidecar did not become ready: {self.output()}")

    def terminate(self) -> int:
        """SIGTERM, and the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def launch_sidecar(
    bootstrap: str,
    upstream_port: int,
    directory: Path,
    namespace: str,
    *args: str,
    env: dict[str, str] | None = None,
) -> SidecarProcess:
    """Start ``kmeter-sidecar`` in front of ``127.0.0.1:upstream_port`` (it is not ready yet)."""
    port, admin_port = free_port(), free_port()
    log = directory / f"sidecar-{port}.log"
    command = [
        str(SIDECAR),
        "--port", str(port),
        "--listen-host", "127.0.0.1",
        "--upstream", f"127.0.0.1:{upstream_port}",
        "--admin-port", str(admin_port),
        "--admin-host", "127.0.0.1",
        "--kafka-bootstrap", bootstrap,
        "--namespace", namespace,
        "--pod-name", "pod-1",
        "--spool-dir", str(directory / f"spool-{port}"),
        *args,
    ]  # fmt: skip
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    return SidecarProcess(process, port, admin_port, namespace, log)
