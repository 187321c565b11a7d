"""A pod's ``kmeter.io/*`` annotations, read into what the sidecar should be — or the reason not.

The annotations go on the pod template of a Deployment, StatefulSet, Job, … (they are copied
to every pod). Each sidecar setting maps to one of the sidecar's ``KMETER_*`` environment
variables (:data:`ENV_ANNOTATIONS`); the rest shape the container itself.

One validation: the environment the sidecar would get is parsed by the sidecar's own
:func:`kmeter_sidecar.config.parse_config` (and each ``kmeter.io/value.NAME`` by its
:func:`~kmeter_sidecar.config.parse_value`), so an annotation the sidecar would refuse at start
is refused here, at admission, with the same reason — naming the annotation instead of the
variable. Only what the injector itself adds (ports, Secret and ConfigMap references,
resources) is checked here.

A bad annotation never breaks a pod: :func:`read_annotations` returns a :class:`Refusal`, and
the webhook admits the pod unchanged with a warning (:mod:`kmeter.injector.review`).
Unknown ``kmeter.io/`` annotations are not refused — a later kmeter may know them — but they
get a warning naming the closest known annotation (an admission warning and a Warning Event,
:mod:`kmeter.injector.events`), since a typo (``kmeter.io/subject_from``) would otherwise go
unnoticed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from kmeter.injector.settings import SIDECAR_PLACEHOLDERS, SidecarDefaults
from kmeter.resources.meter import QUANTITY_PATTERN
from kmeter_sidecar.config import Config, ConfigError, parse_config, parse_value

PREFIX: Final = "kmeter.io/"
INJECT: Final = "kmeter.io/inject"
STATUS: Final = "kmeter.io/status"
STATUS_INJECTED: Final = "injected"
PORT: Final = "kmeter.io/port"
VALUES: Final = "kmeter.io/values"
VALUE_PREFIX: Final = "kmeter.io/value."
SPOOL_SIZE: Final = "kmeter.io/spool-size"
JWT_SECRET: Final = "kmeter.io/jwt-secret"
JWT_PUBLIC_KEY: Final = "kmeter.io/jwt-public-key"
SIDECAR_PORT: Final = "kmeter.io/sidecar-port"
ADMIN_PORT: Final = "kmeter.io/admin-port"
NATIVE_SIDECAR: Final = "kmeter.io/native-sidecar"
CPU_REQUEST: Final = "kmeter.io/sidecar-cpu-request"
MEMORY_REQUEST: Final = "kmeter.io/sidecar-memory-request"
CPU_LIMIT: Final = "kmeter.io/sidecar-cpu-limit"
MEMORY_LIMIT: Final = "kmeter.io/sidecar-memory-limit"

# Annotations passed to the sidecar as they are, by the variable they set.
ENV_ANNOTATIONS: Final = {
    "kmeter.io/event-type": "KMETER_EVENT_TYPE",
    "kmeter.io/subject-from": "KMETER_SUBJECT_FROM",
    "kmeter.io/missing-subject": "KMETER_MISSING_SUBJECT",
    "kmeter.io/value-max-body": "KMETER_VALUE_MAX_BODY",
    "kmeter.io/jwt-audience": "KMETER_JWT_AUDIENCE",
    "kmeter.io/jwt-issuer": "KMETER_JWT_ISSUER",
    "kmeter.io/upstream-timeout": "KMETER_UPSTREAM_TIMEOUT",
    "kmeter.io/drain-timeout": "KMETER_DRAIN_TIMEOUT",
    "kmeter.io/log-level": "KMETER_LOG_LEVEL",
    "kmeter.io/decisions-fail": "KMETER_DECISIONS_FAIL",
}
KNOWN: Final = frozenset(
    {
        INJECT,
        STATUS,
        PORT,
        VALUES,
        SPOOL_SIZE,
        JWT_SECRET,
        JWT_PUBLIC_KEY,
        SIDECAR_PORT,
        ADMIN_PORT,
        NATIVE_SIDECAR,
        CPU_REQUEST,
        MEMORY_REQUEST,
        CPU_LIMIT,
        MEMORY_LIMIT,
        *ENV_ANNOTATIONS,
    }
)
SPOOL_HEADROOM: Final = 64 << 20
"""The spool ``emptyDir``'s ``sizeLimit`` is the sidecar's limit plus this: the kubelet evicts a
pod whose ``emptyDir`` outgrows its limit, the sidecar stops writing at its own first."""

_QUANTITY: Final = re.compile(QUANTITY_PATTERN)
_DNS_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_DATA_KEY: Final = re.compile(r"[-._a-zA-Z0-9]+")


@dataclass(frozen=True)
class Refusal:
    """The pod asked for a sidecar, but an annotation is wrong: ``reason`` says which and why."""

    reason: str


@dataclass(frozen=True)
class SecretKey:
    """A key of a Secret or ConfigMap in the pod's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class SidecarRequest:
    """What the annotations ask for; the pod's own spec decides the rest (:mod:`.patch`)."""

    port_name: str | None
    env: dict[str, str]
    spool_max_bytes: int
    native: bool
    sidecar_port: int
    admin_port: int
    resources: dict[str, dict[str, str]]
    jwt_secret: SecretKey | None = None
    jwt_public_key: SecretKey | None = None
    warnings: tuple[str, ...] = field(default=())


def injection_requested(annotations: Mapping[str, str]) -> bool | Refusal:
    """``kmeter.io/inject``: ``"true"`` or ``"false"`` (absent is false), else a refusal."""
    value = annotations.get(INJECT)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    return Refusal(f'{INJECT}: expected "true" or "false", got {value!r}')


def read_annotations(
    annotations: Mapping[str, str], defaults: SidecarDefaults
) -> SidecarRequest | Refusal:
    """The sidecar a pod with ``kmeter.io/inject: "true"`` asks for, or why it cannot have one."""
    try:
        return _read(annotations, defaults)
    except _Bad as bad:
        return Refusal(str(bad))


class _Bad(Exception):
    """An annotation is wrong; raised deep, turned into a :class:`Refusal` once."""


def _read(annotations: Mapping[str, str], defaults: SidecarDefaults) -> SidecarRequest:
    env = {
        variable: annotations[name]
        for name, variable in ENV_ANNOTATIONS.items()
        if annotations.get(name, "") != ""
    }
    values = _values(annotations)
    if values:
        env["KMETER_VALUES"] = "\n".join(values)
    env["KMETER_SPOOL_MAX_BYTES"] = annotations.get(SPOOL_SIZE) or defaults.spool_size
    jwt_secret = _reference(annotations, JWT_SECRET, "secret")
    jwt_public_key = _reference(annotations, JWT_PUBLIC_KEY, "public.pem")
    if jwt_secret and jwt_public_key:
        raise _Bad(f"give one of {JWT_SECRET} and {JWT_PUBLIC_KEY}, not both")
    # The secret's value and the key file exist only in the running pod: the sidecar checks
    # those at start. A placeholder secret still lets it check audience and issuer here.
    checked = sidecar_config({**env, "KMETER_JWT_SECRET": "x"} if jwt_secret else env)
    sidecar_port = _port(annotations, SIDECAR_PORT, defaults.port)
    admin_port = _port(annotations, ADMIN_PORT, defaults.admin_port)
    if sidecar_port == admin_port:
        raise _Bad(f"{SIDECAR_PORT} and {ADMIN_PORT} must differ, both are {sidecar_port}")
    port_name = annotations.get(PORT) or None
    if port_name is not None and not is_port_name(port_name):
        raise _Bad(f"{PORT}: {port_name!r} is not a container port name (1-15 of a-z, 0-9, -)")
    return SidecarRequest(
        port_name=port_name,
        env=env,
        spool_max_bytes=checked.spool_max_bytes,
        native=_boolean(annotations, NATIVE_SIDECAR, defaults.native),
        sidecar_port=sidecar_port,
        admin_port=admin_port,
        resources=_resources(annotations, defaults),
        jwt_secret=jwt_secret,
        jwt_public_key=jwt_public_key,
        warnings=tuple(
            _unknown(name)
            for name in sorted(annotations)
            if name.startswith(PREFIX) and name not in KNOWN and not name.startswith(VALUE_PREFIX)
        ),
    )


def _unknown(name: str) -> str:
    known = sorted(key.removeprefix(PREFIX) for key in KNOWN)  # the prefix says nothing
    guess = difflib.get_close_matches(name.removeprefix(PREFIX), known, n=1)
    hint = f"did you mean {PREFIX}{guess[0]}? " if guess else ""
    return f"{name}: not a kmeter annotation, ignored ({hint}known: see docs/sidecar.md)"


def sidecar_config(env: Mapping[str, str]) -> Config:
    """The sidecar's own parse of ``env`` (placeholders for what only the pod knows).

    A :class:`ConfigError` names the variable; it is re-raised naming the annotation.
    """
    try:
        return parse_config([], {**SIDECAR_PLACEHOLDERS, **env})
    except ConfigError as error:
        raise _Bad(_annotation_message(str(error))) from None
    except SystemExit:  # argparse's way; cannot happen with no arguments, but never crash
        raise _Bad("the sidecar refused its configuration") from None


def _annotation_message(message: str) -> str:
    names = {variable: name for name, variable in ENV_ANNOTATIONS.items()}
    names |= {
        "KMETER_VALUES": f"{VALUES} / {VALUE_PREFIX}NAME",
        "KMETER_SPOOL_MAX_BYTES": SPOOL_SIZE,
    }
    for variable, name in sorted(names.items(), key=lambda item: -len(item[0])):
        flag = "--" + variable.removeprefix("KMETER_").lower().replace("_", "-")
        message = message.replace(variable, name).replace(flag, name)
    return message.replace("--value", f"{VALUES} / {VALUE_PREFIX}NAME")


def _values(annotations: Mapping[str, str]) -> list[str]:
    """``kmeter.io/values`` (``NAME=JSONPATH`` entries, ``;`` or newline apart) and every
    ``kmeter.io/value.NAME: JSONPATH``, as the sidecar's ``KMETER_VALUES`` entries."""
    entries = [
        entry.strip() for entry in re.split(r"[\n;]", annotations.get(VALUES, "")) if entry.strip()
    ]
    for key in sorted(annotations):
        if not key.startswith(VALUE_PREFIX):
            continue
        name, path = key.removeprefix(VALUE_PREFIX), annotations[key].strip()
        if ";" in path or "\n" in path:
            raise _Bad(f"{key}: the JSONPath cannot contain ';' or a line break")
        try:
            parse_value(key, f"{name}={path}")
        except ConfigError as error:
            raise _Bad(str(error)) from None
        entries.append(f"{name}={path}")
    return entries


def _reference(annotations: Mapping[str, str], name: str, default_key: str) -> SecretKey | None:
    """``NAME`` or ``NAME/KEY`` of a Secret (or ConfigMap) in the pod's namespace."""
    text = annotations.get(name, "").strip()
    if not text:
        return None
    object_name, _, key = text.partition("/")
    key = key or default_key
    if _DNS_SUBDOMAIN.fullmatch(object_name) is None or len(object_name) > 253:
        raise _Bad(f"{name}: {object_name!r} is not the name of an object (expected NAME[/KEY])")
    if _DATA_KEY.fullmatch(key) is None:
        raise _Bad(f"{name}: {key!r} is not a valid key (letters, digits, '-', '_', '.')")
    return SecretKey(object_name, key)


def _port(annotations: Mapping[str, str], name: str, default: int) -> int:
    text = annotations.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _Bad(f"{name}: expected a port number 1-65535, got {text!r}")
    return int(text)


def _boolean(annotations: Mapping[str, str], name: str, default: bool) -> bool:
    text = annotations.get(name, "").strip()
    if not text:
        return default
    if text not in ("true", "false"):
        raise _Bad(f'{name}: expected "true" or "false", got {text!r}')
    return text == "true"


def _resources(
    annotations: Mapping[str, str], defaults: SidecarDefaults
) -> dict[str, dict[str, str]]:
    resources: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for name, kind, resource, default in (
        (CPU_REQUEST, "requests", "cpu", defaults.cpu_request),
        (MEMORY_REQUEST, "requests", "memory", defaults.memory_request),
        (CPU_LIMIT, "limits", "cpu", defaults.cpu_limit),
        (MEMORY_LIMIT, "limits", "memory", defaults.memory_limit),
    ):
        value = annotations.get(name, "").strip() or default
        if value and _QUANTITY.fullmatch(value) is None:
            raise _Bad(f"{name}: {value!r} is not a Kubernetes quantity such as 100m or 128Mi")
        if value:
            resources[kind][resource] = value
    for resource, request_name, limit_name in (
        ("cpu", CPU_REQUEST, CPU_LIMIT),
        ("memory", MEMORY_REQUEST, MEMORY_LIMIT),
    ):
        request = resources["requests"].get(resource)
        limit = resources["limits"].get(resource)
        # The API server refuses a container whose request exceeds its limit: the whole pod
        # would fail, so refuse the injection instead.
        if request and limit and quantity_value(request) > quantity_value(limit):
            raise _Bad(
                f"{request_name}: {request} is more than the {resource} limit {limit} "
                f"(set {limit_name} too)"
            )
    return {kind: values for kind, values in resources.items() if values}


_SUFFIXES: Final = {
    **{
        suffix: Decimal(1024) ** power
        for power, suffix in enumerate("KMGTPE", 1)
        for suffix in [suffix + "i"]
    },
    **{
        suffix: Decimal(10) ** exponent
        for suffix, exponent in zip("numkMGTPE", (-9, -6, -3, 3, 6, 9, 12, 15, 18), strict=True)
    },
    "": Decimal(1),
}


def quantity_value(text: str) -> Decimal:
    """The number a Kubernetes quantity (``100m``, ``1Gi``, ``1e3``) stands for."""
    match = re.fullmatch(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)", text)
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix in _SUFFIXES:
        return number * _SUFFIXES[suffix]
    return number * Decimal(10) ** Decimal(suffix[1:])  # an exponent: e3, E-2


def is_port_name(name: str) -> bool:
    """Kubernetes' rule for a container port name (an IANA service name)."""
    return (
        0 < len(name) <= 15
        and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) is not None
        and "--" not in name
        and re.search(r"[a-z]", name) is not None
    )
