"""The Meter and Quota models: what they accept, refuse and say, and the schema they generate.

The refusal tables are shared with ``tests/integration/test_crd_validation.py``, which sends
the same manifests to a real API server: together they prove that Python and the API server
refuse the same things with the same words.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
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

from kmeter.core.jsonpath import PATH_PATTERN, JSONPathError, compile_path
from kmeter.core.windows import STORAGE_SIZES
from kmeter.resources import (
    InvalidResource,
    Meter,
    MeterStatus,
    Quota,
    check_update,
    parse_resource,
)
from kmeter.resources.base import cel_string, transition_causes
from kmeter.resources.crd import meter_crd, quota_crd, structural
from kmeter.resources.meter import (
    RETENTION_PATTERN,
    ZERO_DURATION_PATTERN,
    StorageWindowSize,
    Topic,
)
from kmeter.resources.quota import TIME_ZONE_PATTERN, RateLimit
from kmeter.topics import MAX_METER_NAME_LENGTH

# --- refusals: the same table the API server gets -------------------------------------------


@pytest.mark.parametrize("case", [*METER_REFUSALS, *QUOTA_REFUSALS], ids=str)
def test_python_refuses_what_the_api_server_refuses_naming_the_field_with_the_same_words(
    case: Refusal,
) -> None:
    with pytest.raises(InvalidResource) as refused:
        parse_resource(case.manifest)
    lines = [str(cause) for cause in refused.value.causes]
    field = case.python_field or case.field
    assert any(f"{field}: " in line and case.says in line for line in lines), lines


def test_the_valid_bases_of_the_refusal_table_are_accepted() -> None:
    assert isinstance(parse_resource(METER), Meter)
    assert isinstance(parse_resource(QUOTA), Quota)


EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "meters").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_the_examples_are_valid(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert parse_resource(manifest).manifest()["spec"].items() >= manifest["spec"].items()


def test_an_invalid_resource_reads_like_the_api_servers_answer() -> None:
    with pytest.raises(InvalidResource) as refused:
        parse_resource(merged(METER, {"spec": {"valueProperty": None}}))
    assert str(refused.value) == (
        'Meter "llm-tokens" is invalid: spec.valueProperty: spec.valueProperty is required '
        "unless spec.aggregation is COUNT: it is the JSONPath of the value to aggregate, "
        "such as $.usage.total_tokens"
    )


def test_python_adds_the_parsers_reason_to_the_jsonpath_message() -> None:
    with pytest.raises(InvalidResource, match=r"recursive descent \(\.\.\) is not supported"):
        parse_resource(merged(METER, {"spec": {"valueProperty": "$..tokens"}}))


@pytest.mark.parametrize(
    "manifest",
    [{**METER, "kind": "Widget"}, {"apiVersion": "v1", "metadata": {"name": "x"}}],
    ids=["another kind", "no kind"],
)
def test_only_meters_and_quotas_are_parsed(manifest: dict[str, Any]) -> None:
    with pytest.raises(InvalidResource, match="kind: must be Meter or Quota"):
        parse_resource(manifest)


def test_another_api_version_is_refused() -> None:
    with pytest.raises(InvalidResource, match=r'apiVersion: Unsupported value: "kmeter\.io/v1"'):
        parse_resource({**METER, "apiVersion": "kmeter.io/v1"})


def test_a_meter_name_of_exactly_the_topic_limit_is_accepted() -> None:
    name = "m" * MAX_METER_NAME_LENGTH
    assert parse_resource(merged(METER, {"metadata": {"name": name}})).metadata.name == name


# --- updates --------------------------------------------------------------------------------


@pytest.mark.parametrize("change", IMMUTABLE_CHANGES, ids=str)
def test_changing_a_field_that_would_rewrite_history_is_refused(change: Change) -> None:
    old = Meter.model_validate(METER)
    new = Meter.model_validate(merged(METER, {"spec": change.patch}))
    with pytest.raises(InvalidResource) as refused:
        check_update(old, new)
    assert [str(cause) for cause in refused.value.causes] == [f"{change.field}: {change.says}"]


@pytest.mark.parametrize("change", ALLOWED_CHANGES, ids=str)
def test_changing_topic_workers_groups_or_policy_is_allowed(change: Change) -> None:
    old = Meter.model_validate(METER)
    check_update(old, Meter.model_validate(merged(METER, {"spec": change.patch})))


@pytest.fixture
def count_meter() -> dict[str, Any]:
    return merged(METER, {"spec": {"aggregation": "COUNT", "valueProperty": None}})


def test_adding_or_removing_value_property_counts_as_a_change(
    count_meter: dict[str, Any],
) -> None:
    # A COUNT meter with a valueProperty is invalid on its own, so it is built by copy: the
    # transition rule must refuse the change even where no other rule would.
    count = Meter.model_validate(count_meter)
    with_value = count.model_copy(
        update={"spec": count.spec.model_copy(update={"value_property": "$.x"})}
    )
    removed = transition_causes(with_value, count)
    added = transition_causes(count, with_value)
    assert [cause.field for cause in removed] == ["spec.valueProperty"]
    assert [cause.field for cause in added] == ["spec.valueProperty"]


def test_a_count_meter_needs_no_value_property(count_meter: dict[str, Any]) -> None:
    assert Meter.model_validate(count_meter).spec.value_property is None


# --- defaults and values ----------------------------------------------------------------------


def test_a_minimal_meter_gets_the_documented_defaults(count_meter: dict[str, Any]) -> None:
    spec = Meter.model_validate(count_meter).manifest()["spec"]
    assert spec == {
        "eventType": "llm.completion",
        "aggregation": "COUNT",
        "groupBy": {"model": "$.model"},
        "windowSize": "MINUTE",
        "topic": {"partitions": 3, "replicationFactor": 1, "retention": "P400D"},
        "workers": {"replicas": 1},
        "deletionPolicy": "Retain",
    }


def test_a_minimal_quota_gets_the_documented_defaults() -> None:
    spec = Quota.model_validate(QUOTA).manifest()["spec"]
    assert spec == {
        "meterRef": {"name": "llm-tokens"},
        "limit": 100000,
        "period": {"every": "MONTH", "timeZone": "UTC"},
        "subjects": {"all": True},
        "enforcement": "Block",
        "notifyAt": [80, 100],
    }


def test_a_limit_is_an_exact_decimal_and_is_written_back_as_the_number_it_was() -> None:
    quota = Quota.model_validate(merged(QUOTA, {"spec": {"limit": 0.1}}))
    assert quota.spec.limit == Decimal("0.1")
    assert quota.manifest()["spec"]["limit"] == 0.1
    big = Quota.model_validate(merged(QUOTA, {"spec": {"limit": 10**20 + 1}}))
    assert big.manifest()["spec"]["limit"] == 10**20 + 1


@given(
    st.decimals(
        min_value=Decimal("0.000001"), max_value=Decimal("1e9"), places=6, allow_nan=False
    ).filter(lambda d: len(d.normalize().as_tuple().digits) <= 15)
)
def test_a_limit_of_up_to_15_digits_survives_the_api_servers_float64_exactly(
    written: Decimal,
) -> None:
    # The API server decodes a non-integer JSON number into a float64 and writes it back in
    # its shortest form: that float is what the operator reads.
    stored = float(str(written))
    limit = Quota.model_validate(merged(QUOTA, {"spec": {"limit": stored}})).spec.limit
    assert limit == written


def test_a_limit_beyond_kmeters_exact_range_is_refused() -> None:
    with pytest.raises(InvalidResource, match="out of range"):
        parse_resource(merged(QUOTA, {"spec": {"limit": 1e40}}))


def test_a_meter_stores_at_exactly_the_window_sizes_the_core_can_store() -> None:
    assert get_args(StorageWindowSize) == STORAGE_SIZES


def test_topic_retention_and_rate_periods_have_typed_views() -> None:
    assert Topic(retention="P1DT12H").retention_period.total_seconds() == 36 * 3600
    assert RateLimit(requests=5, per="15m").per_seconds == 900


def test_an_operator_written_status_is_valid_and_a_condition_type_appears_once() -> None:
    condition = {
        "type": "Ready",
        "status": "True",
        "reason": "Ready",
        "message": "All parts are ready.",
        "lastTransitionTime": "2026-11-25T10:00:00Z",
        "observedGeneration": 1,
    }
    status = {
        "observedGeneration": 1,
        "conditions": [condition],
        "topics": {"ingest": "a", "output": "b", "deadLetter": "c"},
        "workerDeployment": "llm-tokens-worker",
    }
    assert MeterStatus.model_validate(status).manifest() == status
    with pytest.raises(ValidationError, match=re.escape('Duplicate value: {"type":"Ready"}')):
        MeterStatus.model_validate({"conditions": [condition, condition]})


# --- the rules' two forms agree ---------------------------------------------------------------

# Paths built from valid and nearly valid pieces, so that many are accepted and many are
# refused for a subtle reason (a leading zero, a bad escape, a vertical tab, a lone quote).
_CHARS = st.sampled_from(list("aZ_09-. '\"\\*?:,é\x00\x1f/btnu[]$"))
_TEXT = st.lists(_CHARS, max_size=5).map("".join)
_BLANK = st.sampled_from(["", " ", "\t", "\n ", "\x0b"])
_INDEX = st.sampled_from(["0", "7", "-1", "12", "01", "-0", "-", ""])
_ESCAPE = st.sampled_from(["\\'", '\\"', "\\\\", "\\n", "\\/", "\\u00e9", "\\u12", "\\x", "\\"])
_QUOTE = st.sampled_from(["'", '"'])
_SEGMENT = st.one_of(
    _TEXT.map(lambda name: "." + name),
    st.builds(lambda a, i, b: f"[{a}{i}{b}]", _BLANK, _INDEX, _BLANK),
    st.builds(
        lambda a, q, body, q2, b: f"[{a}{q}{body}{q2}{b}]",
        _BLANK,
        _QUOTE,
        st.lists(st.one_of(_CHARS, _ESCAPE), max_size=4).map("".join),
        _QUOTE,
        _BLANK,
    ),
    _TEXT,
)
JSONPATHS = st.builds(
    lambda start, segments: start + "".join(segments),
    st.sampled_from(["$", "$", "$", "", "@"]),
    st.lists(_SEGMENT, max_size=4),
)


def _parses(text: str) -> bool:
    try:
        compile_path(text)
    except JSONPathError:
        return False
    return True


@settings(max_examples=1000)
@given(JSONPATHS)
@example("$.usage.total_tokens")
@example("$['a\\'b'][-1]")
@example('$[ "x\\u00e9" ]')
@example("$.a\n")
@example("$[01]")
def test_the_api_servers_jsonpath_pattern_accepts_exactly_what_the_parser_accepts(
    text: str,
) -> None:
    assert (re.fullmatch(PATH_PATTERN, text) is not None) == _parses(text)


def _retention_cel(text: str) -> bool:
    """The CEL rule of spec.topic.retention, term by term."""
    return (
        re.fullmatch(RETENTION_PATTERN, text) is not None
        and re.fullmatch(ZERO_DURATION_PATTERN, text) is None
        and not text.endswith("T")
    )


def _retention_python(text: str) -> bool:
    try:
        Topic(retention=text)
    except ValidationError:
        return False
    return True


_NUMBER = st.sampled_from(["1", "7", "42", "123456", "0", "00", "1234567", "٣", ""])


def _unit(unit: str) -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), _NUMBER.map(lambda number: number + unit))


def _units(units: str) -> st.SearchStrategy[str]:
    return st.tuples(*(_unit(unit) for unit in units)).map("".join)


# Durations in the canonical order with numbers that are fine, zero, too long or not ASCII,
# and shuffled junk, so that both sides of every term of the rule are reached.
RETENTION_TEXT = st.one_of(
    st.builds(
        lambda start, date, t, time: start + date + t + time,
        st.sampled_from(["P", "P", "P", "p", ""]),
        st.one_of(_units("WD"), _units("W"), _units("YD")),
        st.sampled_from(["", "T", "T"]),
        _units("HMS"),
    ),
    st.lists(st.sampled_from(["P", "T", "W", "D", "H", "M", "S", "1", "0"]), max_size=6).map(
        "".join
    ),
)


@settings(max_examples=1000)
@given(RETENTION_TEXT)
@example("P400D")
@example("PT0S")
@example("P0W0DT0H0M1S")
@example("P1DT")
@example("P1234567D")
def test_the_retention_rule_refuses_in_cel_exactly_what_it_refuses_in_python(text: str) -> None:
    assert _retention_cel(text) == _retention_python(text)


def test_every_iana_time_zone_has_the_form_the_quota_accepts() -> None:
    zones = zoneinfo.available_timezones()
    assert len(zones) > 300
    assert [zone for zone in zones if not re.fullmatch(TIME_ZONE_PATTERN, zone)] == []


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("^[a-z]+$", "r'^[a-z]+$'"),
        ("^'[a-z]+'\\.$", "r'''^'[a-z]+'\\.$'''"),
        ("it's'", "\"it's'\""),
        ("say \"\\d'", '"say \\"\\\\d\'"'),
        ("ends with \\", '"ends with \\\\"'),
    ],
)
def test_a_regex_becomes_a_cel_literal_that_means_the_same_text(text: str, literal: str) -> None:
    assert cel_string(text) == literal


# --- the generated schema ---------------------------------------------------------------------


def _schemas() -> list[tuple[str, dict[str, Any]]]:
    return [
        (crd["spec"]["names"]["kind"], crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        for crd in (meter_crd(), quota_crd())
    ]


def _walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize(("kind", "schema"), _schemas(), ids=["Meter", "Quota"])
def test_every_field_has_a_description_for_kubectl_explain(
    kind: str, schema: dict[str, Any]
) -> None:
    undescribed = [
        path
        for path, node in _walk(schema, kind)
        if not node.get("description", "").strip()
        and not path.endswith(("{}", "[]"))
        and path != f"{kind}.metadata"  # the API server forbids anything on metadata
    ]
    assert undescribed == []


@pytest.mark.parametrize(("kind", "schema"), _schemas(), ids=["Meter", "Quota"])
def test_the_schema_is_structural(kind: str, schema: dict[str, Any]) -> None:
    for path, node in _walk(schema, kind):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert not {"$ref", "title", "nullable"} & set(node), path


@pytest.mark.parametrize(("kind", "schema"), _schemas(), ids=["Meter", "Quota"])
def test_every_string_list_and_map_in_the_spec_is_bounded_for_the_cel_cost_budget(
    kind: str, schema: dict[str, Any]
) -> None:
    for path, node in _walk(schema["properties"]["spec"], f"{kind}.spec"):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path


@pytest.mark.parametrize(("kind", "schema"), _schemas(), ids=["Meter", "Quota"])
def test_every_cel_rule_has_a_message_that_names_its_field(
    kind: str, schema: dict[str, Any]
) -> None:
    rules = [
        rule for _, node in _walk(schema, kind) for rule in node.get("x-kubernetes-validations", [])
    ]
    assert rules
    for rule in rules:
        assert re.search(r"\b(spec|metadata)\.[a-zA-Z]", rule["message"]), rule


@pytest.mark.parametrize(("kind", "schema"), _schemas(), ids=["Meter", "Quota"])
def test_the_reference_documents_every_field_of_the_spec(kind: str, schema: dict[str, Any]) -> None:
    reference = (Path(__file__).resolve().parents[2] / "docs" / "resources.md").read_text()
    leaves = [
        path
        for path, node in _walk(schema["properties"]["spec"], "spec")
        if "properties" not in node and not path.endswith(("[]", "{}"))
    ]
    assert leaves
    assert [path for path in leaves if f"`{path}`" not in reference] == []


def test_the_transition_rules_are_those_of_the_four_history_fields() -> None:
    spec = meter_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    transitions = [
        rule["fieldPath"] for rule in spec["x-kubernetes-validations"] if "oldSelf" in rule["rule"]
    ]
    assert transitions == [".eventType", ".aggregation", ".valueProperty", ".windowSize"]


# --- the converter ----------------------------------------------------------------------------


class _Inner(BaseModel):
    """Inner docstring."""

    size: int = 1


class _Outer(BaseModel):
    inner: _Inner | None = None
    ratio: float = 1.0


def test_the_converter_inlines_references_and_turns_optionals_into_plain_fields() -> None:
    schema = _Outer.model_json_schema()
    schema["properties"]["inner"]["description"] = "Field description."
    schema["properties"]["ratio"]["exclusiveMinimum"] = 0
    converted = structural(schema)
    assert converted["properties"]["inner"] == {
        "description": "Field description.",
        "type": "object",
        "properties": {"size": {"type": "integer", "default": 1}},
    }
    assert converted["properties"]["ratio"] == {
        "type": "number",
        "default": 1.0,
        "exclusiveMinimum": True,
        "minimum": 0,
    }


def test_the_converter_refuses_what_the_api_server_would_refuse() -> None:
    class Tags(BaseModel):
        tags: set[str]

    with pytest.raises(ValueError, match="uniqueItems"):
        structural(Tags.model_json_schema())
