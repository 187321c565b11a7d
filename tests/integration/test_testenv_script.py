"""scripts/testenv says clearly when it cannot help, and leaves nothing half-started."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testenv"


def run_testenv(*args: str, run_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        env={**os.environ, "KMETER_TESTENV_DIR": str(run_dir), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_env_exits_non_zero_and_says_how_to_start_when_nothing_is_up(tmp_path: Path) -> None:
    result = run_testenv("env", run_dir=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "scripts/testenv up" in result.stderr


@pytest.mark.usefixtures("testenv")
def test_up_refuses_a_port_in_use_by_naming_it_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        # Other ports are moved off the running environment's, so only ours clashes.
        result = run_testenv(
            "up",
            run_dir=tmp_path / "run",
            KMETER_TESTENV_KAFKA_PORT=str(busy),
            KMETER_TESTENV_KAFKA_CONTROLLER_PORT="29093",
            KMETER_TESTENV_KAFKA_SECURE_PORT="29094",
            KMETER_TESTENV_ETCD_PORT="22379",
            KMETER_TESTENV_ETCD_PEER_PORT="22380",
            KMETER_TESTENV_APISERVER_PORT="26443",
            KMETER_TESTENV_CM_PORT="26257",
        )
    assert result.returncode == 1
    assert f"{busy} (Kafka broker)" in result.stderr
    assert "KMETER_TESTENV_KAFKA_PORT" in result.stderr
    assert run_testenv("status", run_dir=tmp_path / "run").stdout.strip() == "not up"


@pytest.mark.usefixtures("testenv")
def test_up_refuses_a_port_in_the_ephemeral_range_and_says_why(tmp_path: Path) -> None:
    result = run_testenv("up", run_dir=tmp_path / "run", KMETER_TESTENV_KAFKA_PORT="40000")
    assert result.returncode == 1
    assert "40000 (Kafka broker), set by KMETER_TESTENV_KAFKA_PORT" in result.stderr
    assert "ephemeral range" in result.stderr
