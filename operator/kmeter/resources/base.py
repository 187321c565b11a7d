"""What every resource model shares: the base model, validation rules written twice, errors.

The API server validates a Meter with CEL rules (``x-kubernetes-validations``); ``kmeter dev``
validates the same manifest in Python, with no API server. So that the two refuse the same
things for the same reasons, each rule is *one* :class:`Rule` object holding both forms side by
side: the CEL expression with its ``message`` (copied into the CRD by :mod:`.crd`), and a Python
``check`` that the model runs on validation and that reports the very same ``message``.
Nothing proves the two forms equivalent but the tests: ``tests/unit/test_resource_models.py``
runs the Python side and ``tests/integration/test_crd_validation.py`` sends the same bad
objects to a real API server, asserting the same words.

* A rule about one value is an annotation: ``Annotated[str, Rule(...)]``.
* A rule about several fields of one object goes in the model's :attr:`KubeModel.cel_rules`.
* A rule about an update (``oldSelf``) is a :class:`Transition` in
  :attr:`KubeModel.cel_transitions`; Python has no "old object" during validation, so callers
  ask :func:`transition_causes` explicitly (``kmeter.resources.check_update``).
* ``x-kubernetes-list-type`` ``map``/``set`` is the :class:`UniqueList` annotation; the API
  server refuses duplicates itself, Python through the same annotation.

Errors: Pydantic's :class:`~pydantic.ValidationError` is turned into :class:`Cause` lines
(``spec.topic.partitions: Input should be greater than or equal to 1``) shaped like the API
server's ``<field>: <reason>``. Rule messages name their field in full (``spec.valueProperty is
required unless ...``) so they read well wherever they are shown.

Caveat: Pydantic puts a model-level rule's error at the model (``spec``); the rule's
``field_path`` (the CEL ``fieldPath``) is appended by :func:`causes_of`, so both sides name
``spec.valueProperty``. Map keys are written ``spec.groupBy.model`` in Python where the API
server writes ``spec.groupBy[model]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

GROUP: Final = "kmeter.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "kmeter.io/v1alpha1"

Reason = Literal["FieldValueInvalid", "FieldValueRequired", "FieldValueForbidden"]
"""The ``reason`` a CEL rule may give (the API server's error type)."""

VALIDATIONS = "x-kubernetes-validations"
_RULE_ERROR = "kmeter_rule"


def cel_string(text: str) -> str:
    """``text`` as a CEL string literal, raw where possible so a regex reads as in Python."""
    if "\n" not in text and not text.endswith("\\"):  # a raw string cannot end with \
        if "'" not in text:
            return f"r'{text}'"
        if "'''" not in text and not text.endswith("'"):
            return f"r'''{text}'''"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def fullmatch(pattern: str) -> Callable[[str], bool]:
    """A Python check for a CEL ``self.matches(pattern)`` on an anchored pattern.

    ``re.fullmatch``, not ``re.match``: in Python ``$`` also matches before a final newline,
    in RE2 (the API server's engine) it does not.
    """
    compiled = re.compile(pattern)
    return lambda text: compiled.fullmatch(text) is not None


def _rule_error(message: str, field_path: str | None) -> PydanticCustomError:
    # The message goes through the context, so braces in it are never read as a template.
    return PydanticCustomError(
        _RULE_ERROR, "{message}", {"message": message, "field_path": field_path or ""}
    )


@dataclass(frozen=True)
class Rule:
    """One validation rule, as CEL for the API server and as a Python ``check``.

    ``check`` gets the value (a model instance for model-level rules) and returns whether it is
    valid; it may instead raise :class:`ValueError` whose text Python appends to ``message``
    as a detail (the API server shows ``message`` alone).
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None
    reason: Reason | None = None

    def schema(self) -> dict[str, str]:
        """The rule's ``x-kubernetes-validations`` entry."""
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        if self.reason:
            entry["reason"] = self.reason
        return entry

    def enforce(self, value: Any) -> None:
        """Raise the rule's error (a Pydantic error) when ``value`` breaks it."""
        try:
            valid = self.check(value)
        except ValueError as error:
            raise _rule_error(f"{self.message} ({error})", self.field_path) from None
        if not valid:
            raise _rule_error(self.message, self.field_path)

    def _validated(self, value: Any) -> Any:
        self.enforce(value)
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._validated, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault(VALIDATIONS, []).append(self.schema())
        return json_schema


@dataclass(frozen=True)
class Transition:
    """A rule about an update: CEL with ``oldSelf``, and ``check(old, new)`` in Python."""

    rule: str
    message: str
    check: Callable[[Any, Any], bool]
    field_path: str | None = None

    def schema(self) -> dict[str, str]:
        """The rule's ``x-kubernetes-validations`` entry."""
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


def immutable(field: str, json_name: str, message: str) -> Transition:
    """An object-level rule: field ``json_name`` (Python ``field``) never changes.

    It sits on the parent object, not the field, so that it also refuses adding or removing an
    optional field: a rule on the field itself runs only when old and new both have it.
    """
    return Transition(
        rule=(
            f"has(self.{json_name}) == has(oldSelf.{json_name}) && "
            f"(!has(self.{json_name}) || self.{json_name} == oldSelf.{json_name})"
        ),
        message=message,
        check=lambda old, new: getattr(old, field) == getattr(new, field),
        field_path=f".{json_name}",
    )


def _add_model_rules(schema: dict[str, Any], cls: type[Any]) -> None:
    entries = [rule.schema() for rule in (*cls.cel_rules, *cls.cel_transitions)]
    if entries:
        schema.setdefault(VALIDATIONS, []).extend(entries)


class KubeModel(BaseModel):
    """Base of the resource models: camelCase JSON names, unknown fields refused, CEL rules.

    Unknown fields are refused, as ``kubectl apply`` does by default (strict field validation);
    a typo in a manifest is an error, not a silently ignored field.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        json_schema_extra=_add_model_rules,
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = ()
    """Rules about this object as a whole (CEL ``self`` is the object)."""
    cel_transitions: ClassVar[tuple[Transition, ...]] = ()
    """Rules about an update of this object (CEL ``self`` and ``oldSelf``)."""

    @model_validator(mode="after")
    def _enforce_cel_rules(self) -> Self:
        for rule in type(self).cel_rules:
            rule.enforce(self)
        return self

    def manifest(self) -> dict[str, Any]:
        """The object as JSON-ready data with camelCase names; unset optional fields omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class UniqueList:
    """A list whose items are unique: ``x-kubernetes-list-type: set`` (no ``key``: whole
    values) or ``map`` keyed by the items' field ``key``. Python refuses a duplicate as the API
    server does: ``Duplicate value: 80``, ``Duplicate value: {"subject":"acme"}``."""

    key: str | None = None

    def _identity(self, item: Any) -> Any:
        return item if self.key is None else getattr(item, self.key)

    def _shown(self, identity: Any) -> Any:
        return identity if self.key is None else {to_camel(self.key): identity}

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def unique(items: list[Any]) -> list[Any]:
            seen: set[Any] = set()
            for index, item in enumerate(items):
                identity = self._identity(item)
                if identity in seen:
                    raise PydanticCustomError(
                        "kmeter_duplicate",
                        "Duplicate value: {value}",
                        {
                            "value": json.dumps(self._shown(identity), separators=(",", ":")),
                            "field_path": f"[{index}]",
                        },
                    )
                seen.add(identity)
            return items

        return core_schema.no_info_after_validator_function(unique, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if self.key is None:
            json_schema["x-kubernetes-list-type"] = "set"
        else:
            json_schema["x-kubernetes-list-type"] = "map"
            json_schema["x-kubernetes-list-map-keys"] = [to_camel(self.key)]
        return json_schema


@dataclass(frozen=True)
class Cause:
    """One reason an object is invalid: the field (``spec.topic.partitions``) and why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def field_path(location: Sequence[str | int]) -> str:
    """``("spec", "overrides", 1, "limit")`` → ``spec.overrides[1].limit``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _message(problem: ErrorDetails, path: str) -> str:
    """Pydantic's message, in the API server's words where Pydantic's differ."""
    kind = problem["type"]
    if kind == "missing":
        return "Required value"
    if kind == "extra_forbidden":
        return f'unknown field "{path}"'
    if kind in ("enum", "literal_error"):
        expected = re.findall(r"'([^']*)'", str((problem.get("ctx") or {}).get("expected", "")))
        supported = ", ".join(json.dumps(value) for value in expected)
        return f"Unsupported value: {json.dumps(problem['input'])}: supported values: {supported}"
    return problem["msg"]


def causes_of(error: ValidationError) -> list[Cause]:
    """The causes of a Pydantic validation error, one per problem, API-server style."""
    causes = []
    for problem in error.errors(include_url=False):
        context = problem.get("ctx") or {}
        path = (field_path(problem["loc"]) + str(context.get("field_path", ""))).lstrip(".")
        causes.append(Cause(path or "<root>", _message(problem, path)))
    return causes


def transition_causes(old: KubeModel, new: KubeModel, path: str = "") -> list[Cause]:
    """What the :class:`Transition` rules of ``new`` and of its nested objects refuse."""
    causes = [
        Cause((path + (rule.field_path or "")).lstrip(".") or "<root>", rule.message)
        for rule in type(new).cel_transitions
        if not rule.check(old, new)
    ]
    for name, info in type(new).model_fields.items():
        before, after = getattr(old, name), getattr(new, name)
        if isinstance(before, KubeModel) and isinstance(after, KubeModel):
            causes += transition_causes(before, after, f"{path}.{info.alias or name}")
    return causes


DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A Kubernetes object name (RFC 1123 subdomain), as the API server checks it."""
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
"""A namespace name (RFC 1123 label)."""

_NAME_RULES = {
    # The API server's own words (k8s.io/apimachinery validation.IsDNS1123Subdomain / Label).
    "name": (
        fullmatch(DNS_SUBDOMAIN_PATTERN),
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
        "'-' or '.', and must start and end with an alphanumeric character",
    ),
    "namespace": (
        fullmatch(DNS_LABEL_PATTERN),
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
        "'-', and must start and end with an alphanumeric character",
    ),
}


class ObjectMeta(BaseModel):
    """Standard object metadata. Only what kmeter reads is checked; other fields pass through."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=253)
    namespace: str | None = Field(default=None, max_length=63)
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @field_validator("name", "namespace")
    @classmethod
    def _valid_name(cls, name: str | None, info: ValidationInfo) -> str | None:
        valid, message = _NAME_RULES[str(info.field_name)]
        if name is not None and not valid(name):
            raise PydanticCustomError("kmeter_name", message)
        return name
