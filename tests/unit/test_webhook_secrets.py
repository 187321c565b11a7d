"""A Quota webhook's Secrets: the signing key and, for a URL with a credential, the URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kmeter.notifications.webhook import SecretFiles, SecretMissing
from kmeter.operator.meter_worker import webhook_secrets


def test_the_url_a_secret_key_holds_is_read_without_its_line_end(tmp_path: Path) -> None:
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "url").write_text("https://billing.example.com/h?token=abc\n")
    assert SecretFiles(tmp_path).url("hook", "url") == "https://billing.example.com/h?token=abc"


@pytest.mark.parametrize("content", ["", "ftp://files.example.com/x", "not a url", "https://"])
def test_a_secret_that_does_not_hold_an_http_url_is_refused_without_showing_it(
    tmp_path: Path, content: str
) -> None:
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "url").write_text(content)
    with pytest.raises(SecretMissing, match="hook/url does not hold an http") as refused:
        SecretFiles(tmp_path).url("hook", "url")
    assert not content or content not in str(refused.value)


def test_an_unmounted_secret_is_reported_with_its_path(tmp_path: Path) -> None:
    with pytest.raises(SecretMissing, match="hook/url is not readable"):
        SecretFiles(tmp_path).url("hook", "url")


def test_the_worker_mounts_the_secrets_of_signing_keys_and_urls_once_each() -> None:
    quotas: list[dict[str, Any]] = [
        {"spec": {"webhook": {"url": "https://a.example.com", "secretRef": {"name": "sign"}}}},
        {"spec": {"webhook": {"urlSecretRef": {"name": "urls"}, "secretRef": {"name": "sign"}}}},
        {"spec": {"webhook": {"urlSecretRef": {"name": "urls", "key": "other"}}}},
        {"spec": {}},
    ]
    assert webhook_secrets(quotas) == ["sign", "urls"]
