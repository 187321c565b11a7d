"""The Helm chart: lints, renders, refuses bad values, installs, upgrades and uninstalls cleanly.

Installs go into the real test cluster. With no kubelet, pods stay Pending; the operator and
the usage API are instead run as local processes under tokens of the ServiceAccounts the chart
created, so they have exactly the chart's RBAC.

The Prometheus Operator's monitors (``metrics.podMonitor.enabled``) need its CRDs. The
server-side dry run applies a minimal stand-in of the ``podmonitors`` CRD
(:func:`monitoring_crd`, no field schema), so the API server checks the objects' kinds,
metadata and namespaces, not their fields; the fields are checked by rendering
(:func:`test_the_dashboard_and_monitors_use_only_metrics_the_processes_export`). kubeconform
was not used for them: it would need the CRDs' JSON schemas, which are not vendored here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.support.api import ApiProcess, create_meter_topics
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


def render(testenv: Environment, *values: str) -> list[dict[str, Any]]:
    args = [
        arg for value in ("kafka.bootstrapServers=kafka:9092", *values) for arg in ("--set", value)
    ]
    result = helm(testenv, "template", "demo", str(CHART), "--namespace", "kmeter-system", *args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def the(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def test_the_chart_renders_restricted_pods_with_the_release_labels(testenv: Environment) -> None:
    documents = render(testenv)
    for document in documents:
        if document["kind"] != "CustomResourceDefinition":
            labels = document["metadata"]["labels"]
            assert labels["app.kubernetes.io/instance"] == "demo", document["metadata"]["name"]
            assert labels["app.kubernetes.io/name"] == "kmeter"
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
    deployments = [d for d in documents if d["kind"] == "Deployment"]
    assert {"demo-kmeter-operator", "demo-kmeter-api"} <= {
        d["metadata"]["name"] for d in deployments
    }
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            assert container["securityContext"] == RESTRICTED, deployment["metadata"]["name"]
            assert container["resources"]["requests"]
    operator = the(documents, "Deployment", "demo-kmeter-operator")
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    assert operator["spec"]["replicas"] == 1
    [container] = operator["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KMETER_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_the_usage_api_is_a_deployment_behind_a_service_with_probes_on_its_health_endpoints(
    testenv: Environment,
) -> None:
    documents = render(testenv)
    api = the(documents, "Deployment", "demo-kmeter-api")
    assert api["spec"]["replicas"] == 2
    pod = api["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-kmeter-api"
    [container] = pod["containers"]
    assert container["args"][0] == "api"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {e["name"]: e.get("value") for e in container["env"]}["KMETER_KAFKA_BOOTSTRAP"] == (
        "kafka:9092"
    )
    service = the(documents, "Service", "demo-kmeter-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8888, "targetPort": "http", "protocol": "TCP"}
    ]
    role = the(documents, "ClusterRole", "demo-kmeter-api")
    assert all(rule["verbs"] == ["list"] for rule in role["rules"])
    budget = the(documents, "PodDisruptionBudget", "demo-kmeter-api")
    assert budget["spec"]["selector"] == api["spec"]["selector"]
    assert budget["spec"]["minAvailable"] == 1
    assert not [
        d
        for d in render(testenv, "api.replicas=1")
        if d["metadata"]["name"] == "demo-kmeter-api" and d["kind"] == "PodDisruptionBudget"
    ]
    assert not [d for d in documents if d["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert not [d for d in documents if d["metadata"]["name"] == "demo-kmeter-dashboard"]


def test_kafka_tls_and_sasl_secrets_reach_the_usage_api(testenv: Environment) -> None:
    documents = render(
        testenv, "kafka.securityProtocol=SASL_SSL", "kafka.sasl.secret.name=kafka-user",
        "kafka.tls.caSecret.name=kafka-ca", "kafka.sasl.tenantSecret.name=kafka-tenants",
    )  # fmt: skip
    pod = the(documents, "Deployment", "demo-kmeter-api")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KMETER_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["KMETER_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-user",
        "key": "password",
    }
    assert {"name": "kafka-ca", "secret": {"secretName": "kafka-ca"}} in pod["volumes"]
    assert env["KMETER_KAFKA_CA_FILE"]["value"] == "/etc/kmeter/kafka-ca/ca.crt"


def test_tenant_credentials_reach_the_operator_and_sidecars_learn_how_to_connect(
    testenv: Environment,
) -> None:
    documents = render(
        testenv, "kafka.securityProtocol=SASL_SSL", "kafka.sasl.secret.name=kafka-admin",
        "kafka.sasl.tenantSecret.name=kafka-tenants", "kafka.sasl.mechanism=PLAIN",
    )  # fmt: skip
    operator = the(documents, "Deployment", "demo-kmeter-operator")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in operator["containers"][0]["env"]}
    assert env["KMETER_KAFKA_TENANT_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-tenants",
        "key": "password",
    }
    injector = the(documents, "Deployment", "demo-kmeter-injector")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in injector["containers"][0]["env"]}
    assert (env["KMETER_KAFKA_SECURITY_PROTOCOL"], env["KMETER_KAFKA_SASL_MECHANISM"]) == (
        "SASL_SSL",
        "PLAIN",
    )
    # The operator may write the tenant Secrets; on PLAINTEXT it gets no Secret rights at all.
    role = the(documents, "ClusterRole", "demo-kmeter-operator")
    secrets = [rule for rule in role["rules"] if "secrets" in rule["resources"]]
    assert secrets == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["kmeter-kafka"],
            "verbs": ["create", "patch"],
        }
    ]
    plain = the(render(testenv), "ClusterRole", "demo-kmeter-operator")
    assert not [rule for rule in plain["rules"] if "secrets" in rule["resources"]]


def test_sasl_without_tenant_credentials_fails_the_install_saying_why(testenv: Environment) -> None:
    result = helm(
        testenv, "template", "demo", str(CHART), "--set", "kafka.bootstrapServers=kafka:9092",
        "--set", "kafka.securityProtocol=SASL_SSL", "--set", "kafka.sasl.secret.name=kafka-admin",
    )  # fmt: skip
    assert result.returncode != 0
    assert "kafka.sasl.tenantSecret.name is required with a SASL_* securityProtocol" in (
        result.stderr
    )


def exported_metric_names() -> set[str]:
    """Every series name the processes export (counters with _total, histograms' parts)."""
    from prometheus_client import REGISTRY  # noqa: PLC0415

    from kmeter.api import metrics as api_metrics  # noqa: PLC0415 - registers on import
    from kmeter.worker.metrics import WorkerMetrics  # noqa: PLC0415
    from kmeter_sidecar.metrics import Metrics  # noqa: PLC0415

    assert api_metrics.READY is not None
    names: set[str] = set()
    for registry in (REGISTRY, WorkerMetrics().registry, Metrics().registry):
        for family in registry.collect():
            names |= {sample.name for sample in family.samples} | {family.name}
            if family.type == "counter":
                names.add(f"{family.name}_total")
    return names


def test_the_dashboard_and_monitors_use_only_metrics_the_processes_export(
    testenv: Environment,
) -> None:
    documents = render(testenv, "metrics.podMonitor.enabled=true", "grafana.dashboard.enabled=true")
    dashboard_map = the(documents, "ConfigMap", "demo-kmeter-dashboard")
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["kmeter.json"])
    expressions = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if "expr" in target
    ]
    used = {name for expr in expressions for name in re.findall(r"\bkmeter_\w+", expr)}
    assert used, expressions
    assert used <= exported_metric_names()
    titles = " | ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("per meter", "per subject", "lag", "dead letters", "429"):
        assert topic in titles
    monitors = {
        (d["kind"], d["metadata"]["name"]) for d in documents if "monitoring" in d["apiVersion"]
    }
    assert monitors == {
        ("PodMonitor", "demo-kmeter-api"),
        ("PodMonitor", "demo-kmeter-operator"),
        ("PodMonitor", "demo-kmeter-workers"),
        ("PodMonitor", "demo-kmeter-sidecars"),
    }


def test_the_monitors_select_the_ports_and_labels_the_pods_really_have(
    testenv: Environment,
) -> None:
    from kmeter.injector.patch import ADMIN_PORT_NAME  # noqa: PLC0415
    from kmeter.operator import meter_worker  # noqa: PLC0415
    from kmeter.operator.settings import OperatorSettings  # noqa: PLC0415

    documents = render(testenv, "metrics.podMonitor.enabled=true")
    api_pod = the(documents, "Deployment", "demo-kmeter-api")["spec"]["template"]
    api_monitor = the(documents, "PodMonitor", "demo-kmeter-api")["spec"]
    assert api_monitor["selector"]["matchLabels"].items() <= api_pod["metadata"]["labels"].items()
    [api_endpoint] = api_monitor["podMetricsEndpoints"]
    [api_container] = api_pod["spec"]["containers"]
    [metrics_port] = [p for p in api_container["ports"] if p["name"] == api_endpoint["port"]]
    assert f"--metrics-port={metrics_port['containerPort']}" in api_container["args"]
    assert api_pod["metadata"]["annotations"]["prometheus.io/port"] == str(
        metrics_port["containerPort"]
    )
    # the Service, which tenants reach, does not carry the metrics (every tenant's labels)
    service = the(documents, "Service", "demo-kmeter-api")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    operator_pod = the(documents, "Deployment", "demo-kmeter-operator")["spec"]["template"]
    operator_monitor = the(documents, "PodMonitor", "demo-kmeter-operator")["spec"]
    assert operator_monitor["selector"]["matchLabels"].items() <= (
        operator_pod["metadata"]["labels"].items()
    )
    [operator_endpoint] = operator_monitor["podMetricsEndpoints"]
    assert operator_endpoint["port"] in {
        p["name"] for p in operator_pod["spec"]["containers"][0]["ports"]
    }
    settings = OperatorSettings.from_environment({"KMETER_KAFKA_BOOTSTRAP": "k:9092"})
    meter = {"apiVersion": "kmeter.io/v1alpha1", "kind": "Meter",
             "metadata": {"name": "llm-tokens", "namespace": "team-a", "uid": "u"}}  # fmt: skip
    worker_pod = meter_worker.worker_deployment(meter, {"workers": {}}, settings)["spec"][
        "template"
    ]
    worker_monitor = the(documents, "PodMonitor", "demo-kmeter-workers")["spec"]
    assert worker_monitor["namespaceSelector"] == {"any": True}
    assert worker_monitor["selector"]["matchLabels"].items() <= (
        worker_pod["metadata"]["labels"].items()
    )
    [worker_endpoint] = worker_monitor["podMetricsEndpoints"]
    assert worker_endpoint["port"] in {
        p["name"] for p in worker_pod["spec"]["containers"][0]["ports"]
    }
    [relabel] = worker_endpoint["relabelings"]
    label = relabel["sourceLabels"][0].removeprefix("__meta_kubernetes_pod_label_")
    assert label == re.sub(r"[^a-z0-9_]", "_", "kmeter.io/meter")
    assert worker_pod["metadata"]["labels"]["kmeter.io/meter"] == "llm-tokens"
    sidecar_monitor = the(documents, "PodMonitor", "demo-kmeter-sidecars")["spec"]
    assert [e["port"] for e in sidecar_monitor["podMetricsEndpoints"]] == [ADMIN_PORT_NAME]


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
        (["kafka.bootstrapServers=k:9092", "api.replicas=-1"], "/api/replicas"),
        (["kafka.bootstrapServers=k:9092", "api.replicas=two"], "/api/replicas"),
        (["kafka.bootstrapServers=k:9092", "api.service.type=Internal"], "/api/service/type"),
        (["kafka.bootstrapServers=k:9092", "api.port=80"], "/api/port"),
        (
            ["kafka.bootstrapServers=k:9092", "metrics.podMonitor.interval=often"],
            "/metrics/podMonitor/interval",
        ),
        (
            ["kafka.bootstrapServers=k:9092", "grafana.dashboard.enable=true"],
            "additional properties",
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


def monitoring_crd(kind: str, plural: str) -> dict[str, Any]:
    """A minimal stand-in for the Prometheus Operator's CRD of ``kind``: it makes the API server
    accept the chart's monitors in a dry run, without checking their fields (the real CRDs'
    schemas are not vendored in this repository)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def monitoring_crds(testenv: Environment) -> Iterator[None]:
    extensions = client.ApiextensionsV1Api(testenv.api_client())
    crds = [monitoring_crd("PodMonitor", "podmonitors")]
    existing = {crd.metadata.name for crd in extensions.list_custom_resource_definition().items}
    for crd in crds:
        if crd["metadata"]["name"] not in existing:
            extensions.create_custom_resource_definition(crd)

    def established(name: str) -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for crd in crds:
        eventually(partial(established, crd["metadata"]["name"]), what="the CRD is established")
    yield
    for crd in crds:
        extensions.delete_custom_resource_definition(crd["metadata"]["name"])


def test_the_api_server_accepts_the_chart_with_every_option_on(
    testenv: Environment, monitoring_crds: None
) -> None:
    result = helm(
        testenv, "install", "dry-all", str(CHART), "--namespace", "kmeter-dry-run-all",
        "--create-namespace", "--dry-run=server", "--take-ownership",
        "--set", "kafka.bootstrapServers=k1:9092\\,k2:9092",
        "--set", "kafka.securityProtocol=SASL_SSL",
        "--set", "kafka.sasl.secret.name=kafka-user", "--set", "kafka.tls.caSecret.name=kafka-ca",
        "--set", "kafka.sasl.tenantSecret.name=kafka-tenants",
        "--set", "api.replicas=3", "--set", "api.service.type=LoadBalancer",
        "--set", "metrics.podMonitor.enabled=true",
        "--set", "metrics.podMonitor.labels.release=prom",
        "--set", "grafana.dashboard.enabled=true",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STATUS: pending-install" in result.stdout
    kinds = {
        d["kind"]
        for d in yaml.safe_load_all(result.stdout.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0])
        if d
    }
    assert {"PodMonitor", "ConfigMap", "Deployment", "Service"} <= kinds


@pytest.fixture(scope="module")
def release(testenv: Environment, kafka_bootstrap: str) -> Iterator[str]:
    """The chart installed for real into a namespace of its own; uninstalled afterwards."""
    namespace = f"kmeter-{uuid.uuid4().hex[:6]}"
    result = helm(
        testenv, "install", RELEASE, str(CHART), "--namespace", namespace, "--create-namespace",
        "--set", f"kafka.bootstrapServers={kafka_bootstrap}",
        "--set", "grafana.dashboard.enabled=true", "--take-ownership", "--wait=false",
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


def test_kmeter_api_under_the_charts_service_account_serves_meters_and_tokens_of_the_cluster(
    release: str, testenv: Environment, kafka_bootstrap: str, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = service_account_kubeconfig(
        testenv, release, f"{FULLNAME}-api", tmp_path / "api.kubeconfig"
    )
    core = client.CoreV1Api(testenv.api_client())
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "billing", "labels": {"kmeter.io/api-token": "true"}},
            "stringData": {"token": "chart-token"},
        },
    )
    kubectl(testenv, "apply", "-n", namespace, "-f", str(EXAMPLES / "llm-tokens.yaml"))
    create_meter_topics(kafka_bootstrap, namespace, "llm-tokens")
    api = ApiProcess(kafka_bootstrap, tmp_path, kubeconfig=kubeconfig)
    api.start()
    try:
        answer = eventually(
            lambda: (
                (a := api.call("GET", "/api/v1/meters", token="chart-token")).status == 200
                and a.json()
                and a
            ),
            what="the API lists the Meter with the Secret's token",
        )
        assert [(m["namespace"], m["name"]) for m in answer.json()] == [(namespace, "llm-tokens")]
    finally:
        api.stop()
    refused = [line for line in api.log_tail(400).splitlines() if "forbidden" in line.lower()]
    assert refused == []


def test_helm_upgrade_applies_a_changed_value(
    release: str, testenv: Environment, kafka_bootstrap: str
) -> None:
    result = helm(
        testenv, "upgrade", RELEASE, str(CHART), "--namespace", release,
        "--set", f"kafka.bootstrapServers={kafka_bootstrap}", "--set", "operator.resyncSeconds=7",
        "--set", "api.replicas=3", "--set", "grafana.dashboard.enabled=true",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    apps = client.AppsV1Api(testenv.api_client())
    [container] = apps.read_namespaced_deployment(
        f"{FULLNAME}-operator", release
    ).spec.template.spec.containers
    env = {e.name: e.value for e in container.env}
    assert env["KMETER_RESYNC_SECONDS"] == "7"
    assert apps.read_namespaced_deployment(f"{FULLNAME}-api", release).spec.replicas == 3


def release_objects(testenv: Environment, namespace: str) -> list[str]:
    """Every object labelled with the release, namespaced (in its namespace) or cluster-wide."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    namespaced = kubectl(
        testenv, "get", "-n", namespace, "-l", selector, "-o", "name",
        "deployments,services,serviceaccounts,configmaps,secrets,poddisruptionbudgets,roles,rolebindings",
    )  # fmt: skip
    cluster = kubectl(
        testenv, "get", "-l", selector, "-o", "name",
        "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,validatingwebhookconfigurations",
    )  # fmt: skip
    return (namespaced + cluster).split()


def test_helm_uninstall_leaves_only_the_crds(release: str, testenv: Environment) -> None:
    installed = release_objects(testenv, release)
    for name in (
        f"deployment.apps/{FULLNAME}-api",
        f"service/{FULLNAME}-api",
        f"serviceaccount/{FULLNAME}-api",
        f"configmap/{FULLNAME}-dashboard",
        f"clusterrole.rbac.authorization.k8s.io/{FULLNAME}-api",
        f"clusterrolebinding.rbac.authorization.k8s.io/{FULLNAME}-operator",
    ):
        assert name in installed
    result = helm(testenv, "uninstall", RELEASE, "--namespace", release, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert release_objects(testenv, release) == []
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
