"""Bad Meters and Quotas, and what both Python and the API server must say about each.

One table, two checks: ``tests/unit/test_resource_models.py`` gives every case to the Python
models, ``tests/integration/test_crd_validation.py`` to a real API server. Each case breaks
exactly one rule (the API server skips CEL rules once the OpenAPI schema has failed, and
Pydantic skips a container's rules once an item has failed), and names the field and the words
a person reads in both answers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

METER: dict[str, Any] = {
    "apiVersion": "kmeter.io/v1alpha1",
    "kind": "Meter",
    "metadata": {"name": "llm-tokens"},
    "spec": {
        "eventType": "llm.completion",
        "aggregation": "SUM",
        "valueProperty": "$.usage.total_tokens",
        "groupBy": {"model": "$.model"},
    },
}

QUOTA: dict[str, Any] = {
    "apiVersion": "kmeter.io/v1alpha1",
    "kind": "Quota",
    "metadata": {"name": "free-tier"},
    "spec": {
        "meterRef": {"name": "llm-tokens"},
        "limit": 100000,
        "period": {"every": "MONTH"},
    },
}


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with a JSON merge patch (RFC 7386) applied: ``None`` removes a key."""
    result = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@dataclass(frozen=True)
class Refusal:
    """A manifest that breaks one rule; both answers name ``field`` and contain ``says``.

    ``python_field`` is where Python's answer differs in form only (``spec.groupBy.model`` for
    the API server's ``spec.groupBy[model]``). ``status`` is the API server's HTTP status.
    """

    name: str
    manifest: dict[str, Any]
    field: str
    says: str
    python_field: str | None = None
    status: int = 422
    field_validation: str | None = None

    def __str__(self) -> str:
        return self.name


def meter(name: str, spec: dict[str, Any], field: str, says: str, **extra: Any) -> Refusal:
    return Refusal(name, merged(METER, {"spec": spec}), field, says, **extra)


def quota(name: str, spec: dict[str, Any], field: str, says: str, **extra: Any) -> Refusal:
    return Refusal(name, merged(QUOTA, {"spec": spec}), field, says, **extra)


JSONPATH = "must be a JSONPath into the event's data"
GROUP_KEYS = "keys must be names of at most 63 characters"
RETENTION = "spec.topic.retention must be a positive ISO 8601 duration"
SUBJECTS = "spec.subjects must set exactly one of all: true and a non-empty names list"
WEBHOOK_URL = "spec.webhook must set either url or urlSecretRef, not both"

METER_REFUSALS = [
    meter(
        "valueProperty missing for SUM",
        {"valueProperty": None},
        "spec.valueProperty",
        "spec.valueProperty is required unless spec.aggregation is COUNT",
    ),
    meter(
        "valueProperty set for COUNT",
        {"aggregation": "COUNT"},
        "spec.valueProperty",
        "spec.valueProperty must not be set when spec.aggregation is COUNT",
    ),
    meter(
        "valueProperty without $",
        {"valueProperty": "usage.total_tokens"},
        "spec.valueProperty",
        f"spec.valueProperty {JSONPATH}",
    ),
    meter(
        "valueProperty with recursive descent",
        {"valueProperty": "$..total_tokens"},
        "spec.valueProperty",
        f"spec.valueProperty {JSONPATH}",
    ),
    meter(
        "valueProperty with a wildcard",
        {"valueProperty": "$.choices[*].tokens"},
        "spec.valueProperty",
        f"spec.valueProperty {JSONPATH}",
    ),
    meter(
        "groupBy value not a JSONPath",
        {"groupBy": {"model": "model"}},
        "spec.groupBy[model]",
        f"each value of spec.groupBy {JSONPATH}",
        python_field="spec.groupBy.model",
    ),
    meter(
        "groupBy key starting with a digit",
        {"groupBy": {"1model": "$.model"}},
        "spec.groupBy",
        f"spec.groupBy {GROUP_KEYS}",
    ),
    meter(
        "groupBy key with a dash",
        {"groupBy": {"model-name": "$.model"}},
        "spec.groupBy",
        f"spec.groupBy {GROUP_KEYS}",
    ),
    meter(
        "groupBy key too long",
        {"groupBy": {"k" * 64: "$.model"}},
        "spec.groupBy",
        f"spec.groupBy {GROUP_KEYS}",
    ),
    meter(
        "groupBy with too many keys",
        {"groupBy": {f"key{i}": f"$.key{i}" for i in range(21)}},
        "spec.groupBy",
        "at most 20 items",
    ),
    meter("eventType empty", {"eventType": ""}, "spec.eventType", "at least 1 char"),
    meter("eventType missing", {"eventType": None}, "spec.eventType", "Required value"),
    meter(
        "aggregation unknown",
        {"aggregation": "TOTAL"},
        "spec.aggregation",
        'Unsupported value: "TOTAL": supported values: "SUM", "COUNT", "UNIQUE_COUNT", "AVG",'
        ' "MIN", "MAX", "LATEST"',
    ),
    meter(
        "windowSize unknown",
        {"windowSize": "WEEK"},
        "spec.windowSize",
        'Unsupported value: "WEEK": supported values: "MINUTE", "HOUR", "DAY"',
    ),
    meter(
        "no partitions",
        {"topic": {"partitions": 0}},
        "spec.topic.partitions",
        "should be greater than or equal to 1",
    ),
    meter(
        "replication factor 0",
        {"topic": {"replicationFactor": 0}},
        "spec.topic.replicationFactor",
        "should be greater than or equal to 1",
    ),
    meter(
        "retention in years",
        {"topic": {"retention": "P1Y"}},
        "spec.topic.retention",
        RETENTION,
    ),
    meter("retention zero", {"topic": {"retention": "PT0S"}}, "spec.topic.retention", RETENTION),
    meter(
        "retention with a dangling T",
        {"topic": {"retention": "P1DT"}},
        "spec.topic.retention",
        RETENTION,
    ),
    meter(
        "retention as milliseconds",
        {"topic": {"retention": "34560000000"}},
        "spec.topic.retention",
        RETENTION,
    ),
    meter(
        "negative worker replicas",
        {"workers": {"replicas": -1}},
        "spec.workers.replicas",
        "should be greater than or equal to 0",
    ),
    meter(
        "worker cpu not a quantity",
        {"workers": {"resources": {"requests": {"cpu": "lots"}}}},
        "spec.workers.resources.requests.cpu",
        "should match '^(\\+|-)?(([0-9]+(\\.[0-9]*)?)",
    ),
    meter(
        "deletionPolicy unknown",
        {"deletionPolicy": "Orphan"},
        "spec.deletionPolicy",
        'Unsupported value: "Orphan": supported values: "Retain", "Delete"',
    ),
    Refusal(
        "name too long for a Kafka topic",
        merged(METER, {"metadata": {"name": "m" * 173}}),
        "metadata.name",
        "metadata.name: a Meter's name may have at most 172 characters, so its Kafka topic "
        "name fits",
    ),
    Refusal(
        "name not a DNS subdomain",
        merged(METER, {"metadata": {"name": "LLM_Tokens"}}),
        "metadata.name",
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters",
    ),
    meter(
        "unknown field",
        {"aggregate": "SUM"},
        "spec.aggregate",
        'unknown field "spec.aggregate"',
        status=400,
        field_validation="Strict",
    ),
]

QUOTA_REFUSALS = [
    quota("limit zero", {"limit": 0}, "spec.limit", "should be greater than 0"),
    quota("limit negative", {"limit": -2.5}, "spec.limit", "should be greater than 0"),
    quota("limit a string", {"limit": "100"}, "spec.limit", "must be of type number"),
    quota("limit missing", {"limit": None}, "spec.limit", "Required value"),
    quota(
        "override limit zero",
        {"overrides": [{"subject": "acme", "limit": 0}]},
        "spec.overrides[0].limit",
        "should be greater than 0",
    ),
    quota(
        "override for a subject twice",
        {"overrides": [{"subject": "acme", "limit": 1}, {"subject": "acme", "limit": 2}]},
        "spec.overrides[1]",
        'Duplicate value: {"subject":"acme"}',
    ),
    quota(
        "period unknown",
        {"period": {"every": "WEEK"}},
        "spec.period.every",
        'Unsupported value: "WEEK": supported values: "HOUR", "DAY", "MONTH"',
    ),
    quota(
        "period without every", {"period": {"every": None}}, "spec.period.every", "Required value"
    ),
    quota("period missing", {"period": None}, "spec.period", "Required value"),
    quota(
        "time zone with a space",
        {"period": {"timeZone": "Europe/Paris "}},
        "spec.period.timeZone",
        "spec.period.timeZone must be an IANA time zone name",
    ),
    quota(
        "time zone as a path",
        {"period": {"timeZone": "../etc/passwd"}},
        "spec.period.timeZone",
        "spec.period.timeZone must be an IANA time zone name",
    ),
    quota(
        "time zone as an offset",
        {"period": {"timeZone": "+02:00"}},
        "spec.period.timeZone",
        "spec.period.timeZone must be an IANA time zone name",
    ),
    quota("subjects neither all nor names", {"subjects": {}}, "spec.subjects", SUBJECTS),
    quota(
        "subjects both all and names",
        {"subjects": {"all": True, "names": ["acme"]}},
        "spec.subjects",
        SUBJECTS,
    ),
    quota("subjects all false", {"subjects": {"all": False}}, "spec.subjects", SUBJECTS),
    quota(
        "subjects names empty", {"subjects": {"all": None, "names": []}}, "spec.subjects", SUBJECTS
    ),
    quota(
        "subject named twice",
        {"subjects": {"all": None, "names": ["acme", "acme"]}},
        "spec.subjects.names[1]",
        'Duplicate value: "acme"',
    ),
    quota(
        "notifyAt above 100",
        {"notifyAt": [80, 101]},
        "spec.notifyAt[1]",
        "should be less than or equal to 100",
    ),
    quota(
        "notifyAt zero",
        {"notifyAt": [0]},
        "spec.notifyAt[0]",
        "should be greater than or equal to 1",
    ),
    quota("notifyAt twice", {"notifyAt": [80, 80]}, "spec.notifyAt[1]", "Duplicate value: 80"),
    quota(
        "rate per day",
        {"rateLimit": {"requests": 10, "per": "1d"}},
        "spec.rateLimit.per",
        "spec.rateLimit.per must be a whole number of seconds, minutes or hours",
    ),
    quota(
        "rate per fraction",
        {"rateLimit": {"requests": 10, "per": "0.5s"}},
        "spec.rateLimit.per",
        "spec.rateLimit.per must be a whole number of seconds, minutes or hours",
    ),
    quota(
        "rate of no requests",
        {"rateLimit": {"requests": 0, "per": "1s"}},
        "spec.rateLimit.requests",
        "should be greater than or equal to 1",
    ),
    quota(
        "burst below the rate",
        {"rateLimit": {"requests": 10, "per": "1s", "burst": 5}},
        "spec.rateLimit.burst",
        "spec.rateLimit.burst must be at least spec.rateLimit.requests",
    ),
    quota(
        "webhook over ftp",
        {"webhook": {"url": "ftp://billing.example.com/hook"}},
        "spec.webhook.url",
        "spec.webhook.url must be an http or https URL",
    ),
    quota(
        "webhook with credentials",
        {"webhook": {"url": "https://user:secret@billing.example.com/hook"}},
        "spec.webhook.url",
        "spec.webhook.url must be an http or https URL without credentials",
    ),
    quota(
        "webhook secret key with a space",
        {"webhook": {"url": "https://b.example.com", "secretRef": {"name": "s", "key": "a b"}}},
        "spec.webhook.secretRef.key",
        "spec.webhook.secretRef.key must be a key of a Secret",
    ),
    quota(
        "webhook secret not a name",
        {"webhook": {"url": "https://b.example.com", "secretRef": {"name": "S!", "key": "k"}}},
        "spec.webhook.secretRef.name",
        "spec.webhook.secretRef.name must be the name of a Secret",
    ),
    quota(
        "webhook with a url and a url Secret",
        {
            "webhook": {
                "url": "https://b.example.com",
                "urlSecretRef": {"name": "hook", "key": "url"},
            }
        },
        "spec.webhook",
        WEBHOOK_URL,
    ),
    quota(
        "webhook without a url",
        {"webhook": {"secretRef": {"name": "s", "key": "k"}}},
        "spec.webhook",
        WEBHOOK_URL,
    ),
    quota(
        "webhook url secret key with a slash",
        {"webhook": {"urlSecretRef": {"name": "hook", "key": "a/b"}}},
        "spec.webhook.urlSecretRef.key",
        "spec.webhook.urlSecretRef.key must be a key of a Secret",
    ),
    quota(
        "meterRef not a name",
        {"meterRef": {"name": "LLM_Tokens"}},
        "spec.meterRef.name",
        "spec.meterRef.name must be the name of a Meter",
    ),
    quota("meterRef missing", {"meterRef": None}, "spec.meterRef", "Required value"),
    quota(
        "filterGroupBy key with a dash",
        {"filterGroupBy": {"model-name": "gpt-4o"}},
        "spec.filterGroupBy",
        f"spec.filterGroupBy {GROUP_KEYS}",
    ),
    quota(
        "enforcement unknown",
        {"enforcement": "Deny"},
        "spec.enforcement",
        'Unsupported value: "Deny": supported values: "Block", "Notify"',
    ),
]


def _immutable(field: str) -> str:
    return (
        f"spec.{field} is immutable: changing it would rewrite the meter's history; "
        "create a new Meter instead"
    )


@dataclass(frozen=True)
class Change:
    """An update of :data:`METER`'s spec by a merge patch, refused or allowed."""

    name: str
    patch: dict[str, Any]
    field: str = ""
    says: str = ""

    def __str__(self) -> str:
        return self.name


IMMUTABLE_CHANGES = [
    Change("eventType", {"eventType": "llm.embedding"}, "spec.eventType", _immutable("eventType")),
    Change("aggregation", {"aggregation": "MAX"}, "spec.aggregation", _immutable("aggregation")),
    Change(
        "valueProperty",
        {"valueProperty": "$.usage.prompt_tokens"},
        "spec.valueProperty",
        _immutable("valueProperty"),
    ),
    Change("windowSize", {"windowSize": "HOUR"}, "spec.windowSize", _immutable("windowSize")),
]

ALLOWED_CHANGES = [
    Change("more partitions", {"topic": {"partitions": 12}}),
    Change("another retention", {"topic": {"retention": "P30D"}}),
    Change("another groupBy", {"groupBy": {"model": "$.model", "region": "$.region"}}),
    Change("no groupBy", {"groupBy": None}),
    Change("more workers", {"workers": {"replicas": 4}}),
    Change("delete with the meter", {"deletionPolicy": "Delete"}),
]
