"""The chart's injector: a highly available webhook, its configuration, RBAC and certificates.

Rendering checks what a reviewer of the manifests would; an install into the real test cluster
checks that the API server accepts them and that the Helm-generated certificate survives
``helm upgrade`` (``lookup``) — a new CA on every upgrade would break the webhook for the
moment between the Secret and the caBundle changing. With no kubelet the injector pods stay
Pending; the certificate is proved usable by serving it from a local ``kmeter injector``.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.support.injector import Certificates, InjectorProcess
from tests.support.kube import Environment

CHART = Path(__file__).resolve().parents[2] / "charts" / "kmeter"
BASE = ["--set", "kafka.bootstrapServers=kafka:9092"]


def helm(testenv: Environment, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": testenv.path, "KUBECONFIG": str(testenv.kubeconfig)}
    return subprocess.run(["helm", *args], env=env, capture_output=True, text=True, check=False)


def render(testenv: Environment, *values: str, namespace: str = "kmeter-system") -> list[Any]:
    result = helm(testenv, "template", "demo", str(CHART), "--namespace", namespace, *BASE, *values)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def injector_objects(documents: list[Any]) -> dict[str, Any]:
    return {
        d["kind"]: d
        for d in documents
        if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "injector"
    }


def test_the_chart_with_the_injector_passes_helm_lint_also_with_cert_manager(
    testenv: Environment,
) -> None:
    for values in ([], ["--set", "injector.certManager.enabled=true"]):
        result = helm(testenv, "lint", "--strict", str(CHART), *BASE, *values)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_injector_runs_two_restricted_replicas_spread_over_nodes_behind_a_pdb(
    testenv: Environment,
) -> None:
    objects = injector_objects(render(testenv))
    assert set(objects) == {
        "Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
        "PodDisruptionBudget", "Secret", "MutatingWebhookConfiguration",
    }  # fmt: skip
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    assert container["args"] == ["injector"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KMETER_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["KMETER_NATIVE_SIDECAR"] == "true"
    assert env["KMETER_SIDECAR_IMAGE"] == "ghcr.io/kmeter/kmeter-sidecar:0.1.0"
    assert env["KMETER_INJECTOR_EXCLUDED_NAMESPACES"] == "kube-system,kube-public,kube-node-lease"
    assert objects["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "https"
    # Least privilege: it writes Events and reads nothing.
    assert objects["ClusterRole"]["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}
    ]


def test_the_webhook_never_blocks_pods_and_skips_system_and_its_own_namespaces(
    testenv: Environment,
) -> None:
    objects = injector_objects(render(testenv, namespace="metering"))
    [webhook] = objects["MutatingWebhookConfiguration"]["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["sideEffects"] == "NoneOnDryRun"
    assert webhook["timeoutSeconds"] <= 10
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["pods"], "scope": "Namespaced",
        }
    ]  # fmt: skip
    [by_name, opt_out] = webhook["namespaceSelector"]["matchExpressions"]
    assert by_name["key"] == "kubernetes.io/metadata.name"
    assert by_name["operator"] == "NotIn"
    assert set(by_name["values"]) == {"kube-system", "kube-public", "kube-node-lease", "metering"}
    assert opt_out == {"key": "kmeter.io/injection", "operator": "NotIn", "values": ["disabled"]}
    assert "kmeter.io/inject" in webhook["matchConditions"][0]["expression"]
    assert webhook["clientConfig"]["service"] == {
        "name": "demo-kmeter-injector", "namespace": "metering", "path": "/mutate", "port": 443,
    }  # fmt: skip


def verify_serving_pair(secret_data: dict[str, str], ca_bundle: str, dns_name: str) -> None:
    """The Secret's certificate is signed by the caBundle's CA and names the Service."""
    assert secret_data["ca.crt"] == ca_bundle
    ca = x509.load_pem_x509_certificate(base64.b64decode(ca_bundle))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret_data["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert dns_name in names.get_values_for_type(x509.DNSName)


def test_helm_generates_a_ca_and_a_serving_certificate_for_the_service(
    testenv: Environment,
) -> None:
    objects = injector_objects(render(testenv, namespace="metering"))
    secret = objects["Secret"]
    assert secret["type"] == "kubernetes.io/tls"
    ca_bundle = objects["MutatingWebhookConfiguration"]["webhooks"][0]["clientConfig"]["caBundle"]
    verify_serving_pair(secret["data"], ca_bundle, "demo-kmeter-injector.metering.svc")
    [volume] = [
        v
        for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "tls"
    ]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]


def test_with_cert_manager_a_certificate_fills_the_secret_and_the_ca_is_injected(
    testenv: Environment,
) -> None:
    documents = render(testenv, "--set", "injector.certManager.enabled=true")
    objects = injector_objects(documents)
    assert "Secret" not in objects  # cert-manager writes it
    certificate, issuer = objects["Certificate"], objects["Issuer"]
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert "demo-kmeter-injector.kmeter-system.svc" in certificate["spec"]["dnsNames"]
    configuration = objects["MutatingWebhookConfiguration"]
    assert configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"kmeter-system/{certificate['metadata']['name']}"
    )
    assert "caBundle" not in configuration["webhooks"][0]["clientConfig"]
    [volume] = [
        v
        for v in objects["Deployment"]["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "tls"
    ]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    # An issuer of the user's own replaces the self-signed one.
    objects = injector_objects(
        render(
            testenv, "--set", "injector.certManager.enabled=true",
            "--set", "injector.certManager.issuerRef.name=corp-ca",
            "--set", "injector.certManager.issuerRef.kind=ClusterIssuer",
        )
    )  # fmt: skip
    assert "Issuer" not in objects
    assert objects["Certificate"]["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
    }


def test_the_injector_can_be_left_out(testenv: Environment) -> None:
    assert injector_objects(render(testenv, "--set", "injector.enabled=false")) == {}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["injector.replicas=0"], "/injector/replicas"),
        (["injector.nativeSidecar=maybe"], "/injector/nativeSidecar"),
        (["injector.sidecar.spoolSize=lots"], "/injector/sidecar/spoolSize"),
        (["injector.timeoutSeconds=60"], "/injector/timeoutSeconds"),
        (["injector.certManager.issuer=x"], "additional properties"),
    ],
)
def test_bad_injector_values_fail_with_a_message_that_names_them(
    testenv: Environment, values: list[str], message: str
) -> None:
    args = [arg for value in values for arg in ("--set", value)]
    result = helm(testenv, "template", "bad", str(CHART), *BASE, *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


@pytest.fixture(scope="module")
def release(testenv: Environment) -> Iterator[tuple[str, str]]:
    """The chart installed into a namespace of its own (release, namespace); uninstalled after."""
    namespace = f"kmeter-inj-{uuid.uuid4().hex[:6]}"
    name = f"inj-{uuid.uuid4().hex[:4]}"
    result = helm(
        testenv, "install", name, str(CHART), "--namespace", namespace, "--create-namespace",
        *BASE, "--set", "crds.install=false", "--wait=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    yield name, namespace
    helm(testenv, "uninstall", name, "--namespace", namespace, "--wait")
    client.CoreV1Api(testenv.api_client()).delete_namespace(namespace)


def installed_pair(api: client.ApiClient, name: str, namespace: str) -> tuple[dict[str, str], str]:
    secret = client.CoreV1Api(api).read_namespaced_secret(f"{name}-kmeter-injector-tls", namespace)
    configuration = client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(
        f"{name}-kmeter-injector"
    )
    ca_bundle = configuration.webhooks[0].client_config.ca_bundle
    return dict(secret.data), ca_bundle


def test_an_upgrade_keeps_the_generated_certificate_and_the_injector_serves_it(
    release: tuple[str, str], testenv: Environment, tmp_path: Path
) -> None:
    name, namespace = release
    api = testenv.api_client()
    before, ca_bundle = installed_pair(api, name, namespace)
    service = f"{name}-kmeter-injector.{namespace}.svc"
    verify_serving_pair(before, ca_bundle, service)
    result = helm(
        testenv, "upgrade", name, str(CHART), "--namespace", namespace, *BASE,
        "--set", "crds.install=false", "--set", "injector.logLevel=DEBUG",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    after, ca_bundle_after = installed_pair(api, name, namespace)
    assert after == before
    assert ca_bundle_after == ca_bundle
    deployment = client.AppsV1Api(api).read_namespaced_deployment(
        f"{name}-kmeter-injector", namespace
    )
    env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
    assert env["KMETER_LOG_LEVEL"] == "DEBUG"

    # The pair works: `kmeter injector` serves it, and a client trusting only the caBundle
    # (as the API server does) completes a handshake for the Service's name.
    for key, file in (("ca.crt", "ca.crt"), ("tls.crt", "tls.crt"), ("tls.key", "tls.key")):
        (tmp_path / file).write_bytes(base64.b64decode(after[key]))
    certificates = Certificates(tmp_path / "ca.crt", tmp_path / "tls.crt", tmp_path / "tls.key")
    # Its certificate names the Service, not 127.0.0.1: readiness checks the CA only.
    injector = InjectorProcess(certificates, tmp_path, check_hostname=False)
    injector.start()
    try:
        context = ssl.create_default_context(cafile=str(certificates.ca_file))
        with (
            socket.create_connection(("127.0.0.1", injector.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=service) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        injector.stop()


def test_uninstall_removes_the_webhook(release: tuple[str, str], testenv: Environment) -> None:
    name, namespace = release
    result = helm(testenv, "uninstall", name, "--namespace", namespace, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    registrations = client.AdmissionregistrationV1Api(testenv.api_client())
    with pytest.raises(ApiException) as gone:
        registrations.read_mutating_webhook_configuration(f"{name}-kmeter-injector")
    assert gone.value.status == 404
