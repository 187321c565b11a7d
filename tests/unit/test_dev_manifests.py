"""``kmeter dev`` reads Meters and Quotas from manifest files and refuses bad ones with the API
server's words — the refusal table the API server itself is tested with — plus the file and the
document; and it makes the operator's checks of a Quota against its Meter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.support.resource_cases import (
    METER,
    METER_REFUSALS,
    QUOTA,
    QUOTA_REFUSALS,
    Refusal,
    merged,
)

from kmeter.dev.manifests import ManifestError, load_manifests
from kmeter.resources import InvalidResource, parse_resource

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dev"


def write(folder: Path, name: str, *documents: Any) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return path


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(ManifestError) as refused:
        load_manifests(folder)
    return refused.value.problems


def test_the_example_declares_two_meters_and_a_quota_on_the_token_meter() -> None:
    found = load_manifests(EXAMPLE)
    assert sorted(meter.key for meter in found.meters) == [
        ("default", "llm-requests"),
        ("default", "llm-tokens"),
    ]
    assert [(q.key, q.resource.spec.meter_ref.name) for q in found.quotas] == [
        (("default", "free-tier"), "llm-tokens")
    ]


def test_documents_of_other_kinds_and_empty_documents_are_skipped(tmp_path: Path) -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"}}
    write(tmp_path, "all.yaml", deployment, None, METER, QUOTA)
    found = load_manifests(tmp_path, "team-a")
    assert [meter.key for meter in found.meters] == [("team-a", "llm-tokens")]
    assert [quota.key for quota in found.quotas] == [("team-a", "free-tier")]


@pytest.mark.parametrize(("written", "limit"), [("1e6", 1_000_000), ("1.5e3", 1500), ("250", 250)])
def test_a_limit_written_with_an_exponent_is_the_number_kubectl_would_send(
    tmp_path: Path, written: str, limit: int
) -> None:
    # PyYAML alone reads 1e6 as the string "1e6" (YAML 1.1); the API server gets a number
    text = yaml.safe_dump_all([METER], sort_keys=False) + "---\n"
    text += yaml.safe_dump(QUOTA, sort_keys=False).replace("limit: 100000", f"limit: {written}")
    (tmp_path / "all.yaml").write_text(text)
    [quota] = load_manifests(tmp_path, "team-a").quotas
    assert quota.resource.spec.limit == limit


@pytest.mark.parametrize("case", [*METER_REFUSALS, *QUOTA_REFUSALS], ids=str)
def test_a_bad_manifest_is_refused_with_the_models_words_naming_file_and_document(
    tmp_path: Path, case: Refusal
) -> None:
    path = write(tmp_path, "resources.yaml", METER, case.manifest)
    with pytest.raises(InvalidResource) as model:
        parse_resource(case.manifest)
    kind, name = model.value.kind, model.value.name
    assert problems_of(tmp_path) == [
        f'{path}, document 2: {kind} "{name}": {cause}' for cause in model.value.causes
    ]
    field = case.python_field or case.field
    assert any(f"{field}: " in line and case.says in line for line in problems_of(tmp_path))


def test_every_problem_of_every_file_is_reported_at_once(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", merged(METER, {"spec": {"valueProperty": None}}))
    second = write(tmp_path, "b.yml", {**QUOTA, "spec": {**QUOTA["spec"], "limit": -1}})
    problems = problems_of(tmp_path)
    assert len(problems) == 2
    assert problems[0].startswith(f'{first}, document 1: Meter "llm-tokens": spec.valueProperty')
    assert problems[1].startswith(f'{second}, document 1: Quota "free-tier": spec.limit')


def test_a_quota_of_a_missing_meter_is_refused_as_the_operator_reports_it(tmp_path: Path) -> None:
    path = write(tmp_path, "quota.yaml", QUOTA)
    assert problems_of(tmp_path) == [
        f'{path}, document 1: Quota "free-tier": Meter default/llm-tokens does not exist (a '
        "Quota refers to a Meter of its own namespace); the Quota takes effect when it is created."
    ]


def test_a_quota_on_an_average_is_refused_as_not_limitable(tmp_path: Path) -> None:
    write(tmp_path, "m.yaml", merged(METER, {"spec": {"aggregation": "AVG"}}), QUOTA)
    (problem,) = problems_of(tmp_path)
    assert "document 2" in problem
    assert "aggregates with AVG; a limit needs a total or a level" in problem


def test_a_quota_filtering_on_a_group_the_meter_lacks_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "m.yaml", METER, merged(QUOTA, {"spec": {"filterGroupBy": {"region": "eu"}}}))
    (problem,) = problems_of(tmp_path)
    assert "spec.filterGroupBy: Meter default/llm-tokens does not group by region" in problem


def test_a_quota_meets_only_the_meters_of_its_own_namespace(tmp_path: Path) -> None:
    other = merged(METER, {"metadata": {"namespace": "team-b"}})
    write(tmp_path, "m.yaml", other, QUOTA)
    (problem,) = problems_of(tmp_path)
    assert "Meter default/llm-tokens does not exist" in problem


def test_the_same_resource_declared_twice_is_refused(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", METER)
    second = write(tmp_path, "b.yaml", METER)
    assert problems_of(tmp_path) == [
        f'{second}, document 1: Meter "llm-tokens" in namespace default is already declared '
        f"in {first}, document 1"
    ]


def test_a_file_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: Meter\n  spec: [unclosed\n")
    (problem,) = problems_of(tmp_path)
    assert problem.startswith(f"{path}: is not valid YAML: ")


def test_a_document_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert problems_of(tmp_path) == [
        f"{path}, document 1: expected a Kubernetes object (a mapping), got ['a', 'b']"
    ]


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nowhere") == [
        f"{tmp_path / 'nowhere'}: not a folder (give the folder holding the manifests)"
    ]
