"""Annotations read with the sidecar's own validation, refused with a reason naming them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kmeter.injector.annotations import Refusal, SidecarRequest, quantity_value, read_annotations
from kmeter.injector.settings import SidecarDefaults

DEFAULTS = SidecarDefaults(kafka_bootstrap="kafka:9092")


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"kmeter.io/subject-from": "cookie:s"}, "kmeter.io/subject-from: expected header:NAME"),
        ({"kmeter.io/subject-from": "header:X Y"}, "is not a valid HTTP header name"),
        ({"kmeter.io/missing-subject": "drop"}, "kmeter.io/missing-subject: expected anonymous"),
        (
            {"kmeter.io/values": "tokens"},
            "kmeter.io/values / kmeter.io/value.NAME: expected NAME=JSONPATH",
        ),
        ({"kmeter.io/values": "a=$.x;a=$.y"}, "the name 'a' is given twice"),
        ({"kmeter.io/value.1x": "$.x"}, "kmeter.io/value.1x: the name '1x' must be letters"),
        ({"kmeter.io/value.route": "$.x"}, "the name 'route' is taken"),
        ({"kmeter.io/value.tokens": "usage"}, "kmeter.io/value.tokens:"),
        ({"kmeter.io/value.tokens": "$['a;b']"}, "cannot contain ';'"),
        ({"kmeter.io/value-max-body": "big"}, "kmeter.io/value-max-body: expected a size"),
        ({"kmeter.io/upstream-timeout": "soon"}, "kmeter.io/upstream-timeout: expected a duration"),
        ({"kmeter.io/log-level": "chatty"}, "kmeter.io/log-level: expected DEBUG"),
        ({"kmeter.io/spool-size": "0"}, "kmeter.io/spool-size: must be more than 0 bytes"),
        ({"kmeter.io/port": "HTTP"}, "kmeter.io/port: 'HTTP' is not a container port name"),
        ({"kmeter.io/sidecar-port": "70000"}, "kmeter.io/sidecar-port: expected a port number"),
        ({"kmeter.io/sidecar-port": "15081"}, "must differ"),
        ({"kmeter.io/native-sidecar": "yes"}, 'kmeter.io/native-sidecar: expected "true"'),
        ({"kmeter.io/sidecar-cpu-request": "lots"}, "is not a Kubernetes quantity"),
        ({"kmeter.io/sidecar-memory-request": "300Mi"}, "more than the memory limit 256Mi"),
        ({"kmeter.io/jwt-secret": "Not_A_Name"}, "kmeter.io/jwt-secret: 'Not_A_Name' is not"),
        ({"kmeter.io/jwt-secret": "s/k", "kmeter.io/jwt-public-key": "c"}, "not both"),
    ],
)
def test_a_bad_annotation_is_refused_with_a_reason_that_names_it(
    annotations: dict[str, str], message: str
) -> None:
    refusal = read_annotations(annotations, DEFAULTS)
    assert isinstance(refusal, Refusal)
    assert message in refusal.reason


def test_annotations_become_the_sidecars_variables() -> None:
    request = read_annotations(
        {
            "kmeter.io/event-type": "llm.completion",
            "kmeter.io/drain-timeout": "10s",
            "kmeter.io/values": "usage=$.usage\nmodel=$.model",
            "kmeter.io/value.tokens": "$.usage.total_tokens",
            "kmeter.io/sidecar-memory-limit": "512Mi",
            "kmeter.io/sidecar-memory-request": "300Mi",
        },
        DEFAULTS,
    )
    assert isinstance(request, SidecarRequest)
    assert request.env == {
        "KMETER_EVENT_TYPE": "llm.completion",
        "KMETER_DRAIN_TIMEOUT": "10s",
        "KMETER_VALUES": "usage=$.usage\nmodel=$.model\ntokens=$.usage.total_tokens",
        "KMETER_SPOOL_MAX_BYTES": "512Mi",
    }
    assert request.resources == {
        "requests": {"cpu": "50m", "memory": "300Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert request.warnings == ()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Decimal("0.1")),
        ("1", Decimal(1)),
        ("1.5", Decimal("1.5")),
        ("64Mi", Decimal(64 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("500M", Decimal(500 * 10**6)),
        ("2k", Decimal(2000)),
        ("1e3", Decimal(1000)),
        ("5E-1", Decimal("0.5")),
        (".5", Decimal("0.5")),
    ],
)
def test_quantities_are_read_as_kubernetes_reads_them(text: str, value: Decimal) -> None:
    assert quantity_value(text) == value
