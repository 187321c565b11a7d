"""End to end on Kafka's TLS + SASL listener: credentials reach the tenant namespaces.

The operator runs with SASL_SSL settings, as the chart gives them (variables from its Secret,
a mounted CA file), under the chart's ClusterRole rendered for SASL_SSL. For a Meter it must
write the namespace's ``kmeter-kafka`` Secret and a worker Deployment that reads it. The test
then does what the kubelet would: it writes the Secret's keys as files (a Secret volume) and
runs the worker with the container's own environment and arguments, and a sidecar configured
exactly as the injector configures one — first with an empty credentials directory (a pod that
started before the Secret existed), then with the files appearing. ``kmeter api`` reads over
SASL_SSL too. What the customer sees: every request served is counted once.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from aiohttp import web
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.support.api import ApiProcess, meter_manifest, write_manifests, write_tokens
from tests.support.http import answers, get, serve_in_thread
from tests.support.kube import Environment, KubeUsers
from tests.support.operator import (
    OperatorProcess,
    Resources,
    eventually,
    free_port,
    install_chart_rbac,
)
from tests.support.processes import Running

from kmeter.injector.patch import Inject, decide
from kmeter.injector.settings import InjectorSettings
from kmeter.kafka import tenant_credentials
from kmeter.kafka.settings import KafkaSettings

BIN = Path(sys.executable).parent
TOKEN = "credentials-token"
COUNT_REQUESTS = {"eventType": "http.request", "aggregation": "COUNT"}


def client_variables(kafka: KafkaSettings) -> dict[str, str]:
    """The operator's ``KMETER_KAFKA_*`` variables, as the chart sets them."""
    return {
        "KMETER_KAFKA_SECURITY_PROTOCOL": kafka.security_protocol,
        "KMETER_KAFKA_SASL_MECHANISM": str(kafka.sasl_mechanism),
        "KMETER_KAFKA_SASL_USERNAME": str(kafka.sasl_username),
        "KMETER_KAFKA_SASL_PASSWORD": str(kafka.sasl_password),
        "KMETER_KAFKA_CA_FILE": str(kafka.ssl_cafile),
    }


def operator_variables(kafka: KafkaSettings) -> dict[str, str]:
    """The operator's variables; the test broker has one user, so the tenants' credentials
    are the same (a production install gives them a principal of their own)."""
    return {
        **client_variables(kafka),
        "KMETER_KAFKA_TENANT_SASL_USERNAME": str(kafka.sasl_username),
        "KMETER_KAFKA_TENANT_SASL_PASSWORD": str(kafka.sasl_password),
    }


@pytest.fixture(scope="module")
def secure_operator(
    testenv: Environment,
    kube_users: KubeUsers,
    kmeter_crds: None,
    kafka_secure: KafkaSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    role = install_chart_rbac(
        testenv,
        release="kmeter-secure",
        values=[
            "kafka.securityProtocol=SASL_SSL",
            "kafka.sasl.secret.name=kafka-sasl",
            "kafka.tls.caSecret.name=kafka-ca",
            "kafka.sasl.tenantSecret.name=kafka-tenants",
        ],
    )
    process = OperatorProcess(
        kube_users.kubeconfig_for("ClusterRole", role),
        kafka_secure.bootstrap_servers,
        tmp_path_factory.mktemp("secure-operator"),
        extra_env=operator_variables(kafka_secure),
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def resources(testenv: Environment, namespace: str) -> Resources:
    return Resources(testenv.api_client(), namespace)


@pytest.fixture
def upstream() -> Iterator[int]:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    with serve_in_thread(app) as served:
        yield served.port


def read_secret(resources: Resources, name: str) -> Any:
    try:
        return resources.core.read_namespaced_secret(name, resources.namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def mount_secret(secret: Any, directory: Path) -> None:
    """What the kubelet does with a Secret volume: one file per key."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in secret.data.items():
        (directory / key).write_bytes(base64.b64decode(value))


def fingerprint_of(secret: Any) -> str:
    return tenant_credentials.fingerprint({"data": secret.data})


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """A container's variables with literal values (fieldRef & co. are the caller's to set)."""
    return {item["name"]: item["value"] for item in container.get("env") or [] if "value" in item}


@pytest.mark.usefixtures("secure_operator")
def test_a_worker_and_a_sidecar_on_tls_and_sasl_count_every_request_with_the_namespaces_secret(
    resources: Resources, kafka_secure: KafkaSettings, upstream: int, tmp_path: Path
) -> None:
    namespace = resources.namespace
    created = resources.create("meters", "requests", COUNT_REQUESTS)
    eventually(lambda: resources.ready("meters", "requests"), timeout=60, what="Meter Ready")

    # The operator wrote the namespace's credentials: its own, and the CA it trusts.
    secret = eventually(lambda: read_secret(resources, "kmeter-kafka"), what="kmeter-kafka")
    keys = {key: base64.b64decode(value) for key, value in secret.data.items()}
    assert keys == {
        "sasl-username": str(kafka_secure.sasl_username).encode(),
        "sasl-password": str(kafka_secure.sasl_password).encode(),
        "ca.crt": Path(str(kafka_secure.ssl_cafile)).read_bytes(),
    }
    owners = [(o.kind, o.name, o.uid) for o in secret.metadata.owner_references]
    assert owners == [("Meter", "requests", created["metadata"]["uid"])]

    # The worker, as its Deployment runs it, with the Secret mounted where it says.
    deployment = resources.apps.read_namespaced_deployment("kmeter-worker-requests", namespace)
    pod = client.ApiClient().sanitize_for_serialization(deployment.spec.template.spec)
    (worker,) = pod["containers"]
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "kmeter-kafka")
    volume = next(v for v in pod["volumes"] if v["name"] == "kmeter-kafka")
    assert volume["secret"]["secretName"] == "kmeter-kafka"
    annotations = deployment.spec.template.metadata.annotations
    assert annotations["kmeter.io/kafka-credentials"] == fingerprint_of(secret)
    worker_env = literal_env(worker)
    assert worker_env["KMETER_KAFKA_CREDENTIALS_DIR"] == mount["mountPath"]
    mounted = tmp_path / "worker-kafka"
    mount_secret(secret, mounted)
    running = Running()
    api: ApiProcess | None = None
    try:
        running.start(
            [str(BIN / "kmeter"), *worker["args"]],
            tmp_path / "worker.log",
            **{
                **worker_env,
                "KMETER_KAFKA_CREDENTIALS_DIR": str(mounted),
                "KMETER_QUOTAS_FILE": str(tmp_path / "no-quotas.json"),
                "KMETER_SECRETS_DIR": str(tmp_path / "no-secrets"),
                "KMETER_METRICS_PORT": str(free_port()),
                "KMETER_HEALTH_PORT": str(free_port()),
                "POD_NAME": "worker-1",
                "KMETER_MEMORY_LIMIT": str(512 << 20),
            },
        )

        # A sidecar as the injector makes it, in a pod that started before the Secret's keys
        # reached it: its credentials directory is empty.
        sidecar_env = injected_sidecar_env(kafka_secure)
        sidecar_dir = tmp_path / "sidecar-kafka"
        sidecar_dir.mkdir()
        proxy_port, admin_port = free_port(), free_port()
        sidecar_log = tmp_path / "sidecar.log"
        running.start(
            [str(BIN / "kmeter-sidecar")],
            sidecar_log,
            **{
                **sidecar_env,
                "KMETER_KAFKA_CREDENTIALS_DIR": str(sidecar_dir),
                "KMETER_PORT": str(proxy_port),
                "KMETER_LISTEN_HOST": "127.0.0.1",
                "KMETER_ADMIN_PORT": str(admin_port),
                "KMETER_ADMIN_HOST": "127.0.0.1",
                "KMETER_UPSTREAM": f"127.0.0.1:{upstream}",
                "KMETER_SPOOL_DIR": str(tmp_path / "spool"),
                "KMETER_NAMESPACE": namespace,
                "KMETER_POD_NAME": "web-1",
                "KMETER_KAFKA_RETRY_INTERVAL": "0.5s",
            },
        )
        proxy = f"http://127.0.0.1:{proxy_port}"
        eventually(lambda: answers(f"{proxy}/probe"), timeout=60, what="the sidecar serves")
        for i in range(25):
            assert get(f"{proxy}/v1/chat?n={i}", {"X-Customer-Id": "acme"})[0] == 200
        eventually(
            lambda: "sasl-username is absent or empty" in sidecar_log.read_text(),
            what="the sidecar says which credentials file is missing",
        )
        mount_secret(secret, sidecar_dir)  # the kubelet fills the volume
        for i in range(25, 40):
            assert get(f"{proxy}/v1/chat?n={i}", {"X-Customer-Id": "acme"})[0] == 200

        manifest = meter_manifest(
            namespace,
            "requests",
            event_type="http.request",
            aggregation="COUNT",
            value_property=None,
        )
        api = ApiProcess(
            kafka_secure.bootstrap_servers,
            tmp_path,
            manifests=write_manifests(tmp_path / "manifests", [manifest]),
            tokens=write_tokens(tmp_path / "tokens.yaml", {namespace: [TOKEN]}),
            env=client_variables(kafka_secure),
        )
        api.start()

        def counted() -> int | None:
            query = urllib.parse.urlencode({"subject": "acme"})
            answer = api.call("GET", f"/api/v1/meters/requests/query?{query}", token=TOKEN)
            rows = json.loads(answer.body)["data"] if answer.status == 200 else []
            total = sum(int(row["value"]) for row in rows)
            return total if total == 40 else None

        eventually(counted, timeout=90, what="40 requests counted exactly, over SASL_SSL")
    finally:
        running.stop()
        if api is not None:
            api.stop()


@pytest.mark.usefixtures("secure_operator")
def test_the_credentials_secret_belongs_to_every_meter_and_goes_with_the_last(
    resources: Resources,
) -> None:
    uids = {
        name: resources.create("meters", name, COUNT_REQUESTS)["metadata"]["uid"]
        for name in ("first", "second")
    }
    eventually(
        lambda: all(resources.ready("meters", name) for name in uids), what="both Meters Ready"
    )

    def owners() -> set[str] | None:
        secret = read_secret(resources, "kmeter-kafka")
        if secret is None:
            return None
        return {owner.uid for owner in secret.metadata.owner_references or []}

    eventually(lambda: owners() == set(uids.values()), what="both Meters own the Secret")
    resources.delete("meters", "first")
    eventually(lambda: owners() == {uids["second"]}, what="the Secret outlives the first Meter")
    resources.delete("meters", "second")
    eventually(
        lambda: read_secret(resources, "kmeter-kafka") is None,
        timeout=60,
        what="the garbage collector deletes the Secret with the last Meter",
    )


def injected_sidecar_env(kafka: KafkaSettings) -> dict[str, str]:
    """The literal variables of the sidecar the injector adds to a pod, for a SASL_SSL Kafka."""
    settings = InjectorSettings.from_environment(
        {
            "KMETER_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
            "KMETER_KAFKA_SECURITY_PROTOCOL": kafka.security_protocol,
            "KMETER_KAFKA_SASL_MECHANISM": str(kafka.sasl_mechanism),
        }
    )
    pod = {
        "metadata": {"name": "web", "annotations": {"kmeter.io/inject": "true"}},
        "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 1}]}]},
    }
    decision = decide(pod, "default", settings)
    assert isinstance(decision, Inject)
    patched = jsonpatch.apply_patch(pod, decision.patch)
    (sidecar,) = patched["spec"]["initContainers"]
    return literal_env(sidecar)
