"""Faults injected into the real test environment: Kafka stopped, killed, started again."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testenv"


@dataclass(frozen=True)
class KafkaBroker:
    """The test broker, to stop and start again in fault tests. Its data survives."""

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with ``kill``) and wait until it is gone."""
        self._testenv("stop", "kafka", *(["--kill"] if kill else []))

    def start(self) -> None:
        """Start the broker again on its data and wait until it answers."""
        self._testenv("start", "kafka")

    @staticmethod
    def _testenv(*args: str) -> None:
        result = subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"scripts/testenv {' '.join(args)} failed: {result.stderr}")
