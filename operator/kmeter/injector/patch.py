"""The decision for one Pod: a JSONPatch that adds the sidecar, a skip, or a refusal — pure.

:func:`decide` takes the Pod as the API server sends it in an AdmissionReview (a dict) and
returns one of

* :class:`Inject` — RFC 6902 operations that add the sidecar, and warnings to pass on;
* :class:`Skip` — nothing to do: not asked for, already injected, or an excluded namespace;
* :class:`~kmeter.injector.annotations.Refusal` — asked for, but an annotation (or the pod's
  spec) makes it impossible; the pod is admitted unchanged with that reason.

How the sidecar takes over the app's traffic, with no iptables (Dapr-style): the app's named
container port (``kmeter.io/port``, say ``http`` → 8080) is renamed (``app-http``), and the
sidecar declares a port with the original *name* on its own number (15080) and proxies to
``127.0.0.1:8080``. A Service with ``targetPort: http`` then resolves to the sidecar — the
endpoints controller looks up named ports in the containers and in native sidecars. The app
container's probes and lifecycle hooks that named the port are pointed at the new name, so
kubelet's health checks still reach the app directly and are not metered.

The result is idempotent: the patch sets ``kmeter.io/status: injected``, and a pod that has
that annotation or a container called ``kmeter-sidecar`` is skipped — a re-invocation
(``reinvocationPolicy: IfNeeded``) or a pod re-created from an injected pod's manifest never
gets a second sidecar. The patch only adds the sidecar's volumes, never touches other
containers, and leaves a pod valid: names that would clash are refused, not overwritten.

Caveat: JSONPatch ``add`` at ``-`` appends; the patch adds whole arrays when the pod has none
(``initContainers``, ``volumes``), as RFC 6902 cannot append to a missing array.
The pod is the one in the AdmissionReview: earlier mutating webhooks' changes are in it, later
ones' are not (they re-invoke this one, which then skips).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kmeter.injector.annotations import (
    PORT,
    SPOOL_HEADROOM,
    STATUS,
    STATUS_INJECTED,
    Refusal,
    SidecarRequest,
    injection_requested,
    read_annotations,
)
from kmeter.injector.settings import InjectorSettings
from kmeter.kafka import tenant_credentials

SIDECAR_NAME: Final = "kmeter-sidecar"
ADMIN_PORT_NAME: Final = "kmeter-admin"
SPOOL_VOLUME: Final = "kmeter-spool"
SPOOL_DIR: Final = "/var/run/kmeter/spool"
JWT_KEY_VOLUME: Final = "kmeter-jwt-key"
JWT_KEY_DIR: Final = "/etc/kmeter/jwt"
DEFAULT_CONTAINER: Final = "kubectl.kubernetes.io/default-container"
SIDECAR_USER: Final = 65532
_PROBES: Final = ("livenessProbe", "readinessProbe", "startupProbe")
_HANDLERS: Final = ("httpGet", "tcpSocket")

JSON = dict[str, Any]


@dataclass(frozen=True)
class Inject:
    """Add the sidecar: ``patch`` is the JSONPatch; the app's port ``port_name`` is renamed."""

    patch: list[JSON]
    port_name: str
    renamed_to: str
    native: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    """Leave the pod alone: ``not-requested``, ``already-injected`` or ``excluded-namespace``."""

    reason: str


Decision = Inject | Skip | Refusal


def decide(pod: Mapping[str, Any], namespace: str, settings: InjectorSettings) -> Decision:
    """What to do with ``pod``, created in ``namespace``."""
    metadata = pod.get("metadata") or {}
    annotations: dict[str, str] = dict(metadata.get("annotations") or {})
    spec = pod.get("spec") or {}
    requested = injection_requested(annotations)
    skip = _skip_reason(requested, annotations, spec, namespace, settings)
    if skip is not None:
        return Skip(skip)
    if isinstance(requested, Refusal):
        return requested
    if spec.get("hostNetwork"):
        return Refusal("the pod uses hostNetwork: the sidecar would bind the node's ports")
    request = read_annotations(annotations, settings.sidecar)
    if isinstance(request, Refusal):
        return request
    return _plan(spec, annotations, request, settings)


def _skip_reason(
    requested: bool | Refusal,
    annotations: Mapping[str, str],
    spec: Mapping[str, Any],
    namespace: str,
    settings: InjectorSettings,
) -> str | None:
    if requested is False:
        return "not-requested"
    # Excluded namespaces are left alone entirely: no warning even for a bad annotation.
    if namespace in settings.excluded_namespaces:
        return "excluded-namespace"
    if annotations.get(STATUS) == STATUS_INJECTED or any(
        container.get("name") == SIDECAR_NAME for container in _all_containers(spec)
    ):
        return "already-injected"
    return None


def _plan(
    spec: Mapping[str, Any],
    annotations: Mapping[str, str],
    request: SidecarRequest,
    settings: InjectorSettings,
) -> Decision:
    containers: list[JSON] = list(spec.get("containers") or [])
    found = _app_port(containers, request.port_name)
    if isinstance(found, Refusal):
        return found
    container_index, port_index, port = found
    port_name = str(port["name"])
    taken_names = {
        str(p.get("name"))
        for c in _all_containers(spec)
        for p in c.get("ports") or []
        if p.get("name")
    }
    taken_numbers = {
        int(p["containerPort"]) for c in _all_containers(spec) for p in c.get("ports") or []
    }
    for number, what in ((request.sidecar_port, "sidecar"), (request.admin_port, "admin")):
        if number in taken_numbers:
            return Refusal(
                f"the {what} port {number} is already a container port of this pod: set "
                f"kmeter.io/{'sidecar' if what == 'sidecar' else 'admin'}-port to a free one"
            )
    if ADMIN_PORT_NAME in taken_names:
        return Refusal(f"the pod already has a port named {ADMIN_PORT_NAME!r}")
    volumes = {str(v.get("name")) for v in spec.get("volumes") or []}
    ours = [SPOOL_VOLUME, JWT_KEY_VOLUME]
    if tenant_credentials.needs_credentials(settings.sidecar.kafka_security_protocol):
        ours.append(tenant_credentials.VOLUME)
    for volume in ours:
        if volume in volumes:
            return Refusal(f"the pod already has a volume named {volume!r}")
    new_name = renamed_port(port_name, taken_names | {ADMIN_PORT_NAME})
    app = f"/spec/containers/{container_index}"
    patch: list[JSON] = [
        {"op": "replace", "path": f"{app}/ports/{port_index}/name", "value": new_name},
        *_repoint_probes(containers[container_index], app, port_name, new_name),
    ]
    sidecar = sidecar_container(request, settings, port_name, int(port["containerPort"]))
    where = "initContainers" if request.native else "containers"
    patch.extend(_append(spec, where, [sidecar]))
    patch.extend(_append(spec, "volumes", _volumes(request, settings)))
    patch.append(
        {"op": "add", "path": f"/metadata/annotations/{_pointer(STATUS)}", "value": "injected"}
    )
    warnings = list(request.warnings)
    if not request.native and DEFAULT_CONTAINER not in annotations:
        # `kubectl logs` and `exec` pick the first container unless told: name the app's,
        # the one whose port the sidecar takes over.
        patch.append(
            {
                "op": "add",
                "path": f"/metadata/annotations/{_pointer(DEFAULT_CONTAINER)}",
                "value": str(containers[container_index].get("name")),
            }
        )
    return Inject(patch, port_name, new_name, request.native, tuple(warnings))


def _all_containers(spec: Mapping[str, Any]) -> list[JSON]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _app_port(containers: list[JSON], wanted: str | None) -> tuple[int, int, JSON] | Refusal:
    """(container index, port index, port) of the app's port, or why there is none."""
    named = [
        (ci, pi, port)
        for ci, container in enumerate(containers)
        for pi, port in enumerate(container.get("ports") or [])
        if port.get("name")
    ]
    names = sorted({str(port["name"]) for _, _, port in named})
    if wanted is None:
        if len(names) == 1:
            wanted = names[0]
        elif "http" in names:
            wanted = "http"
        elif not names:
            return Refusal(
                "the pod has no named container port: name the app's port (ports: [{name: "
                f"http, containerPort: 8080}}]) or set {PORT}"
            )
        else:
            return Refusal(f"the pod has several named ports ({', '.join(names)}): set {PORT}")
    matches = [(ci, pi, port) for ci, pi, port in named if port["name"] == wanted]
    if not matches:
        listed = ", ".join(names) or "none"
        return Refusal(f"{PORT}: no container port is named {wanted!r} (named ports: {listed})")
    if len(matches) > 1:
        return Refusal(f"{PORT}: several containers have a port named {wanted!r}")
    ci, pi, port = matches[0]
    if (port.get("protocol") or "TCP") != "TCP":
        return Refusal(f"{PORT}: the port {wanted!r} is {port['protocol']}; the sidecar speaks TCP")
    return ci, pi, port


def renamed_port(name: str, taken: set[str]) -> str:
    """A new, valid, unused name for the app's port: ``app-http``, else ``app2-http``, …"""
    for n in itertools.count(1):
        prefix = "app" if n == 1 else f"app{n}"
        candidate = f"{prefix}-{name}"[:15].rstrip("-")
        if candidate not in taken and candidate != name:
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def _repoint_probes(container: Mapping[str, Any], path: str, old: str, new: str) -> list[JSON]:
    """Probes and lifecycle hooks of the app container that named ``old`` now name ``new``."""
    ops: list[JSON] = []
    handlers: list[tuple[str, Any]] = [(f"{path}/{p}", container.get(p)) for p in _PROBES]
    lifecycle = container.get("lifecycle") or {}
    handlers += [
        (f"{path}/lifecycle/{hook}", lifecycle.get(hook)) for hook in ("postStart", "preStop")
    ]
    for where, probe in handlers:
        for kind in _HANDLERS:
            if isinstance(probe, Mapping) and (probe.get(kind) or {}).get("port") == old:
                ops.append({"op": "replace", "path": f"{where}/{kind}/port", "value": new})
    return ops


def sidecar_container(
    request: SidecarRequest, settings: InjectorSettings, port_name: str, app_port: int
) -> JSON:
    """The sidecar container, configured by ``KMETER_*`` variables."""
    defaults = settings.sidecar
    env: list[JSON] = [
        {"name": "KMETER_PORT", "value": str(request.sidecar_port)},
        {"name": "KMETER_ADMIN_PORT", "value": str(request.admin_port)},
        {"name": "KMETER_UPSTREAM", "value": f"127.0.0.1:{app_port}"},
        {"name": "KMETER_KAFKA_BOOTSTRAP", "value": defaults.kafka_bootstrap},
        *tenant_credentials.client_environment(
            defaults.kafka_security_protocol, defaults.kafka_sasl_mechanism
        ),
        {
            "name": "KMETER_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "KMETER_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "KMETER_SPOOL_DIR", "value": SPOOL_DIR},
        *({"name": name, "value": value} for name, value in sorted(request.env.items())),
    ]
    mounts: list[JSON] = [{"name": SPOOL_VOLUME, "mountPath": SPOOL_DIR}]
    if tenant_credentials.needs_credentials(defaults.kafka_security_protocol):
        mounts.append(tenant_credentials.volume_mount())
    if request.jwt_secret is not None:
        env.append(
            {
                "name": "KMETER_JWT_SECRET",
                "valueFrom": {
                    "secretKeyRef": {"name": request.jwt_secret.name, "key": request.jwt_secret.key}
                },
            }
        )
    if request.jwt_public_key is not None:
        env.append(
            {
                "name": "KMETER_JWT_PUBLIC_KEY_FILE",
                "value": f"{JWT_KEY_DIR}/{request.jwt_public_key.key}",
            }
        )
        mounts.append({"name": JWT_KEY_VOLUME, "mountPath": JWT_KEY_DIR, "readOnly": True})
    admin = {"port": ADMIN_PORT_NAME, "scheme": "HTTP"}
    container: JSON = {
        "name": SIDECAR_NAME,
        "image": defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": ["kmeter-sidecar"],
        "ports": [
            {"name": port_name, "containerPort": request.sidecar_port, "protocol": "TCP"},
            {"name": ADMIN_PORT_NAME, "containerPort": request.admin_port, "protocol": "TCP"},
        ],
        "env": env,
        "resources": request.resources,
        "volumeMounts": mounts,
        # The app's containers start once the proxy is ready (for a native sidecar).
        "startupProbe": {
            "httpGet": {"path": "/readyz", **admin},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
        "readinessProbe": {"httpGet": {"path": "/readyz", **admin}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", **admin},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": SIDECAR_USER,
            "runAsGroup": SIDECAR_USER,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if request.native:
        container["restartPolicy"] = "Always"
    return container


def _volumes(request: SidecarRequest, settings: InjectorSettings) -> list[JSON]:
    volumes: list[JSON] = [
        {
            "name": SPOOL_VOLUME,
            "emptyDir": {"sizeLimit": str(request.spool_max_bytes + SPOOL_HEADROOM)},
        }
    ]
    if request.jwt_public_key is not None:
        key = request.jwt_public_key.key
        volumes.append(
            {
                "name": JWT_KEY_VOLUME,
                "configMap": {
                    "name": request.jwt_public_key.name,
                    "items": [{"key": key, "path": key}],
                },
            }
        )
    if tenant_credentials.needs_credentials(settings.sidecar.kafka_security_protocol):
        # Optional: a pod in a namespace without Meters (so without the Secret) still starts;
        # its sidecar spools until the Secret appears (the kubelet then fills the volume).
        volumes.append(tenant_credentials.volume(optional=True))
    return volumes


def _append(spec: Mapping[str, Any], field: str, values: list[JSON]) -> list[JSON]:
    """Operations appending ``values`` to the array ``spec[field]``."""
    if spec.get(field):
        return [{"op": "add", "path": f"/spec/{field}/-", "value": value} for value in values]
    # RFC 6902 cannot append to a missing array: add it whole (replacing a null or []).
    return [{"op": "add", "path": f"/spec/{field}", "value": values}]


def _pointer(key: str) -> str:
    """A map key as a JSON Pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")
