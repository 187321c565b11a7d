"""The enforcement flags: decisions timeout and failure mode, local-count bound, clock offset."""

from __future__ import annotations

import pytest

from kmeter_sidecar.config import ConfigError, parse_config

BASE = ["--kafka-bootstrap", "k:9092", "--namespace", "team-a"]


def test_defaults_fail_open_after_ten_seconds_on_the_real_clock() -> None:
    config = parse_config(BASE, {})
    assert (config.decisions_timeout, config.decisions_fail) == (10.0, "open")
    assert (config.quota_max_subjects, config.clock_offset_seconds) == (100_000, 0.0)


def test_every_setting_has_its_environment_variable_and_flags_win() -> None:
    env = {
        "KMETER_DECISIONS_TIMEOUT": "2500ms",
        "KMETER_DECISIONS_FAIL": "closed",
        "KMETER_QUOTA_MAX_SUBJECTS": "5000",
        "KMETER_CLOCK_OFFSET_SECONDS": "-86400.5",
    }
    config = parse_config(BASE, env)
    assert config.decisions_timeout == 2.5
    assert config.decisions_fail == "closed"
    assert config.quota_max_subjects == 5000
    assert config.clock_offset_seconds == -86400.5
    assert parse_config([*BASE, "--decisions-fail", "open"], env).decisions_fail == "open"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--decisions-fail", "maybe"], "--decisions-fail: expected open or closed"),
        (["--decisions-timeout", "soon"], "--decisions-timeout: expected a duration"),
        (["--quota-max-subjects", "0"], "--quota-max-subjects: expected a positive integer"),
        (["--clock-offset-seconds", "1d"], "--clock-offset-seconds: expected a number"),
        (["--clock-offset-seconds", "inf"], "--clock-offset-seconds: expected a finite"),
    ],
)
def test_bad_enforcement_settings_are_refused_naming_the_flag(
    args: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config([*BASE, *args], {})
