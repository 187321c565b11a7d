"""End to end: the injector as a real webhook of the real API server.

``kmeter injector`` runs as two local HTTPS processes (a test CA; a TCP front stands in for the
Service that spreads the API server's connections over the replicas). The chart's own
MutatingWebhookConfiguration is registered — rules, ``failurePolicy``, ``namespaceSelector``,
``matchConditions`` as rendered by helm — with ``clientConfig.url`` pointing at the front
instead of the in-cluster Service. The injectors post Events under exactly the chart's
injector ClusterRole. The controller-manager turns Deployments into ReplicaSets into Pods;
with no kubelet the pods stay Pending, which is all these tests need: the stored pod is what
admission made of it.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes import client
from tests.support.injector import (
    Certificates,
    InjectorProcess,
    ServiceFront,
    make_certificates,
)
from tests.support.kube import Environment, KubeUsers
from tests.support.operator import CHART, OperatorProcess, eventually, free_port, kubectl

RELEASE_NAMESPACE = "kmeter-e2e-injector"
SIDECAR = "kmeter-sidecar"


def helm_template(testenv: Environment, template: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [
            "helm", "template", "kmeter", str(CHART), "--namespace", RELEASE_NAMESPACE,
            "--show-only", f"templates/{template}", "--set", "kafka.bootstrapServers=k:9092",
        ],
        capture_output=True, text=True, check=True, env={**os.environ, "PATH": testenv.path},
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def apply(testenv: Environment, document: dict[str, Any]) -> None:
    kubectl(
        testenv, "apply", "--server-side", "--force-conflicts", "-f", "-",
        stdin=yaml.safe_dump(document),
    )  # fmt: skip


@dataclass
class Webhook:
    """The registered webhook and the injector replicas behind it."""

    name: str
    injectors: list[InjectorProcess]
    front: ServiceFront
    api: client.ApiClient

    def counted(self, outcome: str) -> float:
        return sum(
            injector.metric("kmeter_injector_admissions_total", outcome=outcome)
            for injector in self.injectors
            if injector.process is not None and injector.process.poll() is None
        )


@pytest.fixture(scope="module")
def webhook(
    testenv: Environment, kube_users: KubeUsers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Webhook]:
    folder = tmp_path_factory.mktemp("injector")
    certificates = make_certificates(folder / "tls")
    [role] = [d for d in helm_template(testenv, "injector-rbac.yaml") if d["kind"] == "ClusterRole"]
    apply(testenv, role)
    kubeconfig = kube_users.kubeconfig_for("ClusterRole", role["metadata"]["name"])
    injectors = [
        InjectorProcess(certificates, folder, kubeconfig=kubeconfig, name=f"injector-{i}")
        for i in range(2)
    ]
    front = ServiceFront(injectors)
    api = testenv.api_client()
    registrations = client.AdmissionregistrationV1Api(api)
    # Sorted first, so a test's own later webhook can re-invoke it.
    name = f"a-kmeter-e2e-{uuid.uuid4().hex[:6]}"
    try:
        for injector in injectors:
            injector.start()
        front.start()
        [configuration] = [
            d
            for d in helm_template(testenv, "injector-webhook.yaml")
            if d["kind"] == "MutatingWebhookConfiguration"
        ]
        configuration["metadata"]["name"] = name
        [entry] = configuration["webhooks"]
        entry["clientConfig"] = {
            "url": front.url + "/mutate",
            "caBundle": base64.b64encode(certificates.ca_pem).decode(),
        }
        apply(testenv, configuration)
        wait_until_webhook_serves(api)
        yield Webhook(name, injectors, front, api)
    finally:
        with contextlib.suppress(client.ApiException):
            registrations.delete_mutating_webhook_configuration(name)
        front.stop()
        for injector in injectors:
            injector.stop()
    for injector in injectors:
        lines = injector.log_tail(400).splitlines()
        refused = [line for line in lines if "is forbidden: User" in line]
        assert refused == [], refused


def wait_until_webhook_serves(api: client.ApiClient) -> None:
    """The API server picks a new webhook configuration up within a moment: probe with pods."""
    namespace = f"probe-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    try:

        def injected() -> bool:
            created = core.create_namespaced_pod(namespace, pod_manifest())
            return any(c.name == SIDECAR for c in created.spec.init_containers or [])

        eventually(injected, timeout=30, what="the API server calls the injector")
    finally:
        core.delete_namespace(namespace)


def pod_manifest(
    annotations: dict[str, str] | None = None, name: str | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            **({"name": name} if name else {"generateName": "app-"}),
            "annotations": {"kmeter.io/inject": "true"} if annotations is None else annotations,
            "labels": {"app": "metered"},
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "example.com/llm-app:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
                }
            ]
        },
    }


def deployment_manifest(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    template = pod_manifest(annotations)
    del template["metadata"]["generateName"]
    template["metadata"]["labels"] = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template},
    }


def as_dict(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    found: dict[str, Any] = api.sanitize_for_serialization(obj)
    return found


def the_deployments_pod(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    core = client.CoreV1Api(api)
    pods = eventually(
        lambda: core.list_namespaced_pod(namespace, label_selector=f"app={name}").items or None,
        timeout=60,
        what="the controller-manager creates the Deployment's pod",
    )
    [pod] = pods
    return as_dict(api, pod)


def sidecars(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [
        c
        for c in [*(spec.get("initContainers") or []), *spec["containers"]]
        if c["name"] == SIDECAR
    ]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def test_an_annotated_deployments_pod_gets_the_sidecar_configured_from_its_annotations(
    webhook: Webhook, namespace: str
) -> None:
    annotations = {
        "kmeter.io/inject": "true",
        "kmeter.io/port": "http",
        "kmeter.io/event-type": "llm.completion",
        "kmeter.io/subject-from": "jwt-claim:sub",
        "kmeter.io/values": "usage=$.usage",
        "kmeter.io/value.model": "$.model",
        "kmeter.io/missing-subject": "reject",
    }
    client.AppsV1Api(webhook.api).create_namespaced_deployment(
        namespace, deployment_manifest("llm-app", annotations)
    )
    pod = the_deployments_pod(webhook.api, namespace, "llm-app")

    assert pod["metadata"]["annotations"]["kmeter.io/status"] == "injected"
    [sidecar] = sidecars(pod)
    assert sidecar in pod["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "kmeter-sidecar:test"
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {
        "http": 15080,
        "kmeter-admin": 15081,
    }
    env = env_of(sidecar)
    assert env["KMETER_EVENT_TYPE"] == "llm.completion"
    assert env["KMETER_SUBJECT_FROM"] == "jwt-claim:sub"
    assert env["KMETER_MISSING_SUBJECT"] == "reject"
    assert env["KMETER_VALUES"].splitlines() == ["usage=$.usage", "model=$.model"]
    assert env["KMETER_UPSTREAM"] == "127.0.0.1:8080"
    assert env["KMETER_PORT"] == "15080"
    assert env["KMETER_KAFKA_BOOTSTRAP"] == "kafka.kmeter-test:9092"
    assert env["KMETER_NAMESPACE"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}
    }
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    spool = next(v for v in pod["spec"]["volumes"] if v["name"] == "kmeter-spool")
    assert "emptyDir" in spool
    # The app keeps its port under a new name; its probe follows the rename.
    [app] = pod["spec"]["containers"]
    assert app["ports"] == [{"name": "app-http", "containerPort": 8080, "protocol": "TCP"}]
    assert app["readinessProbe"]["httpGet"]["port"] == "app-http"


class Labeler:
    """A second mutating webhook that labels every pod, after kmeter's (its name sorts later)."""

    def __init__(self, certificates: Certificates) -> None:
        self.port = free_port()
        self.calls = 0
        labeler = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                labeler.calls += 1
                patch = [{"op": "add", "path": "/metadata/labels/labelled", "value": "yes"}]
                body = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {
                            "uid": review["request"]["uid"],
                            "allowed": True,
                            "patchType": "JSONPatch",
                            "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificates.cert_file, certificates.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()


def test_a_later_webhook_reinvokes_the_injector_and_the_pod_still_has_one_sidecar(
    webhook: Webhook, namespace: str, testenv: Environment
) -> None:
    certificates = webhook.injectors[0].certificates
    labeler = Labeler(certificates)
    name = f"z-labeler-{uuid.uuid4().hex[:6]}"
    registrations = client.AdmissionregistrationV1Api(webhook.api)
    registrations.create_mutating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "labeler.e2e.kmeter.io",
                    "admissionReviewVersions": ["v1"],
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{labeler.port}/",
                        "caBundle": base64.b64encode(certificates.ca_pem).decode(),
                    },
                    "rules": [
                        {
                            "operations": ["CREATE"],
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "resources": ["pods"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "reinvocationPolicy": "IfNeeded",
                }
            ],
        }
    )
    core = client.CoreV1Api(webhook.api)
    try:
        before = webhook.counted("already_injected")

        def labelled_pod() -> dict[str, Any] | None:
            pod = as_dict(webhook.api, core.create_namespaced_pod(namespace, pod_manifest()))
            return pod if pod["metadata"]["labels"].get("labelled") == "yes" else None

        pod = eventually(labelled_pod, timeout=30, what="the labeler webhook is called")
    finally:
        registrations.delete_mutating_webhook_configuration(name)
        labeler.stop()
    assert len(sidecars(pod)) == 1
    assert [p["name"] for p in pod["spec"]["containers"][0]["ports"]] == ["app-http"]
    # The labeler changed the pod after kmeter did, so the API server asked kmeter again,
    # and kmeter saw its own status annotation and added nothing.
    assert webhook.counted("already_injected") >= before + 1


def test_a_pod_created_from_an_injected_pods_manifest_gets_no_second_sidecar(
    webhook: Webhook, namespace: str
) -> None:
    core = client.CoreV1Api(webhook.api)
    first = as_dict(webhook.api, core.create_namespaced_pod(namespace, pod_manifest()))
    assert len(sidecars(first)) == 1
    copy = {"metadata": {"name": "copy", **{
        k: first["metadata"][k] for k in ("annotations", "labels")
    }}, "spec": first["spec"]}  # fmt: skip
    copied = as_dict(webhook.api, core.create_namespaced_pod(namespace, copy))
    assert len(sidecars(copied)) == 1
    assert copied["spec"]["containers"] == first["spec"]["containers"]
    # Without the status annotation, the container name alone is enough.
    del copy["metadata"]["annotations"]["kmeter.io/status"]
    copy["metadata"]["name"] = "copy-without-status"
    copied = as_dict(webhook.api, core.create_namespaced_pod(namespace, copy))
    assert len(sidecars(copied)) == 1
    assert "kmeter.io/status" not in copied["metadata"]["annotations"]


def test_pods_in_kube_system_and_pods_without_the_annotation_are_untouched(
    webhook: Webhook, namespace: str
) -> None:
    core = client.CoreV1Api(webhook.api)
    plain = as_dict(webhook.api, core.create_namespaced_pod(namespace, pod_manifest({})))
    name = f"kmeter-e2e-{uuid.uuid4().hex[:6]}"
    system = as_dict(
        webhook.api, core.create_namespaced_pod("kube-system", pod_manifest(name=name))
    )
    try:
        for pod in (plain, system):
            assert sidecars(pod) == []
            assert pod["spec"].get("initContainers") is None
            assert [p["name"] for p in pod["spec"]["containers"][0]["ports"]] == ["http"]
            assert "kmeter.io/status" not in (pod["metadata"].get("annotations") or {})
        # The same annotated pod outside kube-system is injected: the webhook works.
        injected = as_dict(webhook.api, core.create_namespaced_pod(namespace, pod_manifest()))
        assert len(sidecars(injected)) == 1
    finally:
        core.delete_namespaced_pod(name, "kube-system")


def test_a_pod_can_ask_for_a_regular_container_instead_of_a_native_sidecar(
    webhook: Webhook, namespace: str
) -> None:
    core = client.CoreV1Api(webhook.api)
    pod = as_dict(
        webhook.api,
        core.create_namespaced_pod(
            namespace,
            pod_manifest({"kmeter.io/inject": "true", "kmeter.io/native-sidecar": "false"}),
        ),
    )
    [sidecar] = sidecars(pod)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", SIDECAR]
    assert "restartPolicy" not in sidecar
    assert pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"


def test_a_bad_annotation_admits_the_pod_unchanged_with_a_warning_and_an_event(
    webhook: Webhook, namespace: str, testenv: Environment
) -> None:
    bad = {"kmeter.io/inject": "true", "kmeter.io/subject-from": "cookie:session"}
    # A bare pod: whoever creates it sees the warning.
    manifest = {"apiVersion": "v1", "kind": "Pod", **pod_manifest(bad, name="bare")}
    created = subprocess.run(
        ["kubectl", "--kubeconfig", str(testenv.kubeconfig), "create", "-n", namespace,
         "-f", "-"],
        input=json.dumps(manifest), capture_output=True, text=True, check=False,
        env={**os.environ, "PATH": testenv.path},
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "Warning: kmeter: sidecar not injected: kmeter.io/subject-from" in created.stderr
    core = client.CoreV1Api(webhook.api)
    bare = as_dict(webhook.api, core.read_namespaced_pod("bare", namespace))
    assert sidecars(bare) == []
    assert [p["name"] for p in bare["spec"]["containers"][0]["ports"]] == ["http"]

    # A Deployment: the ReplicaSet controller gets the warning; the user gets an Event.
    client.AppsV1Api(webhook.api).create_namespaced_deployment(
        namespace, deployment_manifest("bad-app", bad)
    )
    pod = the_deployments_pod(webhook.api, namespace, "bad-app")
    assert sidecars(pod) == []
    assert "kmeter.io/status" not in pod["metadata"]["annotations"]
    [owner] = pod["metadata"]["ownerReferences"]

    def refusal_events() -> list[Any] | None:
        events = core.list_namespaced_event(namespace).items
        found = [e for e in events if e.reason == "InjectionRefused"]
        return found if len(found) >= 2 else None

    events = eventually(refusal_events, timeout=30, what="Events about the refused pods")
    about = {(e.involved_object.kind, e.involved_object.name): e for e in events}
    on_replica_set = about[("ReplicaSet", owner["name"])]
    assert on_replica_set.type == "Warning"
    assert "kmeter.io/subject-from" in on_replica_set.message
    assert "cookie:session" in on_replica_set.message
    assert on_replica_set.involved_object.uid == owner["uid"]
    on_namespace = about[("Namespace", namespace)]
    assert "pod bare:" in on_namespace.message


def test_a_misspelt_annotation_on_a_deployment_is_injected_and_the_user_gets_an_event(
    webhook: Webhook, namespace: str
) -> None:
    # The admission warning goes to the ReplicaSet controller; without an Event nobody would
    # learn that the subject comes from the default header instead of the JWT claim.
    typo = {"kmeter.io/inject": "true", "kmeter.io/subject_from": "jwt-claim:sub"}
    client.AppsV1Api(webhook.api).create_namespaced_deployment(
        namespace, deployment_manifest("typo-app", typo)
    )
    pod = the_deployments_pod(webhook.api, namespace, "typo-app")
    assert len(sidecars(pod)) == 1
    [owner] = pod["metadata"]["ownerReferences"]
    core = client.CoreV1Api(webhook.api)

    def warning_events() -> list[Any] | None:
        events = core.list_namespaced_event(namespace).items
        return [e for e in events if e.reason == "InjectionWarning"] or None

    [event] = eventually(warning_events, timeout=30, what="an Event about the typo")
    assert (event.involved_object.kind, event.involved_object.name) == ("ReplicaSet", owner["name"])
    assert event.type == "Warning"
    assert "kmeter sidecar injected, but: kmeter.io/subject_from" in event.message
    assert "did you mean kmeter.io/subject-from?" in event.message


def test_with_one_injector_replica_killed_admissions_keep_working(
    webhook: Webhook, namespace: str
) -> None:
    core = client.CoreV1Api(webhook.api)
    killed = webhook.injectors[0]
    killed.stop(kill=True)
    try:
        time.sleep(1)  # the front closes the dead replica's connections, as kube-proxy would
        pods = [
            as_dict(webhook.api, core.create_namespaced_pod(namespace, pod_manifest()))
            for _ in range(6)
        ]
        assert [len(sidecars(pod)) for pod in pods] == [1] * 6
    finally:
        killed.start()


def test_with_the_injector_down_pods_are_still_created_unchanged(
    webhook: Webhook, namespace: str
) -> None:
    core = client.CoreV1Api(webhook.api)
    for injector in webhook.injectors:
        injector.stop(kill=True)
    try:
        started = time.monotonic()
        pod = as_dict(webhook.api, core.create_namespaced_pod(namespace, pod_manifest()))
        assert sidecars(pod) == []
        assert [p["name"] for p in pod["spec"]["containers"][0]["ports"]] == ["http"]
        assert time.monotonic() - started < 5  # a refused connection is not a timeout
    finally:
        for injector in webhook.injectors:
            injector.start()
    time.sleep(1)
    again = as_dict(webhook.api, core.create_namespaced_pod(namespace, pod_manifest()))
    assert len(sidecars(again)) == 1


def operator_gauge(operator: OperatorProcess, namespace: str) -> float:
    wanted = f'kmeter_operator_pods_escaped_injection{{namespace="{namespace}"}}'
    for line in operator.get("metrics", "/metrics")[1].splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return 0.0


def test_the_operator_reports_pods_that_escaped_injection_with_an_event_and_a_metric(
    webhook: Webhook, operator: OperatorProcess, namespace: str
) -> None:
    core = client.CoreV1Api(webhook.api)
    injected = as_dict(webhook.api, core.create_namespaced_pod(namespace, pod_manifest()))
    assert len(sidecars(injected)) == 1
    # A namespace the webhook skips: its annotated pods run without the sidecar.
    core.patch_namespace(namespace, {"metadata": {"labels": {"kmeter.io/injection": "disabled"}}})
    escaped = eventually(
        lambda: (
            pod
            if not sidecars(
                pod := as_dict(
                    webhook.api,
                    core.create_namespaced_pod(namespace, pod_manifest(name=f"p{time.time_ns()}")),
                )
            )
            else None
        ),
        timeout=30,
        what="the API server applies the namespace's new label to the webhook",
    )

    def escape_events() -> list[Any] | None:
        events = core.list_namespaced_event(namespace).items
        found = [e for e in events if e.reason == "InjectionEscaped"]
        return found or None

    [event] = eventually(escape_events, timeout=30, what="the operator's Event on the pod")
    assert event.involved_object.kind == "Pod"
    assert event.involved_object.name == escaped["metadata"]["name"]
    assert event.type == "Warning"
    assert 'kmeter.io/inject: "true") but has no kmeter-sidecar container' in event.message
    eventually(lambda: operator_gauge(operator, namespace) == 1, what="the gauge counts the pod")
    core.delete_namespaced_pod(escaped["metadata"]["name"], namespace, grace_period_seconds=0)
    eventually(lambda: operator_gauge(operator, namespace) == 0, what="the gauge drops it")
    # Under exactly the chart's ClusterRole (posting into a namespace another test is deleting
    # may fail, but not for lack of a permission).
    refused = [line for line in operator.log_tail(400).splitlines() if "is forbidden: User" in line]
    assert refused == []
