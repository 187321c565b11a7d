"""The worker's configuration, read from its environment (the operator sets it).

* ``KMETER_KAFKA_BOOTSTRAP`` (required): Kafka bootstrap servers;
* ``KMETER_METER`` (required): the Meter's ``spec`` as JSON, camelCase, as the operator writes;
* ``KMETER_DEDUP_HORIZON`` (``PT24H``): how long (source, id) pairs are remembered, ISO 8601;
* ``KMETER_DEDUP_MAX_ENTRIES``: the most pairs remembered *per ingest partition*; unset, it is
  derived from ``KMETER_MEMORY_LIMIT`` (bytes: the container's memory limit, which the operator
  passes through the downward API) and the ingest topic's partition count
  (:mod:`kmeter.worker.memory`), else 2,000,000;
* ``KMETER_KAFKA_SECURITY_PROTOCOL``, ``KMETER_KAFKA_CA_FILE``, ``KMETER_KAFKA_SASL_*``,
  ``KMETER_KAFKA_CREDENTIALS_DIR``: TLS and SASL, as
  :meth:`kmeter.kafka.settings.KafkaSettings.from_environment` reads them (the operator sets
  the credentials directory: the namespace's ``kmeter-kafka`` Secret, mounted);
* ``KMETER_METRICS_PORT`` (9090): ``/metrics``;
* ``KMETER_HEALTH_PORT`` (8080): ``/healthz`` and ``/readyz``;
* ``KMETER_MAX_BATCH`` (20,000): the most records one ``getmany`` returns (larger batches
  amortize the per-batch cost: 10,000 gave ~20 % less throughput in `bench/worker.py`);
* ``KMETER_SESSION_TIMEOUT_MS`` (10,000): the consumer-group session timeout;
* ``POD_NAME`` (``kmeter-worker``): the client id Kafka sees.

* ``KMETER_QUOTAS_FILE`` (unset: no quotas): the Quotas on this Meter, as the operator writes
  them to the mounted ConfigMap (see :mod:`kmeter.worker.quotas`);
* ``KMETER_CLOCK_OFFSET_SECONDS`` (0): added to the wall clock for quota periods — a testing and
  demo knob (docs/quotas.md);
* ``KMETER_SECRETS_DIR`` (``/etc/kmeter/secrets``): where webhook signing keys are mounted, as
  ``<secret name>/<key>``.

The dedup bound is per partition, not per process, so that the decisions for partition *p* are
the same whichever replica owns it: memory is ``max_entries`` times the partitions owned at most.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta

import orjson
from pydantic import ValidationError

from kmeter.core.dedup import DEFAULT_HORIZON, DEFAULT_MAX_ENTRIES
from kmeter.core.durations import parse_iso_duration
from kmeter.core.fold import MeterSpec as FoldMeter
from kmeter.kafka.settings import KafkaSettings
from kmeter.resources.meter import MeterSpec
from kmeter.worker.memory import dedup_max_entries
from kmeter.worker.quotas import clock_offset

DEFAULT_METRICS_PORT = 9090
DEFAULT_HEALTH_PORT = 8080
DEFAULT_MAX_BATCH = 20_000
DEFAULT_SESSION_TIMEOUT_MS = 10_000
DEFAULT_SECRETS_DIR = "/etc/kmeter/secrets"


class SettingsError(ValueError):
    """The environment does not describe a runnable worker; the message says what to fix."""


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the worker needs to run one Meter."""

    namespace: str
    meter_name: str
    meter: MeterSpec
    kafka: KafkaSettings
    dedup_horizon: timedelta = DEFAULT_HORIZON
    dedup_max_entries: int | None = None  # None: from memory_limit, else DEFAULT_MAX_ENTRIES
    memory_limit: int | None = None
    metrics_port: int = DEFAULT_METRICS_PORT
    health_port: int = DEFAULT_HEALTH_PORT
    max_batch: int = DEFAULT_MAX_BATCH
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS
    quotas_file: str | None = None
    clock_offset: timedelta = timedelta(0)
    secrets_dir: str = DEFAULT_SECRETS_DIR

    def dedup_bound(self, partitions: int) -> int:
        """The pairs remembered per partition when the ingest topic has ``partitions``."""
        if self.dedup_max_entries is not None:
            return self.dedup_max_entries
        derived = dedup_max_entries(self.memory_limit, partitions)
        return DEFAULT_MAX_ENTRIES if derived is None else derived

    @property
    def retention(self) -> timedelta:
        """Events older than this (before the batch's log time) go to the dead-letter topic."""
        return self.meter.topic.retention_period

    def fold_meter(self) -> FoldMeter:
        """The Meter as the pure fold needs it."""
        return FoldMeter.create(
            event_type=self.meter.event_type,
            aggregation=self.meter.aggregation,
            window_size=self.meter.window_size,
            value_property=self.meter.value_property,
            group_by=self.meter.group_by,
        )

    @classmethod
    def from_environment(
        cls, namespace: str, meter_name: str, environ: Mapping[str, str]
    ) -> WorkerSettings:
        """Read and validate the environment; raise :class:`SettingsError` with every reason."""
        bootstrap = environ.get("KMETER_KAFKA_BOOTSTRAP", "").strip()
        if not bootstrap:
            raise SettingsError("KMETER_KAFKA_BOOTSTRAP is not set: give host:port[,host:port]")
        raw_meter = environ.get("KMETER_METER", "")
        if not raw_meter.strip():
            raise SettingsError("KMETER_METER is not set: the Meter's spec as JSON")
        try:
            meter = MeterSpec.model_validate(orjson.loads(raw_meter))
        except orjson.JSONDecodeError as error:
            raise SettingsError(f"KMETER_METER is not JSON: {error}") from None
        except ValidationError as error:
            raise SettingsError(f"KMETER_METER is not a valid Meter spec: {error}") from None
        settings = cls(
            namespace=namespace,
            meter_name=meter_name,
            meter=meter,
            kafka=_kafka(environ, bootstrap),
            dedup_horizon=_duration(environ, "KMETER_DEDUP_HORIZON", DEFAULT_HORIZON),
            dedup_max_entries=_optional_integer(environ, "KMETER_DEDUP_MAX_ENTRIES"),
            memory_limit=_optional_integer(environ, "KMETER_MEMORY_LIMIT"),
            metrics_port=_integer(environ, "KMETER_METRICS_PORT", DEFAULT_METRICS_PORT, low=0),
            health_port=_integer(environ, "KMETER_HEALTH_PORT", DEFAULT_HEALTH_PORT, low=0),
            max_batch=_integer(environ, "KMETER_MAX_BATCH", DEFAULT_MAX_BATCH),
            session_timeout_ms=_integer(
                environ, "KMETER_SESSION_TIMEOUT_MS", DEFAULT_SESSION_TIMEOUT_MS, low=1000
            ),
            quotas_file=environ.get("KMETER_QUOTAS_FILE", "").strip() or None,
            clock_offset=_clock_offset(environ),
            secrets_dir=environ.get("KMETER_SECRETS_DIR", "").strip() or DEFAULT_SECRETS_DIR,
        )
        try:
            settings.fold_meter()
        except ValueError as error:
            raise SettingsError(f"KMETER_METER: {error}") from None
        return settings


def _clock_offset(environ: Mapping[str, str]) -> timedelta:
    try:
        return clock_offset(environ)
    except ValueError as error:
        raise SettingsError(str(error)) from None


def _kafka(environ: Mapping[str, str], bootstrap: str) -> KafkaSettings:
    client_id = environ.get("POD_NAME", "").strip() or "kmeter-worker"
    try:
        kafka = KafkaSettings.from_environment(environ, client_id=client_id)
    except ValueError as error:
        raise SettingsError(str(error)) from None
    return replace(kafka, bootstrap_servers=bootstrap)


def _optional_integer(environ: Mapping[str, str], name: str) -> int | None:
    if not environ.get(name, "").strip():
        return None
    return _integer(environ, name, 0)


def _integer(environ: Mapping[str, str], name: str, default: int, *, low: int = 1) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r} is not an integer") from None
    if value < low:
        raise SettingsError(f"{name}={value} must be at least {low}")
    return value


def _duration(environ: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = parse_iso_duration(text)
    except ValueError as error:
        raise SettingsError(f"{name}: {error}") from None
    if value <= timedelta(0):
        raise SettingsError(f"{name}={text} must be positive")
    return value
