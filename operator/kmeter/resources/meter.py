"""The Meter resource (``kmeter.io/v1alpha1``): what to meter, and the topic and workers doing it.

The model is the single source of the CRD ``meters.kmeter.io`` (see :mod:`.crd`): field
descriptions become the OpenAPI descriptions ``kubectl explain`` prints, and each
:class:`~kmeter.resources.base.Rule` becomes a CEL rule. The same model validates manifests in
Python for ``kmeter dev``. Docstrings of the model classes are user documentation (they are the
descriptions of the objects in ``kubectl explain``).

Rules, and where each is enforced on the API server:

* ``valueProperty`` required unless ``aggregation`` is ``COUNT``, and refused for ``COUNT``
  (CEL on ``spec``, ``fieldPath: .valueProperty``);
* ``valueProperty`` and ``groupBy`` values are JSONPaths of the grammar of
  :mod:`kmeter.core.jsonpath` — the CEL rule matches its :data:`~kmeter.core.jsonpath.PATH_PATTERN`,
  Python runs its parser, which explains what is wrong;
* ``groupBy`` keys are names (``^[A-Za-z_][A-Za-z0-9_]*$``, at most 63 characters), at most
  :data:`MAX_GROUP_BY` of them;
* ``topic.retention`` is a positive ISO 8601 duration of exact units (:data:`RETENTION_PATTERN`,
  RE2-compatible, the same language as :func:`kmeter.core.durations.parse_iso_duration` with at
  most six digits per unit);
* ``eventType``, ``aggregation``, ``valueProperty`` and ``windowSize`` are immutable: a transition
  rule on ``spec`` per field, comparing presence and value, so adding or removing
  ``valueProperty`` is refused too;
* ``metadata.name`` has at most :data:`kmeter.topics.MAX_METER_NAME_LENGTH` characters, so the
  meter's topic name fits Kafka's limit (CEL at the root: the only place that sees the name).

Every string, list and map has a maximum size: the API server estimates the worst-case cost of
each CEL rule from them and refuses a CRD whose rules could cost too much.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, WithJsonSchema
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from kmeter.core.aggregation import Aggregation
from kmeter.core.durations import parse_iso_duration
from kmeter.core.jsonpath import PATH_PATTERN, JSONPathError, compile_path
from kmeter.core.windows import WindowSize
from kmeter.resources.base import (
    API_VERSION,
    KubeModel,
    ObjectMeta,
    Rule,
    Transition,
    cel_string,
    fullmatch,
    immutable,
)
from kmeter.resources.status import MeterStatus
from kmeter.topics import MAX_METER_NAME_LENGTH

MAX_JSONPATH_LENGTH = 256
"""Longest ``valueProperty`` or ``groupBy`` value."""
MAX_GROUP_BY = 20
"""Most ``groupBy`` entries (the same bound as for a Quota's ``filterGroupBy``)."""
GROUP_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""A ``groupBy`` key: a name, as in OpenMeter."""
MAX_GROUP_KEY_LENGTH = 63

RETENTION_PATTERN = (
    r"^P(?:[0-9]{1,6}W)?(?:[0-9]{1,6}D)?(?:T(?:[0-9]{1,6}H)?(?:[0-9]{1,6}M)?(?:[0-9]{1,6}S)?)?$"
)
"""The form of ``topic.retention``. With it, the CEL rule also refuses durations that are zero
(:data:`ZERO_DURATION_PATTERN`, which also matches ``P`` and ``PT``) or end with ``T``."""
ZERO_DURATION_PATTERN = r"^P(?:0+W)?(?:0+D)?(?:T(?:0+H)?(?:0+M)?(?:0+S)?)?$"

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""A Kubernetes resource quantity (``500m``, ``1Gi``), the pattern kubebuilder uses."""


StorageWindowSize = Literal[WindowSize.MINUTE, WindowSize.HOUR, WindowSize.DAY]
"""The window sizes a Meter may store at (``kmeter.core.windows.STORAGE_SIZES``)."""


class DeletionPolicy(StrEnum):
    """What happens to a Meter's Kafka topic when the Meter is deleted."""

    RETAIN = "Retain"
    DELETE = "Delete"


def _valid_jsonpath(text: str) -> bool:
    try:
        compile_path(text)
    except JSONPathError as error:
        raise ValueError(f"{error.reason}, at character {error.position}") from None
    return True


def jsonpath_rule(field: str) -> Rule:
    """The rule that ``field`` holds a JSONPath of :mod:`kmeter.core.jsonpath`'s grammar."""
    return Rule(
        rule=f"self.matches({cel_string(PATH_PATTERN)})",
        message=(
            f"{field} must be a JSONPath into the event's data: $ followed by .name, [index] "
            "or ['name'] steps, such as $.usage.total_tokens or $.choices[0]['model'] "
            "(no wildcards, filters, slices or ..)"
        ),
        check=_valid_jsonpath,
    )


def group_keys_rule(field: str) -> Rule:
    """The rule that the keys of map ``field`` are group names (like ``model`` or ``api_key``)."""
    is_key = fullmatch(GROUP_KEY_PATTERN)
    return Rule(
        rule=(
            f"self.all(k, size(k) <= {MAX_GROUP_KEY_LENGTH} && "
            f"k.matches({cel_string(GROUP_KEY_PATTERN)}))"
        ),
        message=(
            f"{field} keys must be names of at most {MAX_GROUP_KEY_LENGTH} characters: "
            "a letter or _, then letters, digits or _ (such as model or api_key)"
        ),
        check=lambda keys: all(len(key) <= MAX_GROUP_KEY_LENGTH and is_key(key) for key in keys),
    )


_is_retention = fullmatch(RETENTION_PATTERN)


def _positive_duration(text: str) -> bool:
    return _is_retention(text) and parse_iso_duration(text) > timedelta(0)


RETENTION_RULE = Rule(
    rule=(
        f"self.matches({cel_string(RETENTION_PATTERN)}) && "
        f"!self.matches({cel_string(ZERO_DURATION_PATTERN)}) && !self.endsWith('T')"
    ),
    message=(
        "spec.topic.retention must be a positive ISO 8601 duration in weeks, days, hours, "
        "minutes or seconds, at most 6 digits each, such as P400D or PT36H "
        "(no years or months: they have no fixed length)"
    ),
    check=_positive_duration,
)


_is_quantity = fullmatch(QUANTITY_PATTERN)


def _quantity(value: Any) -> int | str:
    if type(value) is int or (type(value) is str and _is_quantity(value)):
        return value
    # The API server checks the pattern and says "should match '<pattern>'"; so does this.
    raise PydanticCustomError(
        "kmeter_quantity",
        "should match '{pattern}': a quantity such as 500m, 2 or 1Gi (quote decimals: '0.5')",
        {"pattern": QUANTITY_PATTERN},
    )


Quantity = Annotated[
    int | str,
    PlainValidator(_quantity, json_schema_input_type=int | str),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity: an integer, or a string such as ``500m`` or ``1Gi``."""

ResourceList = Annotated[dict[str, Quantity], Field(max_length=16)]


class WorkerResources(KubeModel):
    """Compute resources of each worker container, as in a container's resources."""

    requests: ResourceList | None = Field(
        default=None,
        description=(
            "Resources each worker is guaranteed, by name (cpu, memory, ...), such as "
            "{cpu: 100m, memory: 128Mi}."
        ),
    )
    limits: ResourceList | None = Field(
        default=None, description="The most each worker may use, by name, such as {memory: 512Mi}."
    )


class Workers(KubeModel):
    """The meter's aggregation workers: a Deployment the operator owns."""

    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "How many worker pods share the meter's work (default 1). 0 stops counting; "
            "events wait in Kafka until workers run again. Replicas beyond the ingest topic's "
            "partitions stay idle."
        ),
    )
    resources: WorkerResources | None = Field(
        default=None,
        description=(
            "Compute resources of each worker pod. When unset, the operator's defaults apply "
            "(requests cpu 100m and memory 128Mi, limit memory 512Mi)."
        ),
    )


class Topic(KubeModel):
    """The Kafka topic holding the meter's window totals."""

    partitions: int = Field(
        default=3,
        ge=1,
        le=2**31 - 1,
        description=(
            "Partitions of the meter's topics, at least (default 3): the namespace's ingest "
            "topic takes the largest number any of its Meters asks for, and the meter's own "
            "topics match it (co-partitioned), so they may have more. They can grow and never "
            "shrink: lowering the number leaves the topics as they are, and a condition says so."
        ),
    )
    replication_factor: int = Field(
        default=1,
        ge=1,
        le=2**15 - 1,
        description=(
            "Copies of each partition on distinct brokers (default 1, which suits a single "
            "broker; production clusters want 3). Set when the topic is created."
        ),
    )
    retention: Annotated[str, Field(max_length=32), RETENTION_RULE] = Field(
        default="P400D",
        description=(
            "How long Kafka keeps the meter's records, as an ISO 8601 duration of weeks, days, "
            "hours, minutes and seconds (default P400D: a year of invoices and disputes). "
            "Years and months are refused: they have no fixed length."
        ),
    )

    @property
    def retention_period(self) -> timedelta:
        """``retention`` as a :class:`~datetime.timedelta`."""
        return parse_iso_duration(self.retention)


ValuePath = Annotated[
    str, Field(min_length=1, max_length=MAX_JSONPATH_LENGTH), jsonpath_rule("spec.valueProperty")
]
GroupPath = Annotated[
    str,
    Field(min_length=1, max_length=MAX_JSONPATH_LENGTH),
    jsonpath_rule("each value of spec.groupBy"),
]
GroupBy = Annotated[
    dict[str, GroupPath], Field(max_length=MAX_GROUP_BY), group_keys_rule("spec.groupBy")
]


def _history_message(field: str) -> str:
    return (
        f"spec.{field} is immutable: changing it would rewrite the meter's history; "
        "create a new Meter instead"
    )


class MeterSpec(KubeModel):
    """What the meter counts and how, and the Kafka topic and workers doing it."""

    event_type: str = Field(
        min_length=1,
        max_length=256,
        description=(
            "The CloudEvents type of the events this meter counts, such as llm.completion; "
            "events of other types are ignored. Immutable."
        ),
    )
    aggregation: Aggregation = Field(
        description=(
            "How values are folded per subject, group and window: SUM adds valueProperty; "
            "COUNT counts events (no valueProperty); UNIQUE_COUNT counts distinct values "
            "(exactly); AVG, MIN and MAX average, take the lowest or highest value; LATEST "
            "keeps the value of the latest event by event time. Immutable."
        ),
    )
    value_property: ValuePath | None = Field(
        default=None,
        description=(
            "JSONPath of the value to aggregate in the event's data, such as "
            "$.usage.total_tokens. Required unless aggregation is COUNT, refused for COUNT. "
            "Numbers and numeric strings are read as exact decimals. Immutable."
        ),
    )
    group_by: GroupBy | None = Field(
        default=None,
        description=(
            "Dimensions to total separately, by name: each value is a JSONPath into the "
            "event's data, such as {model: $.model}. Names are letters, digits and _ "
            f"(not starting with a digit); at most {MAX_GROUP_BY}. An event without the "
            "property counts in the group with no value (null)."
        ),
    )
    window_size: StorageWindowSize = Field(
        default=WindowSize.MINUTE,
        description=(
            "The granularity totals are stored at (default MINUTE); queries roll them up to "
            "coarser windows (HOUR, DAY, MONTH), never finer ones. Immutable."
        ),
    )
    topic: Topic = Field(
        default_factory=Topic,
        json_schema_extra={"default": {}},
        description="The Kafka topic of the meter's window totals.",
    )
    workers: Workers = Field(
        default_factory=Workers,
        json_schema_extra={"default": {}},
        description="The aggregation workers that count the meter's events.",
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description=(
            "What deleting the Meter does to its Kafka topic: Retain (default) keeps it, and a "
            "new Meter of the same name carries on from it; Delete deletes it with its history."
        ),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule="self.aggregation == 'COUNT' || has(self.valueProperty)",
            message=(
                "spec.valueProperty is required unless spec.aggregation is COUNT: it is the "
                "JSONPath of the value to aggregate, such as $.usage.total_tokens"
            ),
            check=lambda spec: (
                spec.aggregation == Aggregation.COUNT or spec.value_property is not None
            ),
            field_path=".valueProperty",
            reason="FieldValueRequired",
        ),
        Rule(
            rule="self.aggregation != 'COUNT' || !has(self.valueProperty)",
            message=(
                "spec.valueProperty must not be set when spec.aggregation is COUNT: "
                "a COUNT meter counts events and reads no value"
            ),
            check=lambda spec: spec.aggregation != Aggregation.COUNT or spec.value_property is None,
            field_path=".valueProperty",
            reason="FieldValueForbidden",
        ),
    )
    cel_transitions: ClassVar[tuple[Transition, ...]] = (
        immutable("event_type", "eventType", _history_message("eventType")),
        immutable("aggregation", "aggregation", _history_message("aggregation")),
        immutable("value_property", "valueProperty", _history_message("valueProperty")),
        immutable("window_size", "windowSize", _history_message("windowSize")),
    )


class Meter(KubeModel):
    """A Meter declares what kmeter meters: the usage events of one CloudEvents type, aggregated
    per subject (customer), group and time window, into exact totals that billing, dashboards
    and Quotas read. The operator gives each Meter a Kafka topic of window totals and a
    Deployment of aggregation workers. Reference: docs/resources.md."""

    api_version: Literal["kmeter.io/v1alpha1"] = API_VERSION
    kind: Literal["Meter"] = "Meter"
    metadata: ObjectMeta
    spec: MeterSpec = Field(description="What the meter counts, and how.")
    status: MeterStatus | None = Field(
        default=None, description="What the operator observed; written by the operator."
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule=f"size(self.metadata.name) <= {MAX_METER_NAME_LENGTH}",
            message=(
                f"metadata.name: a Meter's name may have at most {MAX_METER_NAME_LENGTH} "
                "characters, so its Kafka topic name fits"
            ),
            check=lambda meter: len(meter.metadata.name) <= MAX_METER_NAME_LENGTH,
        ),
    )


__all__ = [
    "GROUP_KEY_PATTERN",
    "MAX_GROUP_BY",
    "MAX_JSONPATH_LENGTH",
    "QUANTITY_PATTERN",
    "RETENTION_PATTERN",
    "ZERO_DURATION_PATTERN",
    "Aggregation",
    "DeletionPolicy",
    "Meter",
    "MeterSpec",
    "Quantity",
    "StorageWindowSize",
    "Topic",
    "WindowSize",
    "WorkerResources",
    "Workers",
    "group_keys_rule",
    "jsonpath_rule",
]
