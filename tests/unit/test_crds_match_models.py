"""The committed CRDs in crds/ are what the models generate, and ``kmeter crds`` keeps them so."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from kmeter.cli import app
from kmeter.resources.crd import differences, meter_crd, quota_crd, render_all

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_the_committed_crds_match_the_models() -> None:
    problems = differences(CRDS)
    assert problems == [], (
        "crds/ is out of date with operator/kmeter/resources: run `kmeter crds` and commit.\n"
        + "\n".join(problems)
    )


def test_the_yaml_files_hold_exactly_the_generated_crds() -> None:
    parsed = [yaml.safe_load(text) for text in render_all().values()]
    assert parsed == [meter_crd(), quota_crd()]


def test_kmeter_crds_writes_files_that_the_check_then_accepts(tmp_path: Path) -> None:
    runner = CliRunner()
    written = runner.invoke(app, ["crds", "--output-dir", str(tmp_path)])
    assert written.exit_code == 0, written.output
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(render_all())
    checked = runner.invoke(app, ["crds", "--output-dir", str(tmp_path), "--check"])
    assert checked.exit_code == 0, checked.output


def test_kmeter_crds_check_fails_with_a_diff_when_a_file_was_edited_by_hand(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    runner.invoke(app, ["crds", "--output-dir", str(tmp_path)])
    edited = tmp_path / "meters.kmeter.io.yaml"
    edited.write_text(edited.read_text().replace("default: 3", "default: 4"))
    before = edited.read_text()

    checked = runner.invoke(app, ["crds", "--output-dir", str(tmp_path), "--check"])

    assert checked.exit_code == 1
    assert f"{edited}: differs from the models" in checked.output
    assert "-                    default: 4" in checked.output
    assert "+                    default: 3" in checked.output
    assert "run `kmeter crds`" in checked.output
    assert edited.read_text() == before, "--check must not write"


def test_kmeter_crds_check_fails_when_a_file_is_missing(tmp_path: Path) -> None:
    checked = CliRunner().invoke(app, ["crds", "--output-dir", str(tmp_path), "--check"])
    assert checked.exit_code == 1
    assert f"{tmp_path / 'quotas.kmeter.io.yaml'}: missing" in checked.output
