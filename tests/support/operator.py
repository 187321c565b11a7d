"""Running kmeter's operator as a real process against the test environment.

The operator runs as ``kmeter operator`` in a subprocess, under a ServiceAccount identity bound
to the chart's ClusterRole (not as admin), with a short resync interval. Tests can stop it,
kill it and start it again, as a crash or a rollout would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.support.kube import Environment
from tests.support.processes import ManagedProcess

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kmeter"
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples" / "meters"
GROUP, VERSION = "kmeter.io", "v1alpha1"
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "") -> T:
    """Poll ``probe`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None and last is not False:
            return last
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kubectl(env: Environment, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(env.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": env.path},
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def install_crds(env: Environment) -> None:
    """Apply the generated CRDs (server-side, idempotent) and wait until they are served."""
    for path in sorted(CRDS.glob("*.yaml")):
        kubectl(env, "apply", "--server-side", "--force-conflicts", "-f", str(path))
    for path in sorted(CRDS.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        kubectl(env, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


def install_chart_rbac(
    env: Environment, release: str = "kmeter", values: Sequence[str] = ()
) -> str:
    """Apply the chart's operator ClusterRole as rendered by helm with ``values``
    (``--set`` arguments); returns its name."""
    rendered = subprocess.run(
        [
            "helm",
            "template",
            release,
            str(CHART),
            "--show-only",
            "templates/operator-rbac.yaml",
            # Required by the chart; the RBAC does not depend on it.
            "--set",
            "kafka.bootstrapServers=kafka:9092",
            *(argument for value in values for argument in ("--set", value)),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PATH": env.path},
    ).stdout
    role = next(doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "ClusterRole")
    kubectl(
        env, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(role)
    )
    name: str = role["metadata"]["name"]
    return name


class OperatorProcess(ManagedProcess):
    """``kmeter operator`` as a subprocess, with its log in a file."""

    def __init__(
        self,
        kubeconfig: Path,
        kafka_bootstrap: str,
        log_dir: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.kafka_bootstrap = kafka_bootstrap
        self.extra_env = dict(extra_env or {})
        self.log_path = log_dir / "operator.log"
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "KMETER_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "KMETER_RESYNC_SECONDS": "2",
            "KMETER_METRICS_PORT": str(self.metrics_port),
            "KMETER_HEALTH_PORT": str(self.health_port),
            "KMETER_IMAGE": "kmeter:test",
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "kmeter"), "operator"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        eventually(self.healthy, timeout=30, what="the operator's /healthz answers")

    def healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log_tail()}")
        try:
            return self.get("health", "/healthz")[0] == 200
        except OSError:
            return False

    def get(self, which: str, path: str) -> tuple[int, str]:
        port = self.health_port if which == "health" else self.metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()


class Resources:
    """Meters and Quotas in one namespace of the test cluster."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    def create(self, plural: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        kind = {"meters": "Meter", "quotas": "Quota"}[plural]
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        created: dict[str, Any] = self.objects.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, body
        )
        return created

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.objects.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def gone(self, plural: str, name: str) -> bool:
        return self.get(plural, name) is None

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, {"spec": spec}
        )

    def delete(self, plural: str, name: str) -> None:
        self.objects.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def condition(self, plural: str, name: str, type_: str) -> dict[str, Any] | None:
        found = self.get(plural, name)
        for condition in ((found or {}).get("status") or {}).get("conditions") or []:
            if condition["type"] == type_:
                return dict(condition)
        return None

    def ready(self, plural: str, name: str) -> dict[str, Any] | None:
        """The object once its Ready condition is True for its current generation."""
        found = self.get(plural, name)
        status = (found or {}).get("status") or {}
        if found and status.get("observedGeneration") == found["metadata"]["generation"]:
            for condition in status.get("conditions") or []:
                if condition["type"] == "Ready" and condition["status"] == "True":
                    return found
        return None

    def deployment(self, name: str) -> Any:
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
