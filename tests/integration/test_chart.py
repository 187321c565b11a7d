"""The Helm chart lints, renders, and is accepted by the real API server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.kube import Environment

CHART = Path(__file__).resolve().parents[2] / "charts" / "kmeter"


def helm(testenv: Environment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": testenv.path, "KUBECONFIG": str(testenv.kubeconfig)}
    return subprocess.run(["helm", *args], env=env, capture_output=True, text=True, check=False)


def test_the_pinned_helm_is_the_one_on_the_path(testenv: Environment) -> None:
    result = helm(testenv, "version", "--short")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v3.")


def test_the_chart_passes_helm_lint(testenv: Environment) -> None:
    result = helm(testenv, "lint", "--strict", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_renders_with_the_release_labels(testenv: Environment) -> None:
    result = helm(testenv, "template", "demo", str(CHART), "--namespace", "kmeter-system")
    assert result.returncode == 0, result.stderr
    assert "app.kubernetes.io/instance: demo" in result.stdout


def test_the_api_server_accepts_the_chart_in_a_server_side_dry_run(testenv: Environment) -> None:
    result = helm(
        testenv,
        "install",
        "dry",
        str(CHART),
        "--namespace",
        "kmeter-dry-run",
        "--create-namespace",
        "--dry-run=server",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STATUS: pending-install" in result.stdout
