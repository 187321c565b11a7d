"""Session fixtures for tests against the real parts: Kafka and a Kubernetes API server.

The environment comes from ``scripts/testenv`` (see docs/development.md). The fixtures find it
through the variables ``scripts/testenv env`` prints (``KMETER_KAFKA_BOOTSTRAP``,
``KUBECONFIG``), or, when those are unset, by asking ``scripts/testenv env`` themselves.

Tests under ``tests/integration`` and ``tests/e2e`` are marked ``integration``. When the
environment is missing they are skipped on a developer's machine, with the command that starts
it, and they *fail* when ``CI`` is set: in CI a missing Kafka or API server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from tests.support.faults import KafkaBroker
from tests.support.kube import Environment, KubeUsers
from tests.support.operator import OperatorProcess, install_chart_rbac, install_crds
from tests.support.processes import testenv_exports

from kmeter.kafka.settings import KafkaSettings

REPO = Path(__file__).resolve().parent.parent
KAFKA_SECURE_VARIABLES = (
    "KMETER_TESTENV_KAFKA_SECURE_BOOTSTRAP",
    "KMETER_TESTENV_KAFKA_CA_FILE",
    "KMETER_TESTENV_KAFKA_SASL_USERNAME",
    "KMETER_TESTENV_KAFKA_SASL_PASSWORD",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO).parts
        if len(parts) > 1 and parts[1] in {"integration", "e2e"}:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def testenv() -> Environment:
    """The running test environment, or a skip (a failure under CI) when it is not up."""
    bootstrap = os.environ.get("KMETER_KAFKA_BOOTSTRAP")
    kubeconfig = os.environ.get("KUBECONFIG")
    path = os.environ.get("PATH", "")
    if not (bootstrap and kubeconfig):
        found = testenv_exports()
        bootstrap = found.get("KMETER_KAFKA_BOOTSTRAP")
        kubeconfig = found.get("KUBECONFIG")
        path = found.get("PATH", path).replace("$PATH", path)
    if not (bootstrap and kubeconfig and Path(kubeconfig).exists()):
        message = (
            "the real test environment is not up (no Kafka bootstrap / kubeconfig); "
            "start it with `scripts/testenv up`"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Environment(kafka_bootstrap=bootstrap, kubeconfig=Path(kubeconfig), path=path)


@pytest.fixture(scope="session")
def kafka_bootstrap(testenv: Environment) -> str:
    """``host:port`` of the real Kafka broker."""
    return testenv.kafka_bootstrap


@pytest.fixture(scope="session")
def kafka_secure(testenv: Environment) -> KafkaSettings:
    """The broker's TLS + SASL listener: SASL_SSL, SCRAM-SHA-512 as ``kmeter``, the test CA.

    Read from the ``KMETER_TESTENV_KAFKA_*`` variables ``scripts/testenv env`` prints. An
    environment that is up without them (started by an older ``scripts/testenv``) fails the
    test, never skips it: a test of credentials that silently did not run proves nothing.
    """
    found = {name: os.environ.get(name, "") for name in KAFKA_SECURE_VARIABLES}
    if not all(found.values()):
        exports = testenv_exports()
        found = {name: exports.get(name, "") for name in KAFKA_SECURE_VARIABLES}
    missing = [name for name, value in found.items() if not value]
    if missing:
        pytest.fail(
            "the test environment has no Kafka TLS+SASL listener (missing "
            f"{', '.join(missing)}); restart it with `scripts/testenv down; scripts/testenv up` "
            'and `eval "$(scripts/testenv env)"`'
        )
    ca_file = found["KMETER_TESTENV_KAFKA_CA_FILE"]
    if not Path(ca_file).is_file():
        pytest.fail(f"the test Kafka CA {ca_file} does not exist; is the environment stale?")
    return KafkaSettings(
        bootstrap_servers=found["KMETER_TESTENV_KAFKA_SECURE_BOOTSTRAP"],
        security_protocol="SASL_SSL",
        ssl_cafile=ca_file,
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=found["KMETER_TESTENV_KAFKA_SASL_USERNAME"],
        sasl_password=found["KMETER_TESTENV_KAFKA_SASL_PASSWORD"],
    )


@pytest.fixture(scope="session")
def admin_kubeconfig(testenv: Environment) -> Path:
    """An admin (``system:masters``) kubeconfig for the real API server."""
    return testenv.kubeconfig


@pytest.fixture(scope="session")
def kube_users(testenv: Environment) -> Iterator[KubeUsers]:
    """Makes kubeconfigs for identities bound to a given (Cluster)Role, and cleans them up."""
    users = KubeUsers(testenv)
    yield users
    users.delete_all()


@pytest.fixture
def kafka_broker(testenv: Environment) -> Iterator[KafkaBroker]:
    """The real broker, to stop and start in fault tests; always running again afterwards."""
    broker = KafkaBroker()
    yield broker
    broker.start()  # a no-op when it runs


@pytest.fixture(scope="session")
def kmeter_crds(testenv: Environment) -> None:
    """kmeter's CRDs, as generated in crds/, applied to the real API server."""
    install_crds(testenv)


@pytest.fixture(scope="session")
def operator_kubeconfig(testenv: Environment, kube_users: KubeUsers, kmeter_crds: None) -> Path:
    """A kubeconfig for an identity bound to exactly the chart's operator ClusterRole."""
    role = install_chart_rbac(testenv)
    return kube_users.kubeconfig_for("ClusterRole", role)


@pytest.fixture
def namespace(testenv: Environment) -> Iterator[str]:
    """A fresh namespace, deleted afterwards."""
    core = client.CoreV1Api(testenv.api_client())
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def operator(
    operator_kubeconfig: Path, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """``kmeter operator`` running under the chart's ClusterRole, for one test module."""
    process = OperatorProcess(
        operator_kubeconfig, kafka_bootstrap, tmp_path_factory.mktemp("operator")
    )
    process.start()
    yield process
    process.stop()
