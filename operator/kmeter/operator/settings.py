"""The operator's configuration, from the environment (the chart sets it).

The tenant SASL credentials are what the operator writes for workers and sidecars
(:mod:`kmeter.kafka.tenant_credentials`); with a SASL protocol they are required, never
silently the operator's own.

| variable | meaning | default |
|---|---|---|
| ``KMETER_KAFKA_BOOTSTRAP`` | Kafka bootstrap servers, ``host:port[,host:port]`` | required |
| ``KMETER_KAFKA_SECURITY_PROTOCOL`` … | TLS and SASL: see ``KafkaSettings`` | PLAINTEXT |
| ``KMETER_KAFKA_TENANT_SASL_USERNAME``, ``_PASSWORD`` | SASL of workers, sidecars | with SASL |
| ``KMETER_IMAGE`` | image of the aggregation workers | ``ghcr.io/kmeter/kmeter:<version>`` |
| ``KMETER_IMAGE_PULL_POLICY`` | their ``imagePullPolicy`` | ``IfNotPresent`` |
| ``KMETER_RESYNC_SECONDS`` | how often every resource is reconciled to repair drift | ``30`` |
| ``KMETER_METRICS_PORT`` | port of ``/metrics`` (Prometheus) | ``9090`` |
| ``KMETER_HEALTH_PORT`` | port of the liveness endpoint ``/healthz`` | ``8080`` |
| ``KMETER_LOG_LEVEL`` | DEBUG, INFO, WARNING or ERROR | ``INFO`` |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kmeter import __version__
from kmeter.kafka.settings import KafkaSettings


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class OperatorSettings:
    kafka: KafkaSettings
    worker_image: str
    image_pull_policy: str = "IfNotPresent"
    resync_seconds: float = 30.0
    metrics_port: int = 9090
    health_port: int = 8080
    log_level: str = "INFO"
    tenant_sasl_username: str | None = None
    tenant_sasl_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kafka.uses_sasl and not (self.tenant_sasl_username and self.tenant_sasl_password):
            raise SettingsError(
                f"Kafka security protocol {self.kafka.security_protocol} needs the tenant SASL "
                "credentials too (KMETER_KAFKA_TENANT_SASL_USERNAME and _PASSWORD; the chart's "
                "kafka.sasl.tenantSecret): they are copied into every metered namespace for its "
                "workers and sidecars, so they should not be the operator's own — name the "
                "same Secret only if you accept that (docs/install.md)"
            )

    def tenant_sasl_credentials(self) -> tuple[str, str]:
        """The SASL username and password written for workers and sidecars."""
        return self.tenant_sasl_username or "", self.tenant_sasl_password or ""

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap_servers

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        if not env.get("KMETER_KAFKA_BOOTSTRAP", "").strip():
            raise SettingsError("KMETER_KAFKA_BOOTSTRAP is not set: give Kafka's host:port")
        try:
            kafka = KafkaSettings.from_environment(env, client_id="kmeter-operator")
        except ValueError as error:
            raise SettingsError(str(error)) from None
        tenant_username, tenant_password = _tenant_credentials(env)
        return cls(
            kafka=kafka,
            worker_image=env.get("KMETER_IMAGE", f"ghcr.io/kmeter/kmeter:{__version__}"),
            image_pull_policy=env.get("KMETER_IMAGE_PULL_POLICY", "IfNotPresent"),
            resync_seconds=_number(env, "KMETER_RESYNC_SECONDS", 30.0),
            metrics_port=int(_number(env, "KMETER_METRICS_PORT", 9090)),
            health_port=int(_number(env, "KMETER_HEALTH_PORT", 8080)),
            log_level=_log_level(env.get("KMETER_LOG_LEVEL", "INFO")),
            tenant_sasl_username=tenant_username,
            tenant_sasl_password=tenant_password,
        )


def _tenant_credentials(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    username = env.get("KMETER_KAFKA_TENANT_SASL_USERNAME") or None
    password = env.get("KMETER_KAFKA_TENANT_SASL_PASSWORD") or None
    if (username is None) != (password is None):
        raise SettingsError(
            "KMETER_KAFKA_TENANT_SASL_USERNAME and KMETER_KAFKA_TENANT_SASL_PASSWORD go together: "
            "set both or neither"
        )
    return username, password


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"KMETER_LOG_LEVEL={raw!r} is not DEBUG, INFO, WARNING or ERROR")
    return level


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r} must be positive")
    return value


def retry_delay(retry: int) -> float:
    """Backoff between retries of a failing reconcile: 1, 2, 4 … seconds, at most a minute."""
    return float(min(60, 2 ** min(retry, 6)))
