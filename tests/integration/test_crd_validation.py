"""The generated CRDs on a real API server: every rule refuses what it should, with its words.

The CRDs are applied from crds/ (fixture ``kmeter_crds``; they stay installed, other modules use
them too). This module's objects live in a namespace of its own, deleted at the end. Bad objects
are sent with ``dryRun=All``: the API server runs every validation and stores nothing.

The refusal tables are those of ``tests/unit/test_resource_models.py``: the same manifests,
the same field names and words on both sides.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.support.kube import Environment
from tests.support.operator import eventually, kubectl
from tests.support.resource_cases import (
    ALLOWED_CHANGES,
    IMMUTABLE_CHANGES,
    METER,
    METER_REFUSALS,
    QUOTA,
    QUOTA_REFUSALS,
    Change,
    Refusal,
    merged,
)

from kmeter.core.jsonpath import JSONPathError, compile_path
from kmeter.resources import InvalidResource, parse_resource
from kmeter.resources.crd import meter_crd, quota_crd

GROUP, VERSION = "kmeter.io", "v1alpha1"
PLURALS = {"Meter": "meters", "Quota": "quotas"}
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "meters"


@pytest.fixture(scope="module")
def objects(testenv: Environment) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(testenv.api_client())


@pytest.fixture(scope="module")
def ns(testenv: Environment, kmeter_crds: None, objects: client.CustomObjectsApi) -> Iterator[str]:
    """A namespace of this module's own, once the current CRDs serve Meters and Quotas."""
    core = client.CoreV1Api(testenv.api_client())
    name = f"crd-validation-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    eventually(
        lambda: all(_accepted(objects, name, manifest) for manifest in (METER, QUOTA)),
        what="the API server serves Meters and Quotas",
    )
    yield name
    core.delete_namespace(name)


def _create(
    objects: client.CustomObjectsApi,
    namespace: str,
    manifest: dict[str, Any],
    dry_run: bool = True,
    field_validation: str | None = None,
) -> dict[str, Any]:
    created: dict[str, Any] = objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURALS[manifest["kind"]],
        manifest,
        dry_run="All" if dry_run else None,
        field_validation=field_validation,
    )
    return created


def _accepted(objects: client.CustomObjectsApi, namespace: str, manifest: dict[str, Any]) -> bool:
    try:
        _create(objects, namespace, manifest)
    except ApiException as error:
        if error.status == 404:  # not served yet
            return False
        raise
    return True


def _refusal(call: Any) -> tuple[int, str]:
    """Run ``call``, which must fail; its HTTP status and the message a person reads."""
    with pytest.raises(ApiException) as refused:
        call()
    return refused.value.status, json.loads(refused.value.body)["message"]


@pytest.mark.usefixtures("kmeter_crds")
def test_the_installed_crds_are_the_ones_the_models_generate(testenv: Environment) -> None:
    extensions = client.ApiextensionsV1Api(testenv.api_client())
    for crd in (meter_crd(), quota_crd()):
        installed = extensions.api_client.sanitize_for_serialization(
            extensions.read_custom_resource_definition(crd["metadata"]["name"])
        )
        assert installed["spec"]["versions"] == crd["spec"]["versions"]
        assert installed["spec"]["names"] == crd["spec"]["names"]


@pytest.mark.parametrize("case", [*METER_REFUSALS, *QUOTA_REFUSALS], ids=str)
def test_the_api_server_refuses_each_bad_object_naming_the_field_with_the_rules_words(
    case: Refusal, objects: client.CustomObjectsApi, ns: str
) -> None:
    status, message = _refusal(
        lambda: _create(objects, ns, case.manifest, field_validation=case.field_validation)
    )
    assert status == case.status, message
    assert case.field in message, message
    assert case.says in message, message


def _created_meter(objects: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> str:
    name = f"m-{uuid.uuid4().hex[:8]}"
    manifest = merged(METER, {"metadata": {"name": name}, "spec": spec})
    _create(objects, namespace, manifest, dry_run=False)
    return name


def _patch_meter(
    objects: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    patched: dict[str, Any] = objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "meters", name, {"spec": spec}
    )
    return patched


@pytest.mark.parametrize("change", IMMUTABLE_CHANGES, ids=str)
def test_changing_a_field_that_would_rewrite_history_is_refused_by_the_api_server(
    change: Change, objects: client.CustomObjectsApi, ns: str
) -> None:
    name = _created_meter(objects, ns, {})
    status, message = _refusal(lambda: _patch_meter(objects, ns, name, change.patch))
    assert status == 422
    assert f"{change.field}: Invalid value: " in message
    assert change.says in message


@pytest.mark.parametrize("change", ALLOWED_CHANGES, ids=str)
def test_changing_topic_workers_groups_or_policy_is_allowed_by_the_api_server(
    change: Change, objects: client.CustomObjectsApi, ns: str
) -> None:
    name = _created_meter(objects, ns, {})
    patched = _patch_meter(objects, ns, name, change.patch)
    assert patched["metadata"]["generation"] == 2
    expected = merged(METER, {"spec": change.patch})["spec"]
    assert parse_resource(patched).spec == parse_resource({**METER, "spec": expected}).spec


def test_adding_a_value_property_to_a_count_meter_is_refused_as_a_change(
    objects: client.CustomObjectsApi, ns: str
) -> None:
    name = _created_meter(objects, ns, {"aggregation": "COUNT", "valueProperty": None})
    status, message = _refusal(
        lambda: _patch_meter(objects, ns, name, {"valueProperty": "$.usage.total_tokens"})
    )
    assert status == 422
    assert "spec.valueProperty is immutable" in message


@pytest.mark.parametrize(
    "manifest",
    [
        merged(METER, {"spec": {"aggregation": "COUNT", "valueProperty": None, "groupBy": None}}),
        QUOTA,
        *(yaml.safe_load(path.read_text()) for path in sorted(EXAMPLES.glob("*.yaml"))),
    ],
    ids=lambda manifest: f"{manifest['kind']} {manifest['metadata']['name']}",
)
def test_the_api_server_fills_in_the_same_defaults_as_the_models(
    manifest: dict[str, Any], objects: client.CustomObjectsApi, ns: str
) -> None:
    stored = _create(objects, ns, manifest)
    assert stored["spec"] == parse_resource(manifest).manifest()["spec"]


def _python_accepts(manifest: dict[str, Any]) -> bool:
    try:
        parse_resource(manifest)
    except InvalidResource:
        return False
    return True


def _server_accepts(objects: client.CustomObjectsApi, ns: str, manifest: dict[str, Any]) -> bool:
    try:
        _create(objects, ns, manifest)
    except ApiException as error:
        if error.status == 422:
            return False
        raise
    return True


JSONPATHS = [
    "$.usage.total_tokens",
    "$.choices[0].usage",
    "$.items[-1]",
    "$[ 0 ]",
    "$[\t'key with space'\n]",
    "$['it\\'s']",
    '$["say \\"hi\\""]',
    "$['caf\\u00e9']",
    "$['café']",
    "$['a/b\\/c']",
    "$['\\\\']",
    "$",
    "$[01]",
    "$[-0]",
    "$['\\q']",
    "$['\\u12']",
    "$['tab\there']",
    "$[\x0b0]",
    "$.é",
    "$.a\n",
    "$.a.",
    "$['unterminated]",
    "$.9lives",
    "$[?(@.x)]",
    "$[0:2]",
    "$[0,1]",
]


def test_the_api_servers_re2_agrees_with_the_parser_on_tricky_jsonpaths(
    objects: client.CustomObjectsApi, ns: str
) -> None:
    verdicts = {}
    for path in JSONPATHS:
        manifest = merged(METER, {"spec": {"valueProperty": path}})
        try:
            compile_path(path)
            parser = True
        except JSONPathError:
            parser = False
        verdicts[path] = (_server_accepts(objects, ns, manifest), parser)
    disagreements = {path: v for path, v in verdicts.items() if v[0] != v[1]}
    assert disagreements == {}
    assert sum(server for server, _ in verdicts.values()) >= 10, "too few valid samples"


@pytest.mark.parametrize(
    ("field", "values"),
    [
        (
            {"topic": {"retention": "{}"}},
            ["P400D", "PT36H", "P2W", "P1DT12H", "PT1S", "P0DT1S", "P999999D",
             "P", "PT", "P0D", "P1M", "P1.5D", "p1d", "P1DT", "P1000000D", "P1D ", "P٣D"],
        ),
        (
            {"period": {"timeZone": "{}"}},
            ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires", "Etc/GMT+5", "EST5EDT",
             "America/Port-au-Prince", "Mars/Base", "utc ", "/UTC", "Europe//Paris", "+02:00"],
        ),
        (
            {"rateLimit": {"requests": 1, "per": "{}"}},
            ["1s", "30s", "1m", "24h", "999999s", "0s", "1d", "1ms", "01s", "1", "s", "1S"],
        ),
    ],
    ids=["retention", "timeZone", "rateLimit.per"],
)  # fmt: skip
def test_the_api_server_and_python_agree_on_durations_and_zone_names(
    field: dict[str, Any], values: list[str], objects: client.CustomObjectsApi, ns: str
) -> None:
    base = METER if "topic" in field else QUOTA
    template = json.dumps(field)
    disagreements = {}
    for value in values:
        spec = json.loads(template.replace("{}", value.encode("unicode_escape").decode()))
        manifest = merged(base, {"spec": spec})
        server, python = _server_accepts(objects, ns, manifest), _python_accepts(manifest)
        if server != python:
            disagreements[value] = {"server": server, "python": python}
    assert disagreements == {}


def _condition(type_: str, status: str) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": "Ready" if status == "True" else "KafkaUnavailable",
        "message": "All parts are ready.",
        "lastTransitionTime": "2026-11-25T10:00:00Z",
        "observedGeneration": 1,
    }


def _patch_status(
    objects: client.CustomObjectsApi, ns: str, plural: str, name: str, status: dict[str, Any]
) -> dict[str, Any]:
    patched: dict[str, Any] = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, plural, name, {"status": status}
    )
    return patched


def test_the_status_the_operator_writes_is_kept_whole_and_duplicate_conditions_are_refused(
    objects: client.CustomObjectsApi, ns: str
) -> None:
    name = _created_meter(objects, ns, {})
    status = {
        "observedGeneration": 1,
        "conditions": [_condition("Ready", "True"), _condition("TopicsReady", "True")],
        "topics": {
            "ingest": f"kmeter.{ns}.events",
            "output": f"kmeter.{ns}.meter.{name}",
            "deadLetter": f"kmeter.{ns}.dead-letter",
        },
        "workerDeployment": f"{name}-worker",
    }
    stored = _patch_status(objects, ns, "meters", name, status)
    assert stored["status"] == status, "the schema pruned part of the status"
    assert parse_resource(stored).status is not None

    twice = {"conditions": [_condition("Ready", "True"), _condition("Ready", "False")]}
    code, message = _refusal(lambda: _patch_status(objects, ns, "meters", name, twice))
    assert code == 422
    assert 'status.conditions[1]: Duplicate value: {"type":"Ready"}' in message


def _kubectl_when_ready(env: Environment, *args: str, expect: str) -> str:
    """kubectl's output once it contains ``expect`` (new CRDs reach discovery and OpenAPI late)."""

    def attempt() -> str | None:
        try:
            output = kubectl(env, *args)
        except RuntimeError:
            return None
        return output if expect in output else None

    return eventually(attempt, timeout=60, what=f"kubectl {' '.join(args)} shows {expect!r}")


@pytest.mark.usefixtures("kmeter_crds")
def test_kubectl_explain_describes_a_meters_fields(testenv: Environment) -> None:
    explained = _kubectl_when_ready(
        testenv, "explain", "meters.spec.aggregation", expect="FIELD: aggregation"
    )
    assert "COUNT counts events (no valueProperty)" in explained
    for value in ("SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST"):
        assert re.search(rf"^\s+{value}$", explained, re.MULTILINE), value
    limit = _kubectl_when_ready(testenv, "explain", "quotas.spec.limit", expect="FIELD: limit")
    assert "a number greater than 0" in limit


def test_kubectl_get_kmeter_lists_meters_and_quotas_with_their_columns(
    testenv: Environment, objects: client.CustomObjectsApi, ns: str
) -> None:
    meter = _created_meter(objects, ns, {})
    quota = f"q-{uuid.uuid4().hex[:8]}"
    _create(
        objects,
        ns,
        merged(QUOTA, {"metadata": {"name": quota}, "spec": {"meterRef": {"name": meter}}}),
        dry_run=False,
    )
    _patch_status(objects, ns, "meters", meter, {"conditions": [_condition("Ready", "True")]})

    everything = _kubectl_when_ready(testenv, "get", "kmeter", "-n", ns, expect=quota)
    assert f"meter.kmeter.io/{meter}" in everything
    assert f"quota.kmeter.io/{quota}" in everything

    meters = kubectl(testenv, "get", "meters", "-n", ns, meter).splitlines()
    assert meters[0].split() == ["NAME", "EVENTTYPE", "AGGREGATION", "WINDOW", "READY", "AGE"]
    assert meters[1].split()[:5] == [meter, "llm.completion", "SUM", "MINUTE", "True"]

    quotas = kubectl(testenv, "get", "qta", "-n", ns, quota).splitlines()
    assert quotas[0].split() == ["NAME", "METER", "LIMIT", "PERIOD", "READY", "AGE"]
    assert quotas[1].split()[:4] == [quota, meter, "100000", "MONTH"]

    short = kubectl(testenv, "get", "mtr", "-n", ns, meter, "-o", "name")
    assert short.split() == [f"meter.kmeter.io/{meter}"]


def test_kubectl_get_quota_still_lists_resource_quotas_once_kmeter_is_installed(
    testenv: Environment, ns: str
) -> None:
    kubectl(testenv, "create", "quota", "compute", "--hard=pods=3", "-n", ns)

    listed = kubectl(testenv, "get", "quota", "-n", ns, "-o", "name").split()

    assert listed == ["resourcequota/compute"]
