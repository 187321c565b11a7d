"""Tokens, namespaces and isolation of a real ``kmeter api``: no namespace sees another's usage.

The second test runs the API the cluster way: Meters listed through the real API server and
tokens from Secrets labelled ``kmeter.io/api-token``.
"""

from __future__ import annotations

import base64
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client
from tests.support.api import (
    ApiProcess,
    check_documented,
    create_meter_topics,
    meter_manifest,
    produce_totals,
    spec_of,
    write_manifests,
    write_tokens,
)
from tests.support.kube import Environment
from tests.support.operator import eventually, free_port

from kmeter.api import openapi
from kmeter.core.events import UsageEvent

DOCUMENT = openapi.document()
AT = datetime(2024, 5, 1, 12, tzinfo=UTC)


def usage(subject: str, tokens: int) -> list[UsageEvent]:
    return [UsageEvent(f"{subject}-1", "t", "llm.completion", subject, AT, {"tokens": tokens})]


@pytest.fixture(scope="module")
def two_tenants(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ApiProcess, str, str]]:
    folder = tmp_path_factory.mktemp("api")
    run = uuid.uuid4().hex[:6]
    first, second = f"ten-a-{run}", f"ten-b-{run}"
    manifests = []
    for namespace, tokens in ((first, 10), (second, 99)):
        manifest = meter_manifest(namespace, "tokens")
        manifests.append(manifest)
        create_meter_topics(kafka_bootstrap, namespace, "tokens")
        produce_totals(
            kafka_bootstrap, namespace, "tokens", spec_of(manifest), usage(f"{namespace}-c", tokens)
        )
    process = ApiProcess(
        kafka_bootstrap,
        folder,
        manifests=write_manifests(folder / "meters", manifests),
        tokens=write_tokens(
            folder / "tokens.yaml", {first: ["token-a", "both"], second: ["token-b", "both"]}
        ),
    )
    process.start()
    yield process, first, second
    process.stop()


def test_each_token_sees_only_its_namespace(two_tenants: tuple[ApiProcess, str, str]) -> None:
    api, first, second = two_tenants
    for token, mine, value in (("token-a", first, 10), ("token-b", second, 99)):
        meters = api.call("GET", "/api/v1/meters", token=token).json()
        assert [(m["namespace"], m["slug"]) for m in meters] == [(mine, "tokens")]
        query = api.call("GET", "/api/v1/meters/tokens/query?groupBy=subject", token=token)
        assert [(row["subject"], row["value"]) for row in query.json()["data"]] == [
            (f"{mine}-c", value)
        ]
        subjects = api.call("GET", "/api/v1/meters/tokens/subjects", token=token).json()
        assert subjects == [f"{mine}-c"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/{other}/meters",
        "/api/v1/namespaces/{other}/meters/tokens",
        "/api/v1/namespaces/{other}/meters/tokens/query",
        "/api/v1/namespaces/{other}/meters/tokens/subjects",
    ],
)
def test_another_namespace_is_forbidden(
    two_tenants: tuple[ApiProcess, str, str], path: str
) -> None:
    api, first, second = two_tenants
    answer = api.call("GET", path.format(other=second), token="token-a")
    documented = path.replace("{other}", "{namespace}").replace("tokens", "{meterIdOrSlug}")
    check_documented(DOCUMENT, documented, "GET", answer)
    assert answer.status == 403
    assert second not in answer.body.decode().replace(f"namespace {second!r}", "")
    own = api.call("GET", path.format(other=first), token="token-a")
    assert own.status == 200


def test_missing_or_wrong_tokens_are_401(two_tenants: tuple[ApiProcess, str, str]) -> None:
    api, _, _ = two_tenants
    for path in ("/api/v1/meters", "/api/v1/meters/tokens/query"):
        for token in (None, "nope", ""):
            answer = api.call("GET", path, token=token)
            check_documented(DOCUMENT, path.replace("tokens", "{meterIdOrSlug}"), "GET", answer)
            assert answer.status == 401
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert api.call("GET", path).status == 200


def test_with_a_metrics_port_every_tenants_labels_are_served_there_only(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    namespace = f"ten-m-{uuid.uuid4().hex[:6]}"
    manifest = meter_manifest(namespace, "tokens")
    create_meter_topics(kafka_bootstrap, namespace, "tokens")
    metrics_port = free_port()
    api = ApiProcess(
        kafka_bootstrap,
        tmp_path,
        manifests=write_manifests(tmp_path / "meters", [manifest]),
        tokens=write_tokens(tmp_path / "tokens.yaml", {namespace: ["token-m"]}),
        env={"KMETER_METRICS_PORT": str(metrics_port)},
    )
    api.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as scraped:
            assert f'namespace="{namespace}"' in scraped.read().decode()
        for token in (None, "token-m"):
            answer = api.call("GET", "/metrics", token=token)
            assert answer.status == 404  # a public path, so no 401: just not served here
            assert namespace not in answer.body.decode()
    finally:
        api.stop()


def test_a_token_of_two_namespaces_must_name_one(two_tenants: tuple[ApiProcess, str, str]) -> None:
    api, first, second = two_tenants
    assert api.call("GET", "/api/v1/meters", token="both").status == 400
    for namespace in (first, second):
        answer = api.call("GET", f"/api/v1/namespaces/{namespace}/meters", token="both")
        assert [m["namespace"] for m in answer.json()] == [namespace]


def test_meters_and_tokens_from_the_cluster(
    testenv: Environment,
    kmeter_crds: None,
    namespace: str,
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    api_client = testenv.api_client()
    objects = client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    manifest = meter_manifest(namespace, "tokens")
    objects.create_namespaced_custom_object("kmeter.io", "v1alpha1", namespace, "meters", manifest)
    create_meter_topics(kafka_bootstrap, namespace, "tokens")
    produce_totals(kafka_bootstrap, namespace, "tokens", spec_of(manifest), usage("kube-c", 7))
    token = uuid.uuid4().hex
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "api-token", "labels": {"kmeter.io/api-token": "true"}},
            "data": {"token": base64.b64encode(token.encode()).decode()},
        },
    )
    api = ApiProcess(kafka_bootstrap, tmp_path, kubeconfig=testenv.kubeconfig)
    api.start()
    try:
        meters = eventually(
            lambda: api.call("GET", "/api/v1/meters", token=token).json() or None,
            timeout=15,
            what="the Meter is served",
        )
        assert meters[0]["namespace"] == namespace
        assert meters[0]["id"]  # the Meter's uid
        rows = api.call("GET", "/api/v1/meters/tokens/query?groupBy=subject", token=token)
        assert [(r["subject"], r["value"]) for r in rows.json()["data"]] == [("kube-c", 7)]
        core.delete_namespaced_secret("api-token", namespace)
        eventually(
            lambda: api.call("GET", "/api/v1/meters", token=token).status == 401,
            timeout=15,
            what="a deleted token Secret revokes access",
        )
    finally:
        api.stop()
