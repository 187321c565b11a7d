"""Events about refused pods: one per workload and reason, coalesced, and a re-login on 401."""

from __future__ import annotations

from typing import Any

from kmeter.injector import metrics
from kmeter.injector.events import WARNED, EventPoster, event_name
from kmeter.injector.review import Workload
from kmeter.kube.client import KubeApiError, KubeClient

WORKLOAD = Workload(
    namespace="team-a",
    pod="api-7d9f-<generated>",
    involved_object={
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f", "uid": "u-1",
        "namespace": "team-a",
    },
)  # fmt: skip


class Recorder:
    """Stands in for the API client: records what would be applied, or refuses with 401."""

    def __init__(self, refuse: bool = False) -> None:
        self.applied: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse
        self.closed = False

    async def apply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.refuse:
            raise KubeApiError(401, "Unauthorized", "token expired")
        self.applied.append((path, body))
        return body

    async def close(self) -> None:
        self.closed = True


def poster(kube: Recorder, **kwargs: Any) -> EventPoster:
    return EventPoster(kube, **kwargs)  # type: ignore[arg-type]


async def test_one_event_per_workload_and_reason_counted_and_coalesced() -> None:
    kube = Recorder()
    events = poster(kube, min_interval=3600)
    for _ in range(5):
        events.post(WORKLOAD, "kmeter.io/port: no container port is named 'grpc'")
    events.post(WORKLOAD, "another reason")
    await events.drain()
    assert len(kube.applied) == 2
    path, body = kube.applied[0]
    assert path == f"/api/v1/namespaces/team-a/events/{body['metadata']['name']}"
    assert body["metadata"]["name"].startswith("api-7d9f.kmeter-")
    assert body["reason"] == "InjectionRefused"
    assert body["type"] == "Warning"
    assert body["involvedObject"]["uid"] == "u-1"
    assert body["message"].startswith("pod api-7d9f-<generated>: kmeter sidecar not injected:")
    assert body["count"] == 1
    # The next write (once the interval passed) carries the pods coalesced meanwhile.
    events.min_interval = 0
    events.post(WORKLOAD, "kmeter.io/port: no container port is named 'grpc'")
    await events.drain()
    assert kube.applied[-1][1]["count"] == 6
    assert kube.applied[-1][1]["metadata"]["name"] == body["metadata"]["name"]
    assert event_name(WORKLOAD, "a") != event_name(WORKLOAD, "b")


async def test_a_warning_about_an_injected_pod_is_an_event_of_its_own() -> None:
    kube = Recorder()
    events = poster(kube, min_interval=3600)
    events.post(WORKLOAD, "kmeter.io/subject_from: not a kmeter annotation", WARNED)
    events.post(WORKLOAD, "kmeter.io/subject_from: not a kmeter annotation")
    await events.drain()
    [(_, warned), (_, refused)] = kube.applied
    assert warned["reason"] == "InjectionWarning"
    assert warned["message"].startswith("pod api-7d9f-<generated>: kmeter sidecar injected, but:")
    assert refused["reason"] == "InjectionRefused"
    assert warned["metadata"]["name"] != refused["metadata"]["name"]


async def test_an_expired_token_logs_in_again_and_the_event_is_still_posted() -> None:
    expired, fresh = Recorder(refuse=True), Recorder()

    async def reconnect() -> KubeClient:
        return fresh  # type: ignore[return-value]

    events = poster(expired, reconnect=reconnect)
    events.post(WORKLOAD, "bad")
    await events.drain()
    assert expired.closed
    assert len(fresh.applied) == 1


async def test_a_failure_to_post_is_counted_not_raised() -> None:
    failed = metrics.EVENTS.labels("failed")
    before = failed._value.get()
    events = poster(Recorder(refuse=True))
    events.post(WORKLOAD, "bad")
    [task] = list(events._tasks)
    await events.drain()
    assert task.done()
    assert task.exception() is None
    assert failed._value.get() == before + 1
