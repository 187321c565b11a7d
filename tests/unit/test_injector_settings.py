"""The injector's environment, and the errors a bad one gets at start."""

from __future__ import annotations

import pytest

from kmeter.injector.settings import InjectorSettings, SettingsError

BASE = {"KMETER_KAFKA_BOOTSTRAP": "kafka:9092"}


def test_defaults_and_the_own_namespace_is_excluded() -> None:
    settings = InjectorSettings.from_environment({**BASE, "POD_NAMESPACE": "kmeter-system"})
    assert settings.sidecar.native is True
    assert (settings.sidecar.port, settings.sidecar.admin_port) == (15080, 15081)
    assert settings.excluded_namespaces == {
        "kube-system", "kube-public", "kube-node-lease", "kmeter-system",
    }  # fmt: skip
    assert settings.port == 8443


def test_every_variable_is_read() -> None:
    settings = InjectorSettings.from_environment(
        {
            **BASE,
            "KMETER_NATIVE_SIDECAR": "false",
            "KMETER_SIDECAR_IMAGE": "registry/sidecar:2",
            "KMETER_SIDECAR_PORT": "4000",
            "KMETER_SIDECAR_ADMIN_PORT": "4001",
            "KMETER_SIDECAR_SPOOL_SIZE": "1Gi",
            "KMETER_SIDECAR_CPU_LIMIT": "1",
            "KMETER_INJECTOR_EXCLUDED_NAMESPACES": "infra, monitoring",
            "KMETER_INJECTOR_SHUTDOWN_DELAY": "0",
        }
    )
    assert settings.sidecar.native is False
    assert settings.sidecar.image == "registry/sidecar:2"
    assert (settings.sidecar.port, settings.sidecar.admin_port) == (4000, 4001)
    assert settings.sidecar.spool_size == "1Gi"
    assert settings.sidecar.cpu_limit == "1"
    assert settings.excluded_namespaces == {"infra", "monitoring"}
    assert settings.shutdown_delay == 0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "KMETER_KAFKA_BOOTSTRAP is not set"),
        ({"KMETER_KAFKA_BOOTSTRAP": "kafka"}, "is not host:port"),
        ({**BASE, "KMETER_NATIVE_SIDECAR": "yes"}, "KMETER_NATIVE_SIDECAR='yes' is not one of"),
        ({**BASE, "KMETER_SIDECAR_PORT": "0"}, "KMETER_SIDECAR_PORT='0' is not a port"),
        ({**BASE, "KMETER_SIDECAR_PORT": "15081"}, "must differ"),
        (
            {**BASE, "KMETER_SIDECAR_SPOOL_SIZE": "lots"},
            "KMETER_SIDECAR_SPOOL_SIZE: expected a size",
        ),
        ({**BASE, "KMETER_SIDECAR_MEMORY_LIMIT": "1 GB"}, "is not a Kubernetes quantity"),
        ({**BASE, "KMETER_LOG_LEVEL": "loud"}, "KMETER_LOG_LEVEL='LOUD' is not one of"),
    ],
)
def test_a_bad_variable_is_refused_with_its_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        InjectorSettings.from_environment(env)
