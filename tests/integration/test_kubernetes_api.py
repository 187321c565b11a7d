"""The test control plane behaves like a real cluster where kmeter depends on it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from tests.support.kube import Environment, KubeUsers

T = TypeVar("T")

GROUP = "testenv.kmeter.io"
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            },
                            "status": {
                                "type": "object",
                                "properties": {"phase": {"type": "string"}},
                            },
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


def eventually(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "") -> T:
    """Poll ``probe`` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result is not None:
            return result
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


@pytest.fixture(scope="module")
def api(testenv: Environment) -> client.ApiClient:
    return testenv.api_client()


@pytest.fixture(scope="module")
def widget_crd(api: client.ApiClient) -> Iterator[None]:
    """The Widget CRD, for this module's tests; deleted (and waited for) afterwards."""
    extensions = client.ApiextensionsV1Api(api)
    extensions.create_custom_resource_definition(WIDGET_CRD)

    def established() -> bool | None:
        crd = extensions.read_custom_resource_definition(f"widgets.{GROUP}")
        conditions = crd.status.conditions or []
        return (
            True
            if any(c.type == "Established" and c.status == "True" for c in conditions)
            else None
        )

    eventually(established, what="the CRD is Established")
    yield
    extensions.delete_custom_resource_definition(f"widgets.{GROUP}")

    def deleted() -> bool | None:
        try:
            extensions.read_custom_resource_definition(f"widgets.{GROUP}")
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return None

    eventually(deleted, what="the CRD is gone")


@pytest.mark.usefixtures("widget_crd")
def test_a_custom_resource_is_created_read_status_patched_and_deleted(
    api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    body = widget("w1", size=3)
    created = eventually(
        lambda: _create_when_served(objects, namespace, body), what="the Widget is accepted"
    )
    assert created["metadata"]["generation"] == 1

    read = objects.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")
    assert read["spec"] == {"size": 3}

    objects.patch_namespaced_custom_object_status(
        GROUP, "v1", namespace, "widgets", "w1", {"status": {"phase": "Ready"}}
    )
    read = objects.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")
    assert read["status"] == {"phase": "Ready"}
    assert read["metadata"]["generation"] == 1, "a status patch must not bump the generation"

    objects.delete_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")
    with pytest.raises(ApiException) as gone:
        objects.get_namespaced_custom_object(GROUP, "v1", namespace, "widgets", "w1")
    assert gone.value.status == 404


@pytest.mark.usefixtures("widget_crd")
def test_the_api_server_refuses_a_custom_resource_that_breaks_its_schema(
    api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(api)
    body = widget("bad", size=0)
    with pytest.raises(ApiException) as refused:
        objects.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", body)
    assert refused.value.status == 422
    assert "spec.size" in refused.value.body


def _create_when_served(
    objects: client.CustomObjectsApi, namespace: str, body: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        created: dict[str, Any] = objects.create_namespaced_custom_object(
            GROUP, "v1", namespace, "widgets", body
        )
    except ApiException as error:
        if error.status == 404:  # the new CRD's endpoint is not served yet
            return None
        raise
    return created


def test_the_controller_manager_turns_a_deployment_into_a_replicaset_and_a_pod(
    api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    labels = {"app.kubernetes.io/name": "echo"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "echo"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "echo", "image": "nginx:1.27"}]},
                },
            },
        },
    )

    replica_sets = eventually(
        lambda: apps.list_namespaced_replica_set(namespace).items or None,
        what="a ReplicaSet for the Deployment",
    )
    assert [rs.metadata.owner_references[0].name for rs in replica_sets] == ["echo"]

    pods = eventually(
        lambda: core.list_namespaced_pod(namespace).items or None,
        what="a Pod for the ReplicaSet",
    )
    assert len(pods) == 1
    assert pods[0].metadata.owner_references[0].name == replica_sets[0].metadata.name
    # No scheduler or kubelet runs here: the Pod exists, and stays Pending.
    assert pods[0].status.phase == "Pending"


def test_an_identity_bound_to_a_role_can_do_what_the_role_allows_and_nothing_more(
    api: client.ApiClient, namespace: str, kube_users: KubeUsers, testenv: Environment
) -> None:
    client.RbacAuthorizationV1Api(api).create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    client.CoreV1Api(api).create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"k": "v"}}
    )
    kubeconfig = kube_users.kubeconfig_for("Role", "configmap-reader", namespace=namespace)
    user = client.CoreV1Api(Environment(testenv.kafka_bootstrap, kubeconfig, "").api_client())

    assert user.read_namespaced_config_map("settings", namespace).data == {"k": "v"}
    with pytest.raises(ApiException) as forbidden:
        user.create_namespaced_config_map(namespace, {"metadata": {"name": "mine"}})
    assert forbidden.value.status == 403
    with pytest.raises(ApiException) as elsewhere:
        user.list_namespaced_config_map("default")
    assert elsewhere.value.status == 403
