"""Meters and Quotas for ``kmeter dev``, read from the YAML files ``kubectl apply`` would take.

Every ``*.yaml``, ``*.yml`` and ``*.json`` file of the folder (not its sub-folders), in name
order, each possibly holding several documents (``---``). Documents of other API groups (a
Deployment, a Service) are skipped, so the folder of a real application works as it is; empty
documents too. A ``kmeter.io`` document is validated by the same models that generate the CRDs
(:func:`kmeter.resources.parse_resource`), whose messages are the API server's own
(``spec.valueProperty: spec.valueProperty is required unless aggregation is COUNT``); then
the checks the operator makes (:func:`kmeter.operator.quota_reconcile.check_quota`: the Quota's
Meter exists in its namespace, aggregates something a limit applies to, …) — where the cluster
would accept the Quota and report a ``MeterFound=False`` condition, ``kmeter dev`` refuses to
start, since there is no status to read.

Every problem of every file is collected, and :class:`ManifestError` lists them all, each
naming the file, the document (1-based, as an editor counts ``---`` sections), the resource and
the field. A manifest without ``metadata.namespace`` belongs to the default namespace (as
``kubectl apply`` without ``-n``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kmeter.api.meters import MeterInfo, meter_info
from kmeter.operator.quota_reconcile import check_quota
from kmeter.resources import GROUP, InvalidResource, Meter, Quota, manifest_yaml, parse_resource

__all__ = ["ManifestError", "Manifests", "QuotaInfo", "load_manifests"]

SUFFIXES = frozenset({".yaml", ".yml", ".json"})


class ManifestError(Exception):
    """The manifests cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class QuotaInfo:
    """A valid Quota, with where it was read."""

    namespace: str
    name: str
    resource: Quota
    origin: str
    """``file, document N``."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Manifests:
    """What a folder declares: Meters (as the usage API serves them) and Quotas."""

    meters: list[MeterInfo]
    quotas: list[QuotaInfo]

    @property
    def namespaces(self) -> list[str]:
        return sorted({meter.namespace for meter in self.meters})


@dataclass(frozen=True)
class _Document:
    origin: str
    manifest: dict[str, Any]
    resource: Meter | Quota


def _documents(path: Path, problems: list[str]) -> list[tuple[int, Any]]:
    try:
        return list(enumerate(manifest_yaml.load_all(path.read_text()), start=1))
    except OSError as error:
        problems.append(f"{path}: cannot be read: {error.strerror}")
    except UnicodeDecodeError:
        problems.append(f"{path}: is not UTF-8 text")
    except yaml.YAMLError as error:
        problems.append(f"{path}: is not valid YAML: {' '.join(str(error).split())}")
    return []


def _parse(
    path: Path, number: int, document: Any, namespace: str, problems: list[str]
) -> _Document | None:
    origin = f"{path}, document {number}"
    if document is None:
        return None
    if not isinstance(document, dict):
        problems.append(f"{origin}: expected a Kubernetes object (a mapping), got {document!r}")
        return None
    api_version = str(document.get("apiVersion", ""))
    if api_version.partition("/")[0] != GROUP:
        return None  # another kind of object (a Deployment of the app): not ours
    metadata = document.get("metadata")
    manifest = dict(document)
    if isinstance(metadata, Mapping) and not metadata.get("namespace"):
        manifest["metadata"] = {**metadata, "namespace": namespace}
    try:
        resource = parse_resource(manifest)
    except InvalidResource as error:
        for cause in error.causes:
            problems.append(f'{origin}: {error.kind} "{error.name}": {cause}')
        return None
    return _Document(origin, manifest, resource)


def load_manifests(folder: Path, default_namespace: str = "default") -> Manifests:
    """The Meters and Quotas of ``folder``; :class:`ManifestError` with every problem."""
    if not folder.is_dir():
        raise ManifestError([f"{folder}: not a folder (give the folder holding the manifests)"])
    problems: list[str] = []
    documents = [
        parsed
        for path in sorted(folder.iterdir())
        if path.suffix in SUFFIXES and path.is_file()
        for number, document in _documents(path, problems)
        if (parsed := _parse(path, number, document, default_namespace, problems)) is not None
    ]

    seen: dict[tuple[str, str, str], str] = {}
    meters: dict[tuple[str, str], tuple[_Document, MeterInfo]] = {}
    quotas: list[tuple[_Document, Quota]] = []
    for document in documents:
        resource = document.resource
        metadata = resource.metadata
        identity = (resource.kind, str(metadata.namespace), metadata.name)
        if identity in seen:
            problems.append(
                f'{document.origin}: {resource.kind} "{metadata.name}" in namespace '
                f"{metadata.namespace} is already declared in {seen[identity]}"
            )
            continue
        seen[identity] = document.origin
        if isinstance(resource, Meter):
            try:
                info = meter_info(document.manifest, default_namespace)
            except ValueError as error:
                problems.append(f'{document.origin}: Meter "{metadata.name}": {error}')
                continue
            meters[info.key] = (document, info)
        else:
            quotas.append((document, resource))

    found_quotas: list[QuotaInfo] = []
    for document, quota in quotas:
        namespace = str(quota.metadata.namespace)
        meter = meters.get((namespace, quota.spec.meter_ref.name))
        condition = check_quota(
            namespace,
            _spec(quota),
            None if meter is None else _spec(meter[1].resource),
        )
        if condition.status != "True":
            problems.append(
                f'{document.origin}: Quota "{quota.metadata.name}": {condition.message}'
            )
            continue
        found_quotas.append(QuotaInfo(namespace, quota.metadata.name, quota, document.origin))
    if problems:
        raise ManifestError(problems)
    return Manifests([info for _, info in meters.values()], found_quotas)


def _spec(resource: Meter | Quota) -> dict[str, Any]:
    """The spec as the operator sees it: camelCase JSON, defaults filled in."""
    spec: dict[str, Any] = resource.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return spec
