"""The OpenAPI document kept in the repository is the one the API serves."""

from __future__ import annotations

import json
from pathlib import Path

from kmeter.api import openapi

REPO = Path(__file__).resolve().parents[2]


def test_docs_openapi_json_is_up_to_date() -> None:
    kept = (REPO / "docs" / "openapi.json").read_text()
    assert kept == openapi.text(), (
        "docs/openapi.json is out of date: python -m kmeter.api.openapi > docs/openapi.json"
    )


def test_every_reference_resolves_and_every_api_operation_has_problems() -> None:
    document = openapi.document()
    schemas = document["components"]["schemas"]
    text = json.dumps(document)
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in schemas
    for path, methods in document["paths"].items():
        for operation in methods.values():
            if path.startswith("/api/"):
                assert "401" in operation["responses"]
                assert operation["security"] == [{"bearerAuth": []}]
