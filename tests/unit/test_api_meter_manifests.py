"""Meters read from a folder of manifests (``kmeter api --manifests``), re-read every refresh."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kmeter.api.meters import ManifestMeters

VALID = """apiVersion: kmeter.io/v1alpha1
kind: Meter
metadata: {name: tokens, namespace: team-a}
spec: {eventType: llm.completion, aggregation: SUM, valueProperty: $.tokens}
"""
INVALID = VALID.replace("name: tokens", "name: Bad_Name").replace("SUM", "SUMMED")


def skipped(caplog: pytest.LogCaptureFixture) -> int:
    return sum("skipping an invalid Meter" in record.getMessage() for record in caplog.records)


async def test_an_invalid_manifest_is_skipped_and_said_once_not_at_every_refresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kmeter.api")
    (tmp_path / "good.yaml").write_text(VALID)
    (tmp_path / "bad.yaml").write_text(INVALID)
    meters = ManifestMeters(tmp_path)
    for _ in range(3):
        assert [meter.name for meter in await meters.load()] == ["tokens"]
    assert skipped(caplog) == 1
    # fixed, then broken again: said again
    (tmp_path / "bad.yaml").unlink()
    await meters.load()
    (tmp_path / "bad.yaml").write_text(INVALID)
    await meters.load()
    assert skipped(caplog) == 2
