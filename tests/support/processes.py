"""kmeter processes started by tests: each in its own process group, its log in a file."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a running process has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class ManagedProcess:
    """A subprocess the test stops (SIGTERM, or SIGKILL as a crash would) and whose log it reads."""

    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class Running:
    """Subprocesses to stop at the end of the test."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, command: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
        with log.open("wb") as output:
            process = subprocess.Popen(
                command, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(60)


def testenv_exports() -> dict[str, str]:
    """The variables ``scripts/testenv env`` exports, or {} when the environment is not up."""
    result = subprocess.run(
        [str(REPO / "scripts" / "testenv"), "env"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return {}
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            found[key] = shlex.split(value)[0] if value else ""
    return found
