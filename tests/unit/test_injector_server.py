"""The webhook's HTTPS server on loopback: reviews, bad bodies, health, metrics, and a renewed
certificate picked up without a restart."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import aiohttp
from tests.support.injector import Certificates, make_certificates
from tests.support.operator import free_port

from kmeter.injector.server import running
from kmeter.injector.settings import InjectorSettings, SidecarDefaults


def settings_for(certificates: Certificates) -> InjectorSettings:
    return InjectorSettings(
        sidecar=SidecarDefaults(kafka_bootstrap="kafka:9092"),
        host="127.0.0.1",
        port=free_port(),
        tls_cert_file=certificates.cert_file,
        tls_key_file=certificates.key_file,
        post_events=False,
    )


def client_context(certificates: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates.ca_file))


REVIEW = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "u-1",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE",
        "namespace": "team-a",
        "object": {
            "metadata": {"annotations": {"kmeter.io/inject": "true"}},
            "spec": {
                "containers": [{"name": "a", "ports": [{"name": "http", "containerPort": 80}]}]
            },
        },
    },
}


async def test_reviews_health_and_metrics_are_served_over_https(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path)
    settings = settings_for(certificates)
    base = f"https://127.0.0.1:{settings.port}"
    async with (
        running(settings) as injector,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(certificates))
        ) as session,
    ):
        async with session.post(base + "/mutate", json=REVIEW) as response:
            assert response.status == 200
            body = await response.json()
            assert body["response"]["uid"] == "u-1"
            assert body["response"]["patchType"] == "JSONPatch"
        for junk in (b"not json", b"[1, 2]", b'{"kind": "AdmissionReview"}'):
            async with session.post(base + "/mutate", data=junk) as response:
                assert response.status == 400
                assert "expected an AdmissionReview" in (await response.json())["error"]
        async with session.get(base + "/healthz") as response:
            assert response.status == 200
        async with session.get(base + "/readyz") as response:
            assert response.status == 200
        async with session.get(base + "/metrics") as response:
            text = await response.text()
            assert 'kmeter_injector_admissions_total{outcome="injected"}' in text
            assert 'kmeter_injector_admissions_total{outcome="malformed"}' in text
        injector.ready = False
        async with session.get(base + "/readyz") as response:
            assert response.status == 503


async def handshake(port: int, certificates: Certificates) -> bool:
    """Whether a TLS connection verifying against ``certificates``' CA succeeds."""
    try:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(certificates)
        )
    except ssl.SSLError:
        return False
    writer.close()
    return True


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path: Path) -> None:
    first = make_certificates(tmp_path / "first")
    settings = settings_for(first)
    async with running(settings) as injector:
        assert await handshake(settings.port, first)
        renewed = make_certificates(tmp_path / "renewed")
        # The kubelet swaps a mounted Secret's files atomically; os.replace does the same.
        for name in ("tls.crt", "tls.key"):
            os.replace(tmp_path / "renewed" / name, tmp_path / "first" / name)
        assert injector.certificate is not None
        # The watcher looks every 10 s; take its look now.
        assert injector.certificate.reload_if_changed()
        assert await handshake(settings.port, renewed)
        assert not await handshake(settings.port, first)
        assert not injector.certificate.reload_if_changed()  # nothing changed since
