"""Which Meters the API serves: the :class:`MeterSource` seam and its two implementations.

* :class:`KubeMeters` lists ``meters.kmeter.io`` in every namespace through the Kubernetes API
  (credentials: the pod's ServiceAccount, else ``KUBECONFIG``), every few seconds;
* :class:`ManifestMeters` reads Meter manifests from the YAML files of a folder
  (``--manifests DIR``; ``kmeter dev`` uses the same), re-read when a file changes. A manifest
  without ``metadata.namespace`` belongs to the namespace given (default ``default``).
  Other kinds (Quotas) are skipped.

Both give :class:`MeterInfo` objects: the validated resource and the compiled spec the core
needs. A Meter that fails validation is skipped with a warning (the API server would not have
accepted it anyway).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from kmeter.core.fold import MeterSpec
from kmeter.kube.client import KubeClient
from kmeter.resources import Meter, manifest_yaml

log = logging.getLogger("kmeter.api.meters")
METERS_PATH = "/apis/kmeter.io/v1alpha1/meters"


@dataclass(frozen=True)
class MeterInfo:
    """A Meter the API serves."""

    namespace: str
    name: str
    uid: str
    created: str | None
    resource: Meter
    spec: MeterSpec

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


class MeterSource(Protocol):
    """Where the Meters come from."""

    async def load(self) -> list[MeterInfo]:
        """Every Meter now; raise on failure (the previous set stays in force)."""
        ...


def meter_info(manifest: Mapping[str, Any], default_namespace: str = "default") -> MeterInfo:
    """A :class:`MeterInfo` from a manifest or an API object; ValueError when invalid."""
    metadata = dict(manifest.get("metadata") or {})
    namespace = metadata.get("namespace") or default_namespace
    try:
        resource = Meter.model_validate(
            {
                "apiVersion": manifest.get("apiVersion"),
                "kind": manifest.get("kind"),
                "metadata": {**metadata, "namespace": namespace},
                "spec": manifest.get("spec"),
            }
        )
    except ValidationError as error:
        raise ValueError(f"Meter {namespace}/{metadata.get('name')}: {error}") from None
    spec = resource.spec
    compiled = MeterSpec.create(
        event_type=spec.event_type,
        aggregation=spec.aggregation,
        window_size=spec.window_size,
        value_property=spec.value_property,
        group_by=spec.group_by,
    )
    name = resource.metadata.name
    return MeterInfo(
        namespace=namespace,
        name=name,
        uid=str(metadata.get("uid") or f"{namespace}/{name}"),
        created=metadata.get("creationTimestamp"),
        resource=resource,
        spec=compiled,
    )


def _valid(
    manifests: Iterable[Mapping[str, Any]], default_namespace: str, warned: set[str]
) -> list[MeterInfo]:
    """The valid Meters; each distinct problem is logged once (the list is re-read every few
    seconds, and the same dump each time would bury everything else)."""
    found = []
    problems = set()
    for manifest in manifests:
        try:
            found.append(meter_info(manifest, default_namespace))
        except ValueError as error:
            problems.add(str(error))
            if str(error) not in warned:
                log.warning("skipping an invalid Meter: %s", error)
    warned.clear()
    warned.update(problems)  # a problem fixed and made again is logged again
    return found


@dataclass
class KubeMeters:
    """Meters of every namespace, listed through the Kubernetes API."""

    kube: KubeClient
    _warned: set[str] = field(default_factory=set)

    async def load(self) -> list[MeterInfo]:
        return _valid(await self.kube.list(METERS_PATH), "default", self._warned)


@dataclass
class ManifestMeters:
    """Meters from the ``*.yaml``/``*.yml``/``*.json`` files of a folder."""

    folder: Path
    default_namespace: str = "default"
    _warned: set[str] = field(default_factory=set)

    async def load(self) -> list[MeterInfo]:
        return _valid(await asyncio.to_thread(self._read), self.default_namespace, self._warned)

    def _read(self) -> list[Mapping[str, Any]]:
        if not self.folder.is_dir():
            raise OSError(f"{self.folder} is not a folder of Meter manifests")
        manifests: list[Mapping[str, Any]] = []
        for path in sorted(self.folder.iterdir()):
            if path.suffix not in {".yaml", ".yml", ".json"}:
                continue
            for document in manifest_yaml.load_all(path.read_text()):
                if isinstance(document, dict) and document.get("kind") == "Meter":
                    manifests.append(document)
        return manifests
