"""How every kmeter process connects to Kafka: address, TLS and SASL.

One :class:`KafkaSettings` per process, read from ``KMETER_KAFKA_*`` variables
(:meth:`KafkaSettings.from_environment`); every aiokafka client takes its keyword arguments
from :meth:`KafkaSettings.client_options`, so TLS and SASL reach all of them at once.

Credentials come one of two ways:

* **Variables** ``KMETER_KAFKA_SASL_USERNAME`` / ``_PASSWORD`` and a mounted CA file
  ``KMETER_KAFKA_CA_FILE``: the operator and the usage API, whose Deployments the chart writes
  with ``secretKeyRef``.
* **A directory** ``KMETER_KAFKA_CREDENTIALS_DIR`` holding the files :data:`USERNAME_FILE`,
  :data:`PASSWORD_FILE` and :data:`CA_FILE`: workers and sidecars, which run in tenant
  namespaces, where the operator writes the Secret :data:`TENANT_SECRET` that the kubelet
  mounts there (:mod:`kmeter.kafka.tenant_credentials`). The files are read at every
  :meth:`client_options` call — that is, at every connection attempt — so a sidecar started
  before the Secret existed, or after the credentials were rotated, picks them up without a
  restart (the kubelet refreshes Secret volumes within about a minute). Until then,
  :meth:`client_options` raises :class:`KafkaCredentialsMissing`, which callers treat like
  Kafka being unreachable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

DEFAULT_CLIENT_ID = "kmeter-operator"
DEFAULT_REQUEST_TIMEOUT_MS = 10_000
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# The Secret the operator keeps in each namespace with Meters, and its keys (= file names
# when mounted as a volume).
TENANT_SECRET = "kmeter-kafka"
USERNAME_FILE = "sasl-username"
PASSWORD_FILE = "sasl-password"
CA_FILE = "ca.crt"


class KafkaCredentialsMissing(ValueError):
    """The credentials directory lacks a file the security protocol needs (yet)."""


@dataclass(frozen=True)
class KafkaSettings:
    """How kmeter connects to Kafka.

    ``bootstrap_servers`` is ``host:port[,host:port...]``. ``request_timeout_ms`` bounds every
    single request (connecting included); an operation made of several requests, like
    reconciling a topic, takes a bounded number of them.
    """

    bootstrap_servers: str
    client_id: str = DEFAULT_CLIENT_ID
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    credentials_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("Kafka bootstrap servers are empty: give host:port[,host:port]")
        if self.request_timeout_ms <= 0:
            raise ValueError(f"request_timeout_ms must be positive, not {self.request_timeout_ms}")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"Kafka security protocol {self.security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        if not self.uses_sasl:
            return
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(
                f"Kafka security protocol {self.security_protocol} needs a SASL mechanism, one "
                f"of {', '.join(SASL_MECHANISMS)} (got {self.sasl_mechanism!r})"
            )
        # With a credentials directory the files may appear later: checked per connection.
        if self.credentials_dir is None and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"Kafka security protocol {self.security_protocol} needs a SASL username and "
                "password"
            )

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, *, client_id: str = DEFAULT_CLIENT_ID
    ) -> KafkaSettings:
        """Settings from ``KMETER_KAFKA_*`` variables, as the Helm chart and the operator set them.

        ``KMETER_KAFKA_BOOTSTRAP``, ``KMETER_KAFKA_SECURITY_PROTOCOL`` (PLAINTEXT, SSL,
        SASL_PLAINTEXT, SASL_SSL), ``KMETER_KAFKA_CA_FILE`` (a mounted CA bundle for SSL),
        ``KMETER_KAFKA_SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512),
        ``KMETER_KAFKA_SASL_USERNAME``, ``KMETER_KAFKA_SASL_PASSWORD`` (from a Secret), or
        ``KMETER_KAFKA_CREDENTIALS_DIR`` instead of the last three.
        Raises :class:`ValueError` naming what is wrong.
        """
        env = os.environ if env is None else env
        return cls(
            bootstrap_servers=env.get("KMETER_KAFKA_BOOTSTRAP", ""),
            client_id=client_id,
            security_protocol=env.get("KMETER_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT",
            ssl_cafile=env.get("KMETER_KAFKA_CA_FILE") or None,
            sasl_mechanism=env.get("KMETER_KAFKA_SASL_MECHANISM") or None,
            sasl_username=env.get("KMETER_KAFKA_SASL_USERNAME") or None,
            sasl_password=env.get("KMETER_KAFKA_SASL_PASSWORD") or None,
            credentials_dir=env.get("KMETER_KAFKA_CREDENTIALS_DIR") or None,
        )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in {"SSL", "SASL_SSL"}

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def request_timeout_s(self) -> float:
        return self.request_timeout_ms / 1000

    @property
    def operation_timeout_ms(self) -> int:
        """How long the broker may work on a create or delete before it answers.

        Half the request timeout, so that its answer (possibly "not done yet") arrives before
        the client gives up on the request.
        """
        return max(1, self.request_timeout_ms // 2)

    def ca_file(self) -> str | None:
        """The CA bundle to trust: ``ssl_cafile``, else the credentials directory's ``ca.crt``
        when there is one, else None (the system's trust store)."""
        if self.ssl_cafile:
            return self.ssl_cafile
        if self.credentials_dir is not None:
            candidate = Path(self.credentials_dir) / CA_FILE
            if candidate.is_file() and candidate.stat().st_size > 0:
                return str(candidate)
        return None

    def sasl_credentials(self) -> tuple[str, str]:
        """(username, password): from the credentials directory when set, else the fields.

        Raises :class:`KafkaCredentialsMissing` naming the missing file.
        """
        if self.credentials_dir is None:
            return self.sasl_username or "", self.sasl_password or ""
        directory = Path(self.credentials_dir)
        found = []
        for name in (USERNAME_FILE, PASSWORD_FILE):
            try:
                value = (directory / name).read_text().strip()
            except OSError:
                value = ""
            if not value:
                raise KafkaCredentialsMissing(
                    f"Kafka SASL credentials are missing: {directory / name} is absent or "
                    f"empty (the operator writes them to the Secret {TENANT_SECRET} of every "
                    "namespace with a Meter)"
                )
            found.append(value)
        return found[0], found[1]

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments for an aiokafka client (admin, producer or consumer).

        Every client kmeter makes takes its options from here. Raises
        :class:`KafkaCredentialsMissing` when SASL credentials from a directory are not there.
        """
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            options["ssl_context"] = create_ssl_context(cafile=self.ca_file())
        if self.uses_sasl:
            username, password = self.sasl_credentials()
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = username
            options["sasl_plain_password"] = password
        return options
