"""Flags, KMETER_* environment variables, and the errors bad ones get."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kmeter_sidecar.config import ConfigError, parse_config

BASE = ["--kafka-bootstrap", "k:9092", "--namespace", "team-a"]


def test_environment_variables_configure_everything_and_flags_win() -> None:
    env = {
        "KMETER_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
        "KMETER_NAMESPACE": "team-a",
        "KMETER_POD_NAME": "api-0",
        "KMETER_UPSTREAM": "127.0.0.1:3000",
        "KMETER_PORT": "8001",
        "KMETER_SUBJECT_FROM": "query:customer",
        "KMETER_VALUES": "tokens=$.usage.total_tokens\nmodel=$.model; usage=$.usage",
        "KMETER_SPOOL_MAX_BYTES": "64Mi",
        "KMETER_UPSTREAM_TIMEOUT": "500ms",
    }
    config = parse_config(["--port", "9000"], env)
    assert config.port == 9000
    assert (config.upstream_host, config.upstream_port) == ("127.0.0.1", 3000)
    assert config.source == "kmeter-sidecar/team-a/api-0"
    assert str(config.subject_from) == "query:customer"
    assert [name for name, _ in config.values] == ["tokens", "model", "usage"]
    assert config.spool_max_bytes == 64 << 20
    assert config.upstream_timeout == 0.5
    assert config.spool_dir == Path("/tmp/kmeter-sidecar-spool")


def test_the_help_names_the_variable_each_flag_is_read_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--help"], {})
    options = capsys.readouterr().out.split("options:", 1)[1]
    flag_help = r"^  (--[a-z-]+)\s(?:(?!^  -).)*?\[(KMETER_[A-Z_]+)\]"  # one option's lines
    names = dict(re.findall(flag_help, options, re.M | re.S))
    assert len(names) > 40
    assert names["--value"] == "KMETER_VALUES"  # not KMETER_VALUE, which nothing reads
    samples = {"--value": "tokens=$.t", "--linger-ms": "7", "--jwt-secret": "s"}
    for flag, sample in samples.items():
        env = {"KMETER_KAFKA_BOOTSTRAP": "k:9092", "KMETER_NAMESPACE": "team-a"}
        from_env = parse_config([], {**env, names[flag]: sample})
        from_flag = parse_config([*BASE, flag, sample], {})
        assert from_env == from_flag, flag


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upstream", "localhost"], "--upstream: expected HOST:PORT"),
        (["--port", "70000"], "--port: expected a port number"),
        (["--value", "x"], "--value: expected NAME=JSONPATH"),
        (["--value", "status=$.a"], "is taken by the event's own data"),
        (["--value", "a=$.x", "--value", "a=$.y"], "is given twice"),
        (["--value", "a=$..x"], "recursive descent"),
        (["--spool-max-bytes", "lots"], "--spool-max-bytes: expected a size"),
        (["--header-timeout", "0"], "--header-timeout: must be longer than 0"),
        (["--log-level", "loud"], "--log-level: expected DEBUG"),
        (["--jwt-secret", "a", "--jwt-public-key-file", "/k"], "give one of"),
        (["--jwt-public-key-file", "/nonexistent/key.pem"], "cannot read"),
    ],
)
def test_bad_settings_are_refused_naming_the_flag(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("$", r"\$").replace(".", r"\.")):
        parse_config([*BASE, *args], {})


def test_kafka_and_namespace_are_required_and_pod_namespace_is_a_fallback() -> None:
    with pytest.raises(ConfigError, match="--kafka-bootstrap"):
        parse_config(["--namespace", "a"], {})
    with pytest.raises(ConfigError, match="--namespace"):
        parse_config(["--kafka-bootstrap", "k:1"], {})
    assert parse_config(["--kafka-bootstrap", "k:1"], {"POD_NAMESPACE": "b"}).namespace == "b"


def test_a_public_key_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        parse_config([*BASE, "--jwt-public-key-file", str(key)], {})
