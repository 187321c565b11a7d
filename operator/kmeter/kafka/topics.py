"""The Kafka topic reconciler: desired topics in, Kafka brought to them, an outcome per topic.

For each desired topic (docs/topics.md says the same for users):

* missing: created with its partitions, replication factor and configs;
* fewer partitions than desired: partitions added; more: left alone, the outcome carries
  :class:`ShrinkRefused` (Kafka cannot remove partitions);
* another replication factor: left alone, the outcome carries :class:`ReplicationFactorDiffers`
  (changing it means reassigning replicas, which is not an admin-API call);
* a config key the desired topic names has another value: set back. Keys it does not name are
  never touched, whoever set them.

The comparison is the pure :func:`plan_topic`; the rest is a thin shell that observes
(:func:`describe_topics`), applies a plan and re-observes when another reconciler got there
first (two Meters sharing their namespace's ingest topic, reconciled at the same moment).

Config drift and aiokafka 0.14: its ``alter_configs`` sends the legacy ``AlterConfigs`` request
(v0/v1), which *replaces* a topic's whole set of overrides; keys left out fall back to their
defaults. aiokafka has no ``IncrementalAlterConfigs``. So a revert sends the topic's current
overrides (what ``DescribeConfigs`` reports with source ``DYNAMIC_TOPIC_CONFIG``) with the
drifted keys set to their desired values, and overrides kmeter does not manage survive. An
override someone changes between that read and the write is lost (the legacy request has no
compare-and-set); that window is one round trip, and only when there is drift to revert.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from aiokafka.admin import NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    BrokerResponseError,
    InvalidPartitionsError,
    TopicAlreadyExistsError,
    UnknownError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from kmeter.kafka.admin import KafkaAdmin, KafkaAdminError, KafkaUnavailable

__all__ = [
    "DesiredTopic",
    "KafkaUnavailable",
    "ObservedTopic",
    "PartitionsGrown",
    "Problem",
    "ReplicationFactorDiffers",
    "ShrinkRefused",
    "TopicError",
    "TopicOutcome",
    "TopicPlan",
    "delete_topics",
    "describe_topics",
    "plan_topic",
    "reconcile_topics",
]

log = logging.getLogger(__name__)

# DescribeConfigs: the source of a value set on the topic itself (not a default).
DYNAMIC_TOPIC_CONFIG = 1
# How often one topic is looked at again when another reconciler changed it under us.
# Backoff 0.05 s doubling: about 6 s in all, enough for metadata to settle on a busy broker.
ATTEMPTS = 8
_BACKOFF_S = 0.05


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class DesiredTopic:
    """A topic as kmeter wants it. ``configs`` are the keys kmeter manages on it."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a topic needs a name")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name}: partitions must be at least 1")
        if self.replication_factor < 1:
            raise ValueError(f"topic {self.name}: replication factor must be at least 1")
        object.__setattr__(self, "configs", _frozen(self.configs))


@dataclass(frozen=True)
class ObservedTopic:
    """A topic as Kafka reports it.

    ``configs`` holds the effective value of every config Kafka reports (defaults included);
    ``overrides`` the ones set on the topic itself — what a legacy AlterConfigs replaces.
    """

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)
    overrides: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "configs", _frozen(self.configs))
        object.__setattr__(self, "overrides", _frozen(self.overrides))


@dataclass(frozen=True)
class PartitionsGrown:
    before: int
    after: int


@dataclass(frozen=True)
class _LeftAlone:
    """A difference the reconciler reports and does not fix: the topic works as it is."""

    actual: int
    desired: int
    reason: ClassVar[str]


@dataclass(frozen=True)
class ShrinkRefused(_LeftAlone):
    """The topic has more partitions than desired; Kafka cannot remove partitions."""

    reason: ClassVar[str] = "PartitionsCannotShrink"

    @property
    def message(self) -> str:
        return (
            f"the topic has {self.actual} partitions and {self.desired} are asked for; "
            f"Kafka cannot remove partitions, so it keeps {self.actual}"
        )


@dataclass(frozen=True)
class ReplicationFactorDiffers(_LeftAlone):
    """The topic's replication factor is not the desired one; kmeter does not reassign it."""

    reason: ClassVar[str] = "ReplicationFactorDiffers"

    @property
    def message(self) -> str:
        return (
            f"the topic has replication factor {self.actual} and {self.desired} is asked for; "
            "it is set at creation, change it with a partition reassignment "
            "(kafka-reassign-partitions)"
        )


Problem = ShrinkRefused | ReplicationFactorDiffers


def _problems(*found: Problem | None) -> tuple[Problem, ...]:
    return tuple(problem for problem in found if problem is not None)


@dataclass(frozen=True)
class TopicPlan:
    """What reconciling one topic takes (see :func:`plan_topic`).

    ``revert`` names the managed keys whose value differs. ``config_overrides`` is then the
    whole override set to send — legacy AlterConfigs replaces the set, so it is the observed
    overrides with the reverted keys set to their desired values; empty when nothing reverts.
    """

    create: bool = False
    grow: PartitionsGrown | None = None
    revert: tuple[str, ...] = ()
    config_overrides: Mapping[str, str] = field(default_factory=dict, hash=False)
    shrink_refused: ShrinkRefused | None = None
    replication_factor_differs: ReplicationFactorDiffers | None = None

    @property
    def changes_nothing(self) -> bool:
        return not (self.create or self.grow or self.revert)

    @property
    def problems(self) -> tuple[Problem, ...]:
        return _problems(self.shrink_refused, self.replication_factor_differs)


@dataclass(frozen=True)
class TopicOutcome:
    """What reconciling one topic did, and what it would not do (``problems``)."""

    name: str
    created: bool = False
    partitions_grown: PartitionsGrown | None = None
    configs_reverted: tuple[str, ...] = ()
    shrink_refused: ShrinkRefused | None = None
    replication_factor_differs: ReplicationFactorDiffers | None = None

    @property
    def unchanged(self) -> bool:
        """Nothing was done to the topic (there may still be problems)."""
        return not (self.created or self.partitions_grown or self.configs_reverted)

    @property
    def problems(self) -> tuple[Problem, ...]:
        """What the reconciler would not do, each with a ``reason`` and a ``message``."""
        return _problems(self.shrink_refused, self.replication_factor_differs)


class TopicError(KafkaAdminError):
    """Kafka refused an operation on one topic.

    ``error`` is Kafka's name for it (``INVALID_REPLICATION_FACTOR``, ``POLICY_VIOLATION``...),
    ``message`` Kafka's own words.
    """

    def __init__(self, topic: str, error: str, message: str) -> None:
        super().__init__(f"topic {topic}: {error}: {message}")
        self.topic = topic
        self.error = error
        self.message = message

    @property
    def reason(self) -> str:
        """Kafka's error name in CamelCase: ``InvalidReplicationFactor``."""
        return "".join(word.capitalize() for word in self.error.split("_"))


def plan_topic(desired: DesiredTopic, observed: ObservedTopic | None) -> TopicPlan:
    """Compare a desired topic with what Kafka has (``None``: nothing). Pure.

    Never plans fewer partitions than observed, never a replication factor change, and only
    ever sets the keys of ``desired.configs``.
    """
    if observed is None:
        return TopicPlan(create=True)
    if observed.name != desired.name:
        raise ValueError(f"cannot plan topic {desired.name} from topic {observed.name}")
    grow = shrink = differs = None
    if desired.partitions > observed.partitions:
        grow = PartitionsGrown(before=observed.partitions, after=desired.partitions)
    elif desired.partitions < observed.partitions:
        shrink = ShrinkRefused(actual=observed.partitions, desired=desired.partitions)
    if desired.replication_factor != observed.replication_factor:
        differs = ReplicationFactorDiffers(
            actual=observed.replication_factor, desired=desired.replication_factor
        )
    revert = tuple(
        sorted(key for key, value in desired.configs.items() if observed.configs.get(key) != value)
    )
    overrides = (
        {**observed.overrides, **{key: desired.configs[key] for key in revert}} if revert else {}
    )
    return TopicPlan(
        grow=grow,
        revert=revert,
        config_overrides=_frozen(overrides),
        shrink_refused=shrink,
        replication_factor_differs=differs,
    )


async def reconcile_topics(
    admin: KafkaAdmin, desired: Sequence[DesiredTopic]
) -> list[TopicOutcome]:
    """Bring each desired topic about in Kafka; one outcome per topic, in the same order.

    Every topic is attempted even when one fails; then the first :class:`TopicError` is
    raised. :class:`~kmeter.kafka.admin.KafkaUnavailable` is raised at once.
    """
    names = [topic.name for topic in desired]
    if len(set(names)) != len(names):
        raise ValueError(f"a topic is desired twice: {names}")
    first_look = await describe_topics(admin, names)
    outcomes: list[TopicOutcome] = []
    failures: list[TopicError] = []
    for topic in desired:
        try:
            outcomes.append(await _reconcile_topic(admin, topic, first_look.get(topic.name)))
        except TopicError as error:
            failures.append(error)
    if failures:
        raise failures[0]
    return outcomes


class _Raced(Exception):
    """Another reconciler changed the topic between our look and our change: look again."""

    def __init__(self, error: TopicError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _Done:
    created: bool = False
    grown: PartitionsGrown | None = None
    reverted: set[str] = field(default_factory=set)

    def outcome(self, name: str, plan: TopicPlan) -> TopicOutcome:
        return TopicOutcome(
            name=name,
            created=self.created,
            partitions_grown=self.grown,
            configs_reverted=tuple(sorted(self.reverted)),
            shrink_refused=plan.shrink_refused,
            replication_factor_differs=plan.replication_factor_differs,
        )


async def _reconcile_topic(
    admin: KafkaAdmin, desired: DesiredTopic, observed: ObservedTopic | None
) -> TopicOutcome:
    done = _Done()
    last: TopicError | None = None
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
            observed = (await describe_topics(admin, [desired.name])).get(desired.name)
        plan = plan_topic(desired, observed)
        try:
            await _apply(admin, desired, plan, done)
        except _Raced as raced:
            log.info("topic %s changed under us (%s); looking again", desired.name, raced)
            last = raced.error
            continue
        return done.outcome(desired.name, plan)
    assert last is not None  # ATTEMPTS > 0 and every failed attempt sets it
    raise TopicError(
        desired.name,
        last.error,
        f"{last.message} (still so after {ATTEMPTS} attempts: the topic keeps changing)",
    )


async def _apply(admin: KafkaAdmin, desired: DesiredTopic, plan: TopicPlan, done: _Done) -> None:
    name = desired.name
    if plan.create:
        await _create(admin, desired)
        log.info("created topic %s", name)
        done.created = True
        await _until_visible(admin, name, desired.partitions)
        return
    if plan.grow:
        await _grow(admin, name, plan.grow.after)
        await _until_visible(admin, name, plan.grow.after)
        log.info("grew topic %s from %d to %d partitions", name, plan.grow.before, plan.grow.after)
        done.grown = PartitionsGrown(
            before=done.grown.before if done.grown else plan.grow.before, after=plan.grow.after
        )
    if plan.revert:
        await _set_overrides(admin, name, plan.config_overrides)
        log.info("reverted drifted configs of topic %s: %s", name, ", ".join(plan.revert))
        done.reverted.update(plan.revert)


async def _until_visible(admin: KafkaAdmin, name: str, partitions: int) -> None:
    """Wait until the brokers' metadata shows the topic with ``partitions``.

    A create or grow is acknowledged by the controller before every broker's metadata cache
    has it; a client that looks at once may still be told the topic does not exist. Waiting
    here makes "reconciled" mean "usable". Bounded by the request timeout.
    """
    deadline = asyncio.get_running_loop().time() + admin.settings.request_timeout_s
    while True:
        seen = (await describe_topics(admin, [name])).get(name)
        if seen is not None and seen.partitions >= partitions:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TopicError(
                name,
                "NOT_YET_VISIBLE",
                f"Kafka accepted the change but its metadata does not show {partitions} "
                f"partitions after {admin.settings.request_timeout_s:.0f} s",
            )
        await asyncio.sleep(0.1)


async def _create(admin: KafkaAdmin, desired: DesiredTopic) -> None:
    new_topic = NewTopic(
        desired.name,
        desired.partitions,
        desired.replication_factor,
        topic_configs=dict(desired.configs),
    )
    async with admin.call(f"creating topic {desired.name}") as client:
        response = await client.create_topics(
            [new_topic], timeout_ms=admin.settings.operation_timeout_ms
        )
    for topic, code, *message in response.topic_errors:
        _check(topic, code, *message, raced=(TopicAlreadyExistsError,))


async def _grow(admin: KafkaAdmin, name: str, partitions: int) -> None:
    try:
        async with admin.call(f"adding partitions to topic {name}") as client:
            await client.create_partitions(
                {name: NewPartitions(partitions)}, timeout_ms=admin.settings.operation_timeout_ms
            )
    except BrokerResponseError as error:
        # aiokafka raises the first error it finds; "already has N partitions" is a race.
        text = str(error.args[0]).removeprefix(f"Could not create partitions for {name}: ")
        raced = (InvalidPartitionsError, UnknownTopicOrPartitionError)
        _check(name, error.errno, text if error.args else None, raced=raced)


async def _set_overrides(admin: KafkaAdmin, name: str, overrides: Mapping[str, str]) -> None:
    resource = ConfigResource(ConfigResourceType.TOPIC, name, configs=dict(overrides))
    async with admin.call(f"setting configs of topic {name}") as client:
        responses = await client.alter_configs([resource])
    for response in responses:
        for entry in response.to_object()["resources"]:
            _check(
                entry["resource_name"],
                entry["error_code"],
                entry["error_message"],
                raced=(UnknownTopicOrPartitionError,),
            )


def _check(
    topic: str, code: int, message: str | None = None, *, raced: tuple[type[Exception], ...] = ()
) -> None:
    """Raise for a per-topic error code in a Kafka response; ``raced`` ones raise ``_Raced``."""
    if code == 0:
        return
    kind = for_code(code)
    known = kind is not UnknownError or code == UnknownError.errno
    name = kind.message if known else f"ERROR_{code}"
    error = TopicError(topic, name, message or kind.description)
    if issubclass(kind, raced):
        raise _Raced(error)
    raise error


async def describe_topics(admin: KafkaAdmin, names: Sequence[str]) -> dict[str, ObservedTopic]:
    """The topics among ``names`` that exist, as Kafka reports them; missing ones are left out.

    Never creates a topic. (aiokafka's own ``describe_topics`` sends its Metadata request with
    ``allow_auto_topic_creation=True``: on a cluster with ``auto.create.topics.enable`` it
    would create every missing topic it looks at, with the broker's defaults.)
    """
    if not names:
        return {}
    shape = await _partition_layout(admin, names)
    configs = await _configs(admin, list(shape)) if shape else {}
    return {
        name: ObservedTopic(
            name=name,
            partitions=shape[name][0],
            replication_factor=shape[name][1],
            configs={key: value for key, (value, _) in configs[name].items()},
            overrides={key: value for key, (value, own) in configs[name].items() if own},
        )
        for name in names
        if name in shape and name in configs
    }


async def _partition_layout(admin: KafkaAdmin, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Partition count and replication factor (that of partition 0, as kafka-topics shows)."""
    request = MetadataRequest(list(names), allow_auto_topic_creation=False)
    async with admin.call(f"describing topics {', '.join(names)}") as client:
        # The admin client's own request path (private in aiokafka): see describe_topics.
        response = await client._send_request(request)
    layout: dict[str, tuple[int, int]] = {}
    for topic in response.to_object()["topics"]:
        name, code = topic["topic"], topic["error_code"]
        if code == UnknownTopicOrPartitionError.errno:
            continue
        _check(name, code)
        partitions = sorted(topic["partitions"], key=lambda p: p["partition"])
        replicas = len(partitions[0]["replicas"]) if partitions else 0
        layout[name] = (len(partitions), replicas)
    return layout


async def _configs(
    admin: KafkaAdmin, names: Sequence[str]
) -> dict[str, dict[str, tuple[str, bool]]]:
    """Per topic: every config's value, and whether it is set on the topic itself."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    async with admin.call(f"describing configs of topics {', '.join(names)}") as client:
        responses = await client.describe_configs(resources)
    found: dict[str, dict[str, tuple[str, bool]]] = {}
    for response in responses:
        for resource in response.to_object()["resources"]:
            name, code = resource["resource_name"], resource["error_code"]
            if code == UnknownTopicOrPartitionError.errno:
                continue  # deleted since the metadata answer: treated as missing
            _check(name, code, resource["error_message"])
            found[name] = {
                entry["config_names"]: (entry["config_value"], _is_override(name, entry))
                for entry in resource["config_entries"]
                if entry["config_value"] is not None  # sensitive: Kafka does not tell
            }
    return found


def _is_override(topic: str, entry: dict[str, Any]) -> bool:
    if "config_source" not in entry:
        # DescribeConfigs v0 (Kafka < 1.1) cannot tell a topic's override from a broker's
        # setting; a legacy AlterConfigs built on a guess could wipe overrides.
        raise TopicError(topic, "UNSUPPORTED_VERSION", "kmeter needs Kafka 1.1 or later")
    return bool(entry["config_source"] == DYNAMIC_TOPIC_CONFIG)


async def delete_topics(admin: KafkaAdmin, names: Sequence[str]) -> list[str]:
    """Delete ``names``; a topic that does not exist is fine. Returns the ones deleted.

    Kafka deletes in the background: a deleted topic may still be listed for a moment, and
    creating it again at once can be refused until it is gone.
    """
    if not names:
        return []
    async with admin.call(f"deleting topics {', '.join(names)}") as client:
        response = await client.delete_topics(
            list(names), timeout_ms=admin.settings.operation_timeout_ms
        )
    deleted: list[str] = []
    for topic, code, *message in response.topic_error_codes:
        if code == UnknownTopicOrPartitionError.errno:
            continue
        _check(topic, code, *message)
        log.info("deleted topic %s", topic)
        deleted.append(topic)
    return [name for name in names if name in deleted]
