"""The sidecar's configuration: command-line flags, each with a ``KMETER_*`` environment variable.

A flag given on the command line wins over its environment variable, which wins over the
default. The injector configures the sidecar through environment variables only, so every
setting has one (``--spool-dir`` is ``KMETER_SPOOL_DIR``, and so on; :data:`ENV_PREFIX`).

Repeatable ``--value NAME=JSONPATH`` flags come from ``KMETER_VALUES`` as entries separated by
newlines or ``;`` (a ``;`` inside a quoted JSONPath name therefore only works as a flag).

Every check that can fail is done here, before anything listens, and fails with one line that
names the flag and says what is wrong: ``--upstream: expected HOST:PORT, got '8080'``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kmeter.core.jsonpath import JSONPathError, compile_path
from kmeter.core.jsonpath import Path as JSONPath
from kmeter.kafka.settings import KafkaSettings
from kmeter_sidecar import __version__
from kmeter_sidecar.subject import SubjectSource, parse_subject_source

ENV_PREFIX: Final = "KMETER_"
ANONYMOUS: Final = "anonymous"
_VALUE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_VALUE_NAMES: Final = frozenset(
    {"method", "route", "status", "duration_ms", "request_bytes", "response_bytes", "aborted"}
)


class ConfigError(ValueError):
    """A flag or environment variable is invalid; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class JWTSettings:
    """How JWTs are verified: a shared secret (HS*) or a public key PEM (RS*, ES256/ES384)."""

    secret: bytes | None = None
    public_key_pem: bytes | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway_seconds: float = 30.0

    @property
    def verifies(self) -> bool:
        return self.secret is not None or self.public_key_pem is not None


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the sidecar needs to run; built by :func:`parse_config`."""

    listen_host: str = "0.0.0.0"
    port: int = 8000
    upstream_host: str = "127.0.0.1"
    upstream_port: int = 8080
    admin_host: str = "0.0.0.0"
    admin_port: int = 9091
    kafka_bootstrap: str = ""
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = field(default=None, repr=False)
    kafka_ca_file: str | None = None
    kafka_credentials_dir: str | None = None
    namespace: str = ""
    pod_name: str = ""
    source: str = ""
    event_type: str = "http.request"
    subject_from: SubjectSource = field(
        default_factory=lambda: parse_subject_source("header:X-Customer-Id")
    )
    missing_subject: str = "anonymous"
    jwt: JWTSettings = field(default_factory=JWTSettings)
    values: tuple[tuple[str, JSONPath], ...] = ()
    value_max_body: int = 1 << 20
    spool_dir: Path = Path("/tmp/kmeter-sidecar-spool")
    spool_max_bytes: int = 512 << 20
    queue_max: int = 20_000
    batch_max: int = 1_000
    linger_ms: int = 20
    max_header_bytes: int = 32 << 10
    header_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    upstream_connect_timeout: float = 5.0
    upstream_timeout: float = 60.0
    drain_timeout: float = 20.0
    flush_timeout: float = 5.0
    kafka_retry_interval: float = 2.0
    decisions_timeout: float = 10.0
    decisions_fail: str = "open"
    quota_max_subjects: int = 100_000
    clock_offset_seconds: float = 0.0
    log_level: str = "INFO"

    @property
    def upstream(self) -> str:
        return f"{self.upstream_host}:{self.upstream_port}"

    def kafka(self, client_id: str) -> KafkaSettings:
        """How the emitter and the decisions follower connect (validated by the parser)."""
        return KafkaSettings(
            bootstrap_servers=self.kafka_bootstrap,
            client_id=client_id,
            security_protocol=self.kafka_security_protocol,
            ssl_cafile=self.kafka_ca_file,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            credentials_dir=self.kafka_credentials_dir,
        )


def _host_port(flag: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{flag}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _port(flag: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{flag}: expected a port number 1-65535, got {text!r}")
    return int(text)


def _positive_int(flag: str, text: str) -> int:
    try:
        number = int(text.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{flag}: expected a positive integer, got {text!r}") from None
    if number <= 0:
        raise ConfigError(f"{flag}: expected a positive integer, got {text!r}")
    return number


_SIZE_UNITS: Final = {"": 1, "k": 1 << 10, "ki": 1 << 10, "m": 1 << 20, "mi": 1 << 20}
_SIZE_UNITS_G: Final = {"g": 1 << 30, "gi": 1 << 30}


def _size(flag: str, text: str) -> int:
    """Bytes: ``1048576``, ``64Ki``, ``512Mi``, ``1Gi`` (k/m/g are binary too)."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([A-Za-z]*)\s*", text)
    units = {**_SIZE_UNITS, **_SIZE_UNITS_G}
    if match is None or match.group(2).lower().removesuffix("b") not in units:
        raise ConfigError(f"{flag}: expected a size such as 65536, 64Ki or 512Mi, got {text!r}")
    size = int(match.group(1)) * units[match.group(2).lower().removesuffix("b")]
    if size <= 0:
        raise ConfigError(f"{flag}: must be more than 0 bytes, got {text!r}")
    return size


def _seconds(flag: str, text: str) -> float:
    """Seconds as a number (``2.5``) or with a unit (``500ms``, ``10s``, ``2m``)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m)?\s*", text)
    if match is None:
        raise ConfigError(f"{flag}: expected a duration such as 10, 2.5s or 500ms, got {text!r}")
    value = float(match.group(1))
    unit = match.group(2) or "s"
    seconds = value / 1000 if unit == "ms" else value * 60 if unit == "m" else value
    if seconds <= 0:
        raise ConfigError(f"{flag}: must be longer than 0, got {text!r}")
    return seconds


def parse_value(flag: str, text: str) -> tuple[str, JSONPath]:
    """``NAME=JSONPATH`` → (name, compiled path)."""
    name, sep, expression = text.partition("=")
    name, expression = name.strip(), expression.strip()
    if not sep or not name or not expression:
        raise ConfigError(f"{flag}: expected NAME=JSONPATH such as tokens=$.usage, got {text!r}")
    if _VALUE_NAME.fullmatch(name) is None:
        raise ConfigError(
            f"{flag}: the name {name!r} must be letters, digits and _ (not starting with a digit)"
        )
    if name in _RESERVED_VALUE_NAMES:
        raise ConfigError(
            f"{flag}: the name {name!r} is taken by the event's own data; "
            f"choose another than {', '.join(sorted(_RESERVED_VALUE_NAMES))}"
        )
    try:
        return name, compile_path(expression)
    except JSONPathError as error:
        raise ConfigError(f"{flag}: {error}") from None


def _read_file(flag: str, text: str) -> bytes:
    try:
        return Path(text).read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag}: cannot read {text!r}: {error.strerror}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kmeter-sidecar",
        description=(
            "The kmeter metering proxy: an HTTP/1.1 reverse proxy in front of the app on "
            "localhost that emits one usage event per request to Kafka. Every flag can also be "
            "set by its KMETER_* environment variable (shown in brackets)."
        ),
    )

    def add(flag: str, help_text: str, **kwargs: object) -> None:
        name = str(kwargs.get("dest", flag.removeprefix("--").replace("-", "_")))
        env = ENV_PREFIX + name.upper()  # what parse_config reads: --value's is KMETER_VALUES
        parser.add_argument(flag, help=f"{help_text} [{env}]", **kwargs)  # type: ignore[arg-type]

    parser.add_argument("--version", action="version", version=__version__)
    add("--port", "port the proxy listens on (default 8000)")
    add("--listen-host", "address the proxy listens on (default 0.0.0.0)")
    add("--upstream", "the app, HOST:PORT (default 127.0.0.1:8080)")
    add("--admin-port", "port of /metrics, /healthz and /readyz (default 9091)")
    add("--admin-host", "address of the admin port (default 0.0.0.0)")
    add("--kafka-bootstrap", "Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (required)")
    add(
        "--kafka-security-protocol",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default PLAINTEXT)",
    )
    add("--kafka-sasl-mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with SASL_*)")
    add("--kafka-sasl-username", "SASL username (or from --kafka-credentials-dir)")
    add("--kafka-sasl-password", "SASL password; prefer the variable or a credentials dir")
    add("--kafka-ca-file", "CA bundle that signed the brokers' certificates (SSL, SASL_SSL)")
    add(
        "--kafka-credentials-dir",
        "directory with sasl-username, sasl-password and ca.crt, re-read at every connection "
        "(the injector mounts the namespace's kmeter-kafka Secret there)",
    )
    add("--namespace", "the pod's namespace: events go to kmeter.<namespace>.events (required)")
    add("--pod-name", "the pod's name, for the event source (default: $HOSTNAME)")
    add("--source", "CloudEvents source (default kmeter-sidecar/<namespace>/<pod>)")
    add("--event-type", "CloudEvents type of the events (default http.request)")
    add(
        "--subject-from",
        "where the subject comes from: header:NAME, jwt-claim:CLAIM or query:PARAM "
        "(default header:X-Customer-Id)",
    )
    add(
        "--missing-subject",
        "a request without a subject: anonymous (counted as 'anonymous') or reject (401)",
    )
    add("--jwt-secret", "shared secret (HS256/384/512); JWT signatures are then verified")
    add("--jwt-secret-file", "file holding the shared secret (HS256/384/512)")
    add(
        "--jwt-public-key-file",
        "PEM public key: RSA (RS256/384/512) or EC P-256/P-384 (ES256/ES384)",
    )
    add("--jwt-audience", "required JWT aud (checked when a key is configured)")
    add("--jwt-issuer", "required JWT iss (checked when a key is configured)")
    add(
        "--value",
        "NAME=JSONPATH read from a JSON response body or the SSE data chunks into the event "
        "data (repeatable; env: entries separated by newlines or ';')",
        action="append",
        dest="values",
        metavar="NAME=JSONPATH",
    )
    add("--value-max-body", "largest response body buffered to read values (default 1Mi)")
    add("--spool-dir", "directory of the on-disk spool (an emptyDir in Kubernetes)")
    add("--spool-max-bytes", "spool size limit; newer events are dropped beyond it (512Mi)")
    add("--queue-max", "events held in memory before spilling to the spool (default 20000)")
    add("--batch-max", "events per Kafka batch (default 1000)")
    add("--linger-ms", "how long a batch waits to fill, in ms (default 20)")
    add("--max-header-bytes", "largest request head; larger gets 431 (default 32Ki)")
    add("--header-timeout", "time to receive a request head; else 408 (default 10s)")
    add("--keepalive-timeout", "idle keep-alive connections are closed after (default 60s)")
    add("--upstream-connect-timeout", "connecting to the app; else 502 (default 5s)")
    add("--upstream-timeout", "time to the app's response head; else 504 (default 60s)")
    add("--drain-timeout", "on SIGTERM, how long in-flight requests may finish (default 20s)")
    add("--flush-timeout", "on SIGTERM, how long to try Kafka before spooling (default 5s)")
    add("--kafka-retry-interval", "pause between reconnection attempts to Kafka (default 2s)")
    add(
        "--decisions-timeout",
        "at start, how long to wait for the quota decisions before serving without them "
        "(default 10s)",
    )
    add(
        "--decisions-fail",
        "when quota decisions are unavailable: open (serve, no enforcement) or closed "
        "(refuse with 503) (default open)",
    )
    add(
        "--quota-max-subjects",
        "most subjects per quota counted locally or rate-limited at once (default 100000)",
    )
    add(
        "--clock-offset-seconds",
        "seconds added to the wall clock for quota periods (tests and demos only; default 0)",
    )
    add("--log-level", "DEBUG, INFO, WARNING or ERROR (default INFO)")
    return parser


def _env_values(env: Mapping[str, str]) -> list[str]:
    raw = env.get(ENV_PREFIX + "VALUES", "")
    return [entry.strip() for entry in re.split(r"[\n;]", raw) if entry.strip()]


def _text(flag: str, text: str) -> str:
    return text


def _subject_source(flag: str, text: str) -> SubjectSource:
    try:
        return parse_subject_source(text)
    except ValueError as error:
        raise ConfigError(f"{flag}: {error}") from None


def _missing_policy(flag: str, text: str) -> str:
    if text not in ("anonymous", "reject"):
        raise ConfigError(f"{flag}: expected anonymous or reject, got {text!r}")
    return text


def _fail_mode(flag: str, text: str) -> str:
    if text not in ("open", "closed"):
        raise ConfigError(f"{flag}: expected open or closed, got {text!r}")
    return text


def _offset(flag: str, text: str) -> float:
    """Any finite number of seconds, negative too."""
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(
            f"{flag}: expected a number of seconds such as 86400, got {text!r}"
        ) from None
    if not math.isfinite(seconds):
        raise ConfigError(f"{flag}: expected a finite number of seconds, got {text!r}")
    return seconds


def _log_level(flag: str, text: str) -> str:
    if text.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{flag}: expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return text.upper()


def _directory(flag: str, text: str) -> Path:
    return Path(text)


# Settings that are one flag each, and how their text becomes a value.
_SIMPLE: Final[dict[str, Callable[[str, str], object]]] = {
    "port": _port,
    "admin_port": _port,
    "listen_host": _text,
    "admin_host": _text,
    "event_type": _text,
    "source": _text,
    "subject_from": _subject_source,
    "missing_subject": _missing_policy,
    "spool_dir": _directory,
    "log_level": _log_level,
    "decisions_fail": _fail_mode,
    "clock_offset_seconds": _offset,
    **dict.fromkeys(
        (
            "header_timeout",
            "keepalive_timeout",
            "upstream_connect_timeout",
            "upstream_timeout",
            "drain_timeout",
            "flush_timeout",
            "kafka_retry_interval",
            "decisions_timeout",
        ),
        _seconds,
    ),
    **dict.fromkeys(("value_max_body", "spool_max_bytes", "max_header_bytes"), _size),
    **dict.fromkeys(("queue_max", "batch_max", "linger_ms", "quota_max_subjects"), _positive_int),
}

Lookup = Callable[[str], tuple[str, str] | None]


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Parse flags and ``KMETER_*`` variables into a :class:`Config`, or raise ConfigError.

    ``argparse`` itself exits with status 2 for unknown flags and ``--help``.
    """
    environment = os.environ if env is None else env
    args = vars(_parser().parse_args(argv))

    def get(name: str) -> tuple[str, str] | None:
        """(flag, text) from the command line, else the environment, else None."""
        value = args.get(name)
        if value is not None:
            return "--" + name.replace("_", "-"), str(value)
        env_name = ENV_PREFIX + name.upper()
        if environment.get(env_name, "") != "":
            return env_name, environment[env_name]
        return None

    found: dict[str, object] = {}
    for name, parse in _SIMPLE.items():
        given = get(name)
        if given is not None:
            found[name] = parse(*given)
    upstream = get("upstream")
    if upstream is not None:
        found["upstream_host"], found["upstream_port"] = _host_port(*upstream)
    _identity(get, environment, found)
    found["jwt"] = _jwt_settings(get)
    found["values"] = _values(args.get("values"), environment)
    return Config(**{**_as_kwargs(Config()), **found})  # type: ignore[arg-type]


def _identity(get: Lookup, env: Mapping[str, str], found: dict[str, object]) -> None:
    """Kafka, namespace, pod and event source."""
    bootstrap = get("kafka_bootstrap")
    if bootstrap is None:
        raise ConfigError("--kafka-bootstrap (KMETER_KAFKA_BOOTSTRAP) is required")
    for server in bootstrap[1].split(","):
        _host_port(bootstrap[0], server.strip())
    found["kafka_bootstrap"] = bootstrap[1]
    for name in (
        "kafka_security_protocol",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ca_file",
        "kafka_credentials_dir",
    ):
        given = get(name)
        if given is not None:
            found[name] = given[1]
    try:  # the same checks, and messages, as every other kmeter process
        Config(**{**_as_kwargs(Config()), **found}).kafka("kmeter-sidecar")  # type: ignore[arg-type]
    except ValueError as error:
        raise ConfigError(f"Kafka settings (--kafka-*): {error}") from None
    namespace = get("namespace") or (
        ("POD_NAMESPACE", env["POD_NAMESPACE"]) if env.get("POD_NAMESPACE") else None
    )
    if namespace is None:
        raise ConfigError("--namespace (KMETER_NAMESPACE) is required")
    if re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace[1]) is None:
        raise ConfigError(f"{namespace[0]}: {namespace[1]!r} is not a Kubernetes namespace name")
    found["namespace"] = namespace[1]
    pod = get("pod_name")
    found["pod_name"] = pod[1] if pod else env.get("HOSTNAME") or socket.gethostname()
    if "source" not in found:
        found["source"] = f"kmeter-sidecar/{found['namespace']}/{found['pod_name']}"


def _values(flags: list[str] | None, env: Mapping[str, str]) -> tuple[tuple[str, JSONPath], ...]:
    if flags:
        values = [parse_value("--value", text) for text in flags]
    else:
        values = [parse_value(ENV_PREFIX + "VALUES", text) for text in _env_values(env)]
    names = [name for name, _ in values]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ConfigError(f"--value: the name {duplicated[0]!r} is given twice")
    return tuple(values)


def _jwt_settings(get: Lookup) -> JWTSettings:
    secret = get("jwt_secret")
    secret_file = get("jwt_secret_file")
    key_file = get("jwt_public_key_file")
    audience = get("jwt_audience")
    issuer = get("jwt_issuer")
    if sum(x is not None for x in (secret, secret_file, key_file)) > 1:
        raise ConfigError(
            "give one of --jwt-secret, --jwt-secret-file and --jwt-public-key-file, not several"
        )
    secret_bytes: bytes | None = None
    if secret is not None:
        secret_bytes = secret[1].encode()
    elif secret_file is not None:
        secret_bytes = _read_file(*secret_file).strip()
    if secret_bytes is not None and not secret_bytes:
        raise ConfigError("--jwt-secret: the secret is empty")
    pem = _read_file(*key_file) if key_file is not None else None
    settings = JWTSettings(
        secret=secret_bytes,
        public_key_pem=pem,
        audience=audience[1] if audience else None,
        issuer=issuer[1] if issuer else None,
    )
    if pem is not None and key_file is not None:
        from kmeter_sidecar.jwt import load_verifier  # noqa: PLC0415 (cryptography is heavy)

        try:
            load_verifier(settings)
        except ValueError as error:
            raise ConfigError(f"{key_file[0]}: {error}") from None
    return settings


def _as_kwargs(config: Config) -> dict[str, object]:
    return {name: getattr(config, name) for name in Config.__slots__}
