"""AdmissionReviews in, AdmissionReviews out: every pod is allowed, bad ones with a warning."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kmeter.injector.review import MAX_WARNING, admit, workload_of
from kmeter.injector.settings import InjectorSettings, SidecarDefaults

SETTINGS = InjectorSettings(sidecar=SidecarDefaults(kafka_bootstrap="kafka:9092"))


def review(pod: dict[str, Any], **request: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "team-a",
            "object": pod,
            **request,
        },
    }


def pod(annotations: dict[str, str], owner: bool = True) -> dict[str, Any]:
    metadata: dict[str, Any] = {"generateName": "api-7d9f-", "annotations": annotations}
    if owner:
        metadata["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f", "uid": "u-1",
             "controller": True}
        ]  # fmt: skip
    return {
        "metadata": metadata,
        "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 80}]}]},
    }


def test_an_annotated_pod_is_answered_with_the_json_patch_and_its_uid() -> None:
    answer = admit(review(pod({"kmeter.io/inject": "true"})), SETTINGS)
    assert answer.outcome == "injected"
    response = answer.response["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    operations = json.loads(base64.b64decode(response["patch"]))
    assert {"op": "replace", "path": "/spec/containers/0/ports/0/name", "value": "app-http"} in (
        operations
    )
    assert answer.response["apiVersion"] == "admission.k8s.io/v1"


def test_a_bad_annotation_is_allowed_unchanged_with_a_warning_and_names_the_workload() -> None:
    answer = admit(
        review(pod({"kmeter.io/inject": "true", "kmeter.io/subject-from": "cookie:s"})), SETTINGS
    )
    assert answer.outcome == "refused"
    response = answer.response["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    [warning] = response["warnings"]
    assert warning.startswith("kmeter: sidecar not injected: kmeter.io/subject-from: expected")
    assert answer.workload is not None
    assert answer.workload.involved_object == {
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f", "uid": "u-1",
        "namespace": "team-a",
    }  # fmt: skip
    assert answer.workload.pod == "api-7d9f-<generated>"


def test_a_bare_pods_event_goes_on_its_namespace() -> None:
    workload = workload_of(pod({}, owner=False), "team-a")
    assert workload.involved_object["kind"] == "Namespace"
    assert workload.involved_object["name"] == "team-a"


def test_unknown_annotations_are_warned_about_but_the_pod_is_injected() -> None:
    answer = admit(
        review(pod({"kmeter.io/inject": "true", "kmeter.io/subject_from": "header:X"})), SETTINGS
    )
    assert answer.outcome == "injected"
    [warning] = answer.response["response"]["warnings"]
    assert "kmeter.io/subject_from: not a kmeter annotation" in warning
    assert "did you mean kmeter.io/subject-from?" in warning
    # and the server posts it as an Event on the workload (the warning reaches a controller)
    [noted] = answer.warnings
    assert noted in warning
    assert answer.workload is not None
    assert answer.workload.involved_object["kind"] == "ReplicaSet"


def test_dry_runs_are_marked_so_no_event_is_posted() -> None:
    answer = admit(review(pod({"kmeter.io/inject": "yes"}), dryRun=True), SETTINGS)
    assert (answer.outcome, answer.dry_run) == ("refused", True)


def test_anything_but_a_pod_create_is_allowed_untouched() -> None:
    for request in ({"operation": "UPDATE"}, {"kind": {"group": "apps", "kind": "Deployment"}}):
        answer = admit(review(pod({"kmeter.io/inject": "true"}), **request), SETTINGS)
        assert answer.outcome == "ignored"
        assert answer.response["response"] == {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "allowed": True,
        }


def test_warnings_are_short_printable_ascii() -> None:
    answer = admit(
        review(pod({"kmeter.io/inject": "true", "kmeter.io/event-type": "é\x00" * 400})), SETTINGS
    )
    for warning in answer.response["response"].get("warnings", []):
        assert len(warning) <= MAX_WARNING
        assert warning.isascii()
        assert warning.isprintable()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300)
@given(
    metadata=st.one_of(json_values, st.fixed_dictionaries({"annotations": json_values})),
    spec=json_values,
)
def test_any_pod_however_malformed_is_allowed(metadata: Any, spec: Any) -> None:
    answer = admit(review({"metadata": metadata, "spec": spec}), SETTINGS)
    response = answer.response["response"]
    assert response["allowed"] is True
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    if answer.outcome == "error":
        assert "patch" not in response
        assert answer.error
