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

REPO = Path(__file__).resolve().parent.parent


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
