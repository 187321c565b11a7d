"""kmeter's custom resources, Meter and Quota (``kmeter.io/v1alpha1``), as Pydantic models.

The models are the single source of truth:

* :mod:`.crd` generates the CustomResourceDefinitions in ``crds/`` from them (``kmeter crds``;
  a test fails when the committed files drift): field descriptions become what
  ``kubectl explain`` prints, and the validation rules become CEL ``x-kubernetes-validations``
  the API server enforces;
* the same models validate manifests in Python (:func:`parse_resource`), for ``kmeter dev``,
  which runs without an API server, refusing what the API server refuses with the same messages
  (see :mod:`.base` for how each rule is written once in both forms, and the limits of that);
* the operator and the worker read specs through them.

Modules: :mod:`.meter`, :mod:`.quota`, :mod:`.status` (conditions, shared), :mod:`.base`
(the machinery), :mod:`.crd` (generation). The user reference is ``docs/resources.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kmeter.resources.base import API_VERSION, GROUP, VERSION, Cause, causes_of, transition_causes
from kmeter.resources.meter import Aggregation, DeletionPolicy, Meter, MeterSpec, WindowSize
from kmeter.resources.quota import Enforcement, PeriodUnit, Quota, QuotaSpec
from kmeter.resources.status import Condition, ConditionStatus, MeterStatus, QuotaStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Aggregation",
    "Cause",
    "Condition",
    "ConditionStatus",
    "DeletionPolicy",
    "Enforcement",
    "InvalidResource",
    "Meter",
    "MeterSpec",
    "MeterStatus",
    "PeriodUnit",
    "Quota",
    "QuotaSpec",
    "QuotaStatus",
    "WindowSize",
    "check_update",
    "parse_resource",
]

KINDS: dict[str, type[Meter] | type[Quota]] = {"Meter": Meter, "Quota": Quota}
"""The resource models by ``kind``."""


class InvalidResource(ValueError):
    """A manifest the API server would refuse; ``causes`` says why, one field at a time.

    ``str()`` reads like the API server's answer:
    ``Meter "llm-tokens" is invalid: spec.valueProperty: spec.valueProperty is required ...``.
    """

    def __init__(self, kind: str, name: str, causes: list[Cause]) -> None:
        self.kind = kind
        self.name = name
        self.causes = causes
        super().__init__(f'{kind} "{name}" is invalid: ' + "; ".join(map(str, causes)))


def _identity(manifest: Mapping[str, Any]) -> tuple[str, str]:
    metadata = manifest.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return str(manifest.get("kind", "")), str(name or "")


def parse_resource(manifest: Mapping[str, Any]) -> Meter | Quota:
    """A Meter or a Quota from a decoded manifest; :class:`InvalidResource` when it is invalid.

    The ``apiVersion`` must be ``kmeter.io/v1alpha1`` and ``kind`` one of :data:`KINDS`.
    """
    kind, name = _identity(manifest)
    model = KINDS.get(kind)
    if model is None:
        expected = " or ".join(KINDS)
        raise InvalidResource(kind or "object", name, [Cause("kind", f"must be {expected}")])
    try:
        return model.model_validate(manifest)
    except ValidationError as error:
        raise InvalidResource(kind, name, causes_of(error)) from None


def check_update(old: Meter | Quota, new: Meter | Quota) -> None:
    """Refuse an update the API server's transition rules refuse (an immutable field changed).

    Raises :class:`InvalidResource` naming each field; returns when the update is allowed.
    """
    causes = transition_causes(old, new)
    if causes:
        raise InvalidResource(new.kind, new.metadata.name, causes)
