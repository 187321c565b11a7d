"""The injector's configuration, read from its environment (the chart sets it).

Sidecar defaults (a pod's annotations override most of them):

* ``KMETER_KAFKA_BOOTSTRAP`` (required): the Kafka bootstrap servers the sidecars produce to;
* ``KMETER_KAFKA_SECURITY_PROTOCOL`` (``PLAINTEXT``) and ``KMETER_KAFKA_SASL_MECHANISM``: how
  they connect; unless PLAINTEXT, sidecars mount the namespace's ``kmeter-kafka`` Secret for
  their credentials (:mod:`kmeter.kafka.tenant_credentials`);
* ``KMETER_SIDECAR_IMAGE`` (``ghcr.io/kmeter/kmeter-sidecar:<version>``): an image with
  ``kmeter-sidecar`` on its PATH; ``KMETER_SIDECAR_IMAGE_PULL_POLICY`` (``IfNotPresent``);
* ``KMETER_NATIVE_SIDECAR`` (``true``): an init container with ``restartPolicy: Always``
  (Kubernetes 1.29+); ``false``: a regular container;
* ``KMETER_SIDECAR_PORT`` (15080): where the sidecar listens — under the app port's *name*;
  ``KMETER_SIDECAR_ADMIN_PORT`` (15081): its ``/metrics``, ``/healthz``, ``/readyz``;
* ``KMETER_SIDECAR_SPOOL_SIZE`` (``512Mi``): the sidecar's ``KMETER_SPOOL_MAX_BYTES``;
* ``KMETER_SIDECAR_CPU_REQUEST`` (``50m``), ``_MEMORY_REQUEST`` (``64Mi``), ``_CPU_LIMIT``
  (none), ``_MEMORY_LIMIT`` (``256Mi``).

The server:

* ``KMETER_INJECTOR_EXCLUDED_NAMESPACES`` (``kube-system,kube-public,kube-node-lease``) and
  ``POD_NAMESPACE`` (its own): never injected, whatever the webhook's ``namespaceSelector``;
* ``KMETER_INJECTOR_HOST`` (``0.0.0.0``), ``KMETER_INJECTOR_PORT`` (8443): the HTTPS server;
* ``KMETER_INJECTOR_TLS_CERT_FILE``, ``_KEY_FILE`` (``/etc/kmeter/injector-tls/tls.crt``,
  ``tls.key``): the serving certificate, re-read when the files change;
* ``KMETER_INJECTOR_EVENTS`` (``true``): post Events about bad annotations;
* ``KMETER_INJECTOR_SHUTDOWN_DELAY`` (5 s): from SIGTERM (``/readyz`` answers 503) to closing;
* ``KMETER_LOG_LEVEL`` (``INFO``).

The sidecar-related values are defaults: a pod's annotations override most of them
(:mod:`kmeter.injector.annotations`). They are checked here with the same rules as the
annotations, so a bad install fails at start with a message that names the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kmeter import __version__
from kmeter.kafka import tenant_credentials
from kmeter.kafka.settings import KafkaSettings
from kmeter.resources.meter import QUANTITY_PATTERN
from kmeter_sidecar.config import ConfigError, parse_config

DEFAULT_EXCLUDED_NAMESPACES: Final = ("kube-system", "kube-public", "kube-node-lease")
DEFAULT_SIDECAR_PORT: Final = 15080
DEFAULT_SIDECAR_ADMIN_PORT: Final = 15081
_QUANTITY: Final = re.compile(QUANTITY_PATTERN)
_BOOTSTRAP: Final = re.compile(r"[^,\s:]+:[0-9]{1,5}(,[^,\s:]+:[0-9]{1,5})*")
SIDECAR_PLACEHOLDERS: Final = {
    "KMETER_KAFKA_BOOTSTRAP": "kafka:9092",
    "KMETER_NAMESPACE": "placeholder",
    "KMETER_POD_NAME": "placeholder",
}
"""What only the running pod knows, so the sidecar's parser can check the rest beforehand."""


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class SidecarDefaults:
    """How an injected sidecar looks unless a pod's annotations say otherwise."""

    kafka_bootstrap: str
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    image: str = f"ghcr.io/kmeter/kmeter-sidecar:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    native: bool = True
    port: int = DEFAULT_SIDECAR_PORT
    admin_port: int = DEFAULT_SIDECAR_ADMIN_PORT
    spool_size: str = "512Mi"
    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str = ""
    memory_limit: str = "256Mi"


@dataclass(frozen=True)
class InjectorSettings:
    """Everything ``kmeter injector`` needs: the sidecar's defaults and the server's own."""

    sidecar: SidecarDefaults
    excluded_namespaces: frozenset[str] = field(
        default_factory=lambda: frozenset(DEFAULT_EXCLUDED_NAMESPACES)
    )
    host: str = "0.0.0.0"
    port: int = 8443
    tls_cert_file: Path = Path("/etc/kmeter/injector-tls/tls.crt")
    tls_key_file: Path = Path("/etc/kmeter/injector-tls/tls.key")
    post_events: bool = True
    shutdown_delay: float = 5.0
    log_level: str = "INFO"

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> InjectorSettings:
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            value = env.get(name, "").strip()
            return value or default

        bootstrap = get("KMETER_KAFKA_BOOTSTRAP", "")
        if not bootstrap:
            raise SettingsError("KMETER_KAFKA_BOOTSTRAP is not set: give Kafka's host:port")
        if _BOOTSTRAP.fullmatch(bootstrap) is None:
            raise SettingsError(
                f"KMETER_KAFKA_BOOTSTRAP={bootstrap!r} is not host:port[,host:port...]"
            )
        protocol = get("KMETER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
        mechanism = get("KMETER_KAFKA_SASL_MECHANISM", "") or None
        try:  # the sidecar's own checks: its credentials come from the mounted Secret
            KafkaSettings(
                bootstrap,
                security_protocol=protocol,
                sasl_mechanism=mechanism,
                credentials_dir=tenant_credentials.CREDENTIALS_DIR,
            )
        except ValueError as error:
            raise SettingsError(str(error)) from None
        sidecar = SidecarDefaults(
            kafka_bootstrap=bootstrap,
            kafka_security_protocol=protocol,
            kafka_sasl_mechanism=mechanism if protocol.startswith("SASL_") else None,
            image=get("KMETER_SIDECAR_IMAGE", SidecarDefaults.image),
            image_pull_policy=_choice(
                "KMETER_SIDECAR_IMAGE_PULL_POLICY",
                get("KMETER_SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent"),
                ("Always", "IfNotPresent", "Never"),
            ),
            native=_boolean("KMETER_NATIVE_SIDECAR", get("KMETER_NATIVE_SIDECAR", "true")),
            port=_port(
                "KMETER_SIDECAR_PORT", get("KMETER_SIDECAR_PORT", str(DEFAULT_SIDECAR_PORT))
            ),
            admin_port=_port(
                "KMETER_SIDECAR_ADMIN_PORT",
                get("KMETER_SIDECAR_ADMIN_PORT", str(DEFAULT_SIDECAR_ADMIN_PORT)),
            ),
            spool_size=_spool_size(get("KMETER_SIDECAR_SPOOL_SIZE", "512Mi")),
            cpu_request=_quantity(
                "KMETER_SIDECAR_CPU_REQUEST", get("KMETER_SIDECAR_CPU_REQUEST", "50m")
            ),
            memory_request=_quantity(
                "KMETER_SIDECAR_MEMORY_REQUEST", get("KMETER_SIDECAR_MEMORY_REQUEST", "64Mi")
            ),
            cpu_limit=_quantity(
                "KMETER_SIDECAR_CPU_LIMIT", get("KMETER_SIDECAR_CPU_LIMIT", ""), empty=True
            ),
            memory_limit=_quantity(
                "KMETER_SIDECAR_MEMORY_LIMIT",
                get("KMETER_SIDECAR_MEMORY_LIMIT", "256Mi"),
                empty=True,
            ),
        )
        if sidecar.port == sidecar.admin_port:
            raise SettingsError("KMETER_SIDECAR_PORT and KMETER_SIDECAR_ADMIN_PORT must differ")
        excluded = {
            name.strip()
            for name in get(
                "KMETER_INJECTOR_EXCLUDED_NAMESPACES", ",".join(DEFAULT_EXCLUDED_NAMESPACES)
            ).split(",")
            if name.strip()
        }
        if env.get("POD_NAMESPACE"):
            excluded.add(env["POD_NAMESPACE"])
        return cls(
            sidecar=sidecar,
            excluded_namespaces=frozenset(excluded),
            host=get("KMETER_INJECTOR_HOST", "0.0.0.0"),
            port=_port("KMETER_INJECTOR_PORT", get("KMETER_INJECTOR_PORT", "8443")),
            tls_cert_file=Path(
                get("KMETER_INJECTOR_TLS_CERT_FILE", "/etc/kmeter/injector-tls/tls.crt")
            ),
            tls_key_file=Path(
                get("KMETER_INJECTOR_TLS_KEY_FILE", "/etc/kmeter/injector-tls/tls.key")
            ),
            post_events=_boolean("KMETER_INJECTOR_EVENTS", get("KMETER_INJECTOR_EVENTS", "true")),
            shutdown_delay=_seconds(
                "KMETER_INJECTOR_SHUTDOWN_DELAY", get("KMETER_INJECTOR_SHUTDOWN_DELAY", "5")
            ),
            log_level=_choice(
                "KMETER_LOG_LEVEL",
                get("KMETER_LOG_LEVEL", "INFO").upper(),
                ("DEBUG", "INFO", "WARNING", "ERROR"),
            ),
        )


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


def _boolean(name: str, value: str) -> bool:
    return _choice(name, value.lower(), ("true", "false")) == "true"


def _port(name: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise SettingsError(f"{name}={value!r} is not a port number 1-65535")
    return int(value)


def _quantity(name: str, value: str, *, empty: bool = False) -> str:
    if (value == "" and empty) or _QUANTITY.fullmatch(value):
        return value
    raise SettingsError(f"{name}={value!r} is not a Kubernetes quantity such as 50m or 64Mi")


def _spool_size(value: str) -> str:
    """Checked by the sidecar's own parser, which reads it (``KMETER_SPOOL_MAX_BYTES``)."""
    try:
        parse_config([], {**SIDECAR_PLACEHOLDERS, "KMETER_SPOOL_MAX_BYTES": value})
    except ConfigError as error:
        message = str(error).replace("KMETER_SPOOL_MAX_BYTES", "KMETER_SIDECAR_SPOOL_SIZE")
        raise SettingsError(message) from None
    return value


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a number of seconds") from None
    if seconds < 0:
        raise SettingsError(f"{name}={value!r} must not be negative")
    return seconds
