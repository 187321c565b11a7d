"""The Helm chart: lints, renders, refuses bad values, installs, upgrades and uninstalls cleanly.

Installs go into the real test cluster. With no kubelet, pods stay Pending; the operator is
instead run as a local process under a token of the ServiceAccount the chart created, so it
has exactly the chart's RBAC.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.support.kube import Environment
from tests.support.operator import EXAMPLES, OperatorProcess, Resources, eventually, kubectl

CHART = Path(__file__).resolve().parents[2] / "charts" / "kmeter"
RELEASE = "chart-e2e"
FULLNAME = f"{RELEASE}-kmeter"


def helm(testenv: Environment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": testenv.path, "KUBECONFIG": str(testenv.kubeconfig)}
    return subprocess.run(["helm", *args], env=env, capture_output=True, text=True, check=False)


def test_the_pinned_helm_is_the_one_on_the_path(testenv: Environment) -> None:
    result = helm(testenv, "version", "--short")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("v3.22.0")


def test_the_chart_passes_helm_lint(testenv: Environment) -> None:
    result = helm(testenv, "lint", "--strict", str(CHART), "--set", "kafka.bootstrapServers=k:9092")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_renders_restricted_pods_with_the_release_labels(testenv: Environment) -> None:
    result = helm(
        testenv, "template", "demo", str(CHART), "--namespace", "kmeter-system",
        "--set", "kafka.bootstrapServers=kafka:9092",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 2
        + ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"]
    )
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KMETER_KAFKA_BOOTSTRAP"] == "kafka:9092"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "kafka.bootstrapServers is required"),
        (["kafka.bootstrapServers=not an address"], "/kafka/bootstrapServers"),
        (["kafka.bootstrapServers=k:9092", "kafka.securityProtocol=TLS"], "must be one of"),
        (["kafka.bootstrapServers=k:9092", "operator.resyncSeconds=0"], "/operator/resyncSeconds"),
        (["kafka.bootstrapServers=k:9092", "operator.replicas=2"], "additional properties"),
        (
            ["kafka.bootstrapServers=k:9092", "kafka.securityProtocol=SASL_SSL"],
            "kafka.sasl.secret.name is required",
        ),
    ],
)
def test_bad_values_fail_the_install_with_a_message_that_names_them(
    testenv: Environment, values: list[str], message: str
) -> None:
    args = [arg for value in values for arg in ("--set", value)]
    result = helm(testenv, "install", "bad", str(CHART), "--dry-run=server", *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_api_server_accepts_the_chart_in_a_server_side_dry_run(testenv: Environment) -> None:
    result = helm(
        testenv, "install", "dry", str(CHART), "--namespace", "kmeter-dry-run",
        "--create-namespace", "--dry-run=server", "--set", "kafka.bootstrapServers=k:9092",
        # Other tests may have applied the CRDs with kubectl already; a user who did the same
        # adopts them into the release like this (docs/install.md).
        "--take-ownership",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STATUS: pending-install" in result.stdout


@pytest.fixture(scope="module")
def release(testenv: Environment, kafka_bootstrap: str) -> Iterator[str]:
    """The chart installed for real into a namespace of its own; uninstalled afterwards."""
    namespace = f"kmeter-{uuid.uuid4().hex[:6]}"
    result = helm(
        testenv, "install", RELEASE, str(CHART), "--namespace", namespace, "--create-namespace",
        "--set", f"kafka.bootstrapServers={kafka_bootstrap}", "--take-ownership", "--wait=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    yield namespace
    helm(testenv, "uninstall", RELEASE, "--namespace", namespace)


def service_account_kubeconfig(testenv: Environment, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig holding a token of ServiceAccount ``namespace/name`` (TokenRequest)."""
    core = client.CoreV1Api(testenv.api_client())
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = json.loads(testenv.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": name, "user": {"token": token}}],
                "contexts": [{"name": name, "context": {"cluster": cluster["name"], "user": name}}],
                "current-context": name,
            }
        )
    )
    return path


def test_an_installed_chart_runs_an_operator_that_makes_an_example_meter_ready(
    release: str,
    testenv: Environment,
    kafka_bootstrap: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    apps = client.AppsV1Api(testenv.api_client())
    deployment = apps.read_namespaced_deployment(f"{FULLNAME}-operator", release)
    assert deployment.spec.strategy.type == "Recreate"
    kubeconfig = service_account_kubeconfig(
        testenv, release, f"{FULLNAME}-operator", tmp_path / "operator.kubeconfig"
    )
    operator = OperatorProcess(kubeconfig, kafka_bootstrap, tmp_path)
    operator.start()
    try:
        kubectl(testenv, "apply", "-n", namespace, "-f", str(EXAMPLES / "llm-tokens.yaml"))
        resources = Resources(testenv.api_client(), namespace)
        eventually(partial(resources.ready, "meters", "llm-tokens"), timeout=60, what="Ready")
    finally:
        operator.stop()
    refused = [line for line in operator.log_tail(400).splitlines() if "is forbidden: User" in line]
    assert refused == []


def test_helm_upgrade_applies_a_changed_value(
    release: str, testenv: Environment, kafka_bootstrap: str
) -> None:
    result = helm(
        testenv, "upgrade", RELEASE, str(CHART), "--namespace", release,
        "--set", f"kafka.bootstrapServers={kafka_bootstrap}", "--set", "operator.resyncSeconds=7",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    apps = client.AppsV1Api(testenv.api_client())
    [container] = apps.read_namespaced_deployment(
        f"{FULLNAME}-operator", release
    ).spec.template.spec.containers
    env = {e.name: e.value for e in container.env}
    assert env["KMETER_RESYNC_SECONDS"] == "7"


def test_helm_uninstall_leaves_only_the_crds(release: str, testenv: Environment) -> None:
    result = helm(testenv, "uninstall", RELEASE, "--namespace", release, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    api = testenv.api_client()
    rbac = client.RbacAuthorizationV1Api(api)
    for read in (
        partial(client.AppsV1Api(api).read_namespaced_deployment, f"{FULLNAME}-operator", release),
        partial(
            client.CoreV1Api(api).read_namespaced_service_account, f"{FULLNAME}-operator", release
        ),
        partial(rbac.read_cluster_role, f"{FULLNAME}-operator"),
        partial(rbac.read_cluster_role_binding, f"{FULLNAME}-operator"),
    ):
        with pytest.raises(ApiException) as gone:
            read()
        assert gone.value.status == 404
    extensions = client.ApiextensionsV1Api(api)
    for crd in ("meters.kmeter.io", "quotas.kmeter.io"):
        assert extensions.read_custom_resource_definition(crd).metadata.name == crd
