"""The status of Meters and Quotas: conditions and ``observedGeneration``, written by the operator.

Conditions have the shape of ``metav1.Condition`` (the kubebuilder convention), with its
limits and patterns, so tools that read conditions (``kubectl wait --for=condition=Ready``,
Argo CD, Flux) understand them. ``conditions`` is a list-map keyed by ``type``: the API server
refuses two conditions of one type, and server-side apply merges them by type.

Users never write status: the API server ignores ``status`` in a create or update of the main
resource (the status subresource is on). The models exist so the schema keeps what the operator
writes — the API server *prunes* any status field the schema does not declare — and so code can
read a status with types. Every field is optional: a new object has no status yet.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from kmeter.resources.base import KubeModel, UniqueList


class ConditionStatus(StrEnum):
    """Whether a condition holds: True, False, or Unknown (not yet known)."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    """One observation about one aspect of the object (metav1.Condition)."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description=(
            "The aspect this condition is about, in CamelCase: Ready (the object as a whole) "
            "or one of its parts, such as TopicsReady."
        ),
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The metadata.generation this condition was computed for: when it is lower than "
            "the object's generation, the condition is out of date."
        ),
    )
    last_transition_time: datetime = Field(
        description="When status last changed (not when the condition was last checked)."
    )
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description=(
            "Why the condition has its status, as a CamelCase word for programs "
            "(e.g. KafkaUnavailable, MeterNotFound)."
        ),
    )
    message: str = Field(
        max_length=32768, description="Why the condition has its status, for people."
    )


Conditions = Annotated[list[Condition], Field(max_length=32), UniqueList("type")]


class MeterTopics(KubeModel):
    """The Kafka topics the Meter uses."""

    ingest: str | None = Field(
        default=None,
        max_length=249,
        description="The namespace's usage-event topic, which the meter's workers consume.",
    )
    output: str | None = Field(
        default=None,
        max_length=249,
        description="The meter's own topic of window totals (compacted).",
    )
    dedup: str | None = Field(
        default=None,
        max_length=249,
        description="The meter's own topic of the event ids it counted, for dedup across restarts.",
    )
    dead_letter: str | None = Field(
        default=None,
        max_length=249,
        description="The namespace's topic of events the workers could not count, with reasons.",
    )


class _Status(KubeModel):
    """What every status has: the generation the operator last reconciled."""

    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The metadata.generation the operator last reconciled: when it is lower than "
            "the object's generation, the latest spec is not in effect yet."
        ),
    )


class MeterStatus(_Status):
    """What the operator observed of the Meter, written by the operator."""

    conditions: Conditions | None = Field(
        default=None,
        description=(
            "The Meter's conditions: Ready (all parts ready) and one per part, each with a "
            "reason and a message."
        ),
    )
    topics: MeterTopics | None = Field(default=None, description="The Kafka topics of the Meter.")
    worker_deployment: str | None = Field(
        default=None,
        max_length=253,
        description="The name of the Deployment of the meter's aggregation workers.",
    )


class QuotaStatus(_Status):
    """What the operator observed of the Quota, written by the operator."""

    conditions: Conditions | None = Field(
        default=None,
        description=(
            "The Quota's conditions: Ready, and MeterFound (whether spec.meterRef names a Meter "
            "of this namespace whose aggregation a limit makes sense for)."
        ),
    )
    meter: str | None = Field(
        default=None,
        max_length=253,
        description="The name of the Meter the quota is enforced on, once the operator found it.",
    )
    subjects_over: int | None = Field(
        default=None,
        ge=0,
        description=(
            "How many subjects are at or over their limit this period. Counted by the operator "
            "from the quota decisions at each resync, so at most that old; per-subject usage is "
            "in the usage API (GET /api/v1/quotas/{quota}/subjects/{subject})."
        ),
    )
    subjects_near: int | None = Field(
        default=None,
        ge=0,
        description=(
            "How many subjects have crossed a spec.notifyAt threshold below 100% this period, "
            "but are not over their limit (counted like subjectsOver)."
        ),
    )
