"""The operator's view of pods that asked for the sidecar: which escaped, counted once each."""

from __future__ import annotations

from typing import Any

from kmeter.operator.pod_injection import ESCAPED, EscapedPods, escaped


def pod(uid: str, annotations: dict[str, str], sidecar: bool = False) -> dict[str, Any]:
    init = [{"name": "kmeter-sidecar", "restartPolicy": "Always"}] if sidecar else []
    return {
        "metadata": {"uid": uid, "namespace": "team-z", "annotations": annotations},
        "spec": {"initContainers": init, "containers": [{"name": "app"}]},
    }


INJECTED = {"kmeter.io/inject": "true", "kmeter.io/status": "injected"}


def gauge() -> float:
    return float(ESCAPED.labels("team-z")._value.get())


def test_only_pods_that_asked_and_lack_the_sidecar_container_escaped() -> None:
    assert escaped(pod("a", INJECTED, sidecar=True)) is None
    assert escaped(pod("b", {})) is None
    assert escaped(pod("c", {"kmeter.io/inject": "false"})) is None
    no_sidecar = escaped(pod("d", {"kmeter.io/inject": "true"}))
    assert no_sidecar is not None
    assert "has no kmeter-sidecar container" in no_sidecar
    status_only = escaped(pod("e", INJECTED))
    assert status_only is not None
    assert "has no kmeter-sidecar container" in status_only
    # a copy of an injected pod without the status annotation still has (and runs) its sidecar;
    # the injector leaves it alone too
    assert escaped(pod("f", {"kmeter.io/inject": "true"}, sidecar=True)) is None


def test_each_escaped_pod_is_reported_once_and_counted_while_it_exists() -> None:
    pods = EscapedPods()
    start = gauge()
    bad = pod("u1", {"kmeter.io/inject": "true"})
    assert pods.observe(None, bad) is not None  # the initial listing
    assert pods.observe("MODIFIED", bad) is None  # seen before: no second Event
    assert pods.observe("ADDED", pod("u2", {"kmeter.io/inject": "true"})) is not None
    assert pods.observe("ADDED", pod("u3", INJECTED, sidecar=True)) is None
    assert gauge() == start + 2
    assert pods.observe("DELETED", bad) is None
    assert gauge() == start + 1
    assert pods.observe("DELETED", pod("u3", INJECTED, sidecar=True)) is None
    assert gauge() == start + 1
