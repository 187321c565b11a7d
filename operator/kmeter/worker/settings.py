"""The worker's configuration, read from its environment (the operator sets it).

* ``KMETER_KAFKA_BOOTSTRAP`` (required): Kafka bootstrap servers;
* ``KMETER_METER`` (required): the Meter's ``spec`` as JSON, camelCase, as the operator writes;
* ``KMETER_DEDUP_HORIZON`` (``PT24H``): how long (source, id) pairs are remembered, ISO 8601;
* ``KMETER_DEDUP_MAX_ENTRIES`` (2,000,000): the most pairs remembered *per ingest partition*;
* ``KMETER_METRICS_PORT`` (9090): ``/metrics``;
* ``KMETER_HEALTH_PORT`` (8080): ``/healthz`` and ``/readyz``;
* ``KMETER_MAX_BATCH`` (20,000): the most records one ``getmany`` returns (larger batches
  amortize the per-batch cost: 10,000 gave ~20 % less throughput in `bench/worker.py`);
* ``KMETER_SESSION_TIMEOUT_MS`` (10,000): the consumer-group session timeout;
* ``POD_NAME`` (``kmeter-worker``): the client id Kafka sees.

``KMETER_QUOTAS_FILE`` is set by the operator for quota evaluation, which is not part of the
worker yet; it is ignored.

The dedup bound is per partition, not per process, so that the decisions for partition *p* are
the same whichever replica owns it: memory is ``max_entries`` times the partitions owned at most.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import orjson
from pydantic import ValidationError

from kmeter.core.dedup import DEFAULT_HORIZON, DEFAULT_MAX_ENTRIES
from kmeter.core.durations import parse_iso_duration
from kmeter.core.fold import MeterSpec as FoldMeter
from kmeter.kafka.admin import KafkaSettings
from kmeter.resources.meter import MeterSpec

DEFAULT_METRICS_PORT = 9090
DEFAULT_HEALTH_PORT = 8080
DEFAULT_MAX_BATCH = 20_000
DEFAULT_SESSION_TIMEOUT_MS = 10_000


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
    dedup_max_entries: int = DEFAULT_MAX_ENTRIES
    metrics_port: int = DEFAULT_METRICS_PORT
    health_port: int = DEFAULT_HEALTH_PORT
    max_batch: int = DEFAULT_MAX_BATCH
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS

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
            kafka=KafkaSettings(
                bootstrap, client_id=environ.get("POD_NAME", "").strip() or "kmeter-worker"
            ),
            dedup_horizon=_duration(environ, "KMETER_DEDUP_HORIZON", DEFAULT_HORIZON),
            dedup_max_entries=_integer(environ, "KMETER_DEDUP_MAX_ENTRIES", DEFAULT_MAX_ENTRIES),
            metrics_port=_integer(environ, "KMETER_METRICS_PORT", DEFAULT_METRICS_PORT, low=0),
            health_port=_integer(environ, "KMETER_HEALTH_PORT", DEFAULT_HEALTH_PORT, low=0),
            max_batch=_integer(environ, "KMETER_MAX_BATCH", DEFAULT_MAX_BATCH),
            session_timeout_ms=_integer(
                environ, "KMETER_SESSION_TIMEOUT_MS", DEFAULT_SESSION_TIMEOUT_MS, low=1000
            ),
        )
        try:
            settings.fold_meter()
        except ValueError as error:
            raise SettingsError(f"KMETER_METER: {error}") from None
        return settings


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
