"""``kmeter dev``'s options are checked before anything listens, each refusal naming the flag."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from kmeter.dev.runner import DevError, DevSettings, prepare

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GOOD = DevSettings(manifests=EXAMPLES / "dev", upstream="http://127.0.0.1:9000")


def test_the_example_settings_give_the_proxy_the_meters_event_type_and_the_upstream() -> None:
    prepared = prepare(replace(GOOD, values=("usage=$.usage",)))
    proxy = prepared.proxy
    assert (proxy.upstream_host, proxy.upstream_port) == ("127.0.0.1", 9000)
    assert proxy.event_type == "llm.completion"
    assert proxy.namespace == "default"
    assert [name for name, _ in proxy.values] == ["usage"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"upstream": "https://api.example.com"}, "--upstream: 'https://api.example.com': the "),
        ({"upstream": "http://127.0.0.1:9000/v1"}, "--upstream: expected http://HOST:PORT"),
        ({"upstream": "127.0.0.1:99999"}, "--upstream: '127.0.0.1:99999' has an invalid port"),
        ({"proxy_port": 0}, "--proxy-port: expected a port number 1-65535, got 0"),
        ({"api_port": 8000}, "--proxy-port and --api-port must differ"),
        ({"subject_from": "cookie:id"}, "--subject-from: expected header:NAME, jwt-claim:CLAIM"),
        ({"values": ("tokens",)}, "--value: expected NAME=JSONPATH"),
        ({"values": ("a=$.x", "a=$.y")}, "--value: a name is given twice"),
        ({"manifests": EXAMPLES / "meters"}, "--event-type: the Meters of namespace default "),
        ({"manifests": EXAMPLES / "nowhere"}, "not a folder"),
        ({"manifests": EXAMPLES / "openai-upstream"}, "declares no Meter"),
    ],
)
def test_a_bad_option_is_refused_naming_it(change: dict[str, object], says: str) -> None:
    with pytest.raises(DevError) as refused:
        prepare(replace(GOOD, **change))  # type: ignore[arg-type]
    assert says in str(refused.value)


def test_the_event_type_can_be_chosen_when_the_meters_count_several() -> None:
    prepared = prepare(replace(GOOD, manifests=EXAMPLES / "meters", event_type="api.request"))
    assert prepared.proxy.event_type == "api.request"


def test_the_proxys_namespace_must_have_meters(tmp_path: Path) -> None:
    text = (EXAMPLES / "dev" / "llm-tokens.yaml").read_text()
    (tmp_path / "m.yaml").write_text(
        text.replace("metadata:\n", "metadata:\n  namespace: team-a\n")
    )
    with pytest.raises(DevError, match="--namespace: no Meter in namespace default; "):
        prepare(replace(GOOD, manifests=tmp_path))
    assert prepare(replace(GOOD, manifests=tmp_path, namespace="team-a")).proxy.namespace == (
        "team-a"
    )
