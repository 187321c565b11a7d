"""Running ``kmeter injector`` as a real HTTPS process, with a test CA, for the API server to call.

:func:`make_certificates` writes a throwaway CA and a serving certificate for 127.0.0.1 (the
API server verifies it against the webhook's ``caBundle``). :class:`InjectorProcess` runs the
injector as a subprocess on a loopback port, the way ``ManagedProcess`` runs the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests.support.operator import eventually, free_port
from tests.support.processes import ManagedProcess


@dataclass(frozen=True)
class Certificates:
    """PEM files of a test CA and a serving certificate (SAN 127.0.0.1 and localhost)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificates(folder: Path, common_name: str = "kmeter-injector") -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("kmeter test CA"))
        .issuer_name(_name("kmeter test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    certificates = Certificates(folder / "ca.crt", folder / "tls.crt", folder / "tls.key")
    certificates.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certificates.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certificates.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificates


class InjectorProcess(ManagedProcess):
    """``kmeter injector`` as a subprocess on a loopback HTTPS port, its log in a file."""

    def __init__(
        self,
        certificates: Certificates,
        log_dir: Path,
        *,
        kubeconfig: Path | None = None,
        env: dict[str, str] | None = None,
        name: str = "injector",
        check_hostname: bool = True,
    ) -> None:
        self.certificates = certificates
        self.check_hostname = check_hostname
        self.kubeconfig = kubeconfig
        self.extra_env = env or {}
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("KMETER_", "KUBECONFIG"))
        }
        env |= {
            "KMETER_KAFKA_BOOTSTRAP": "kafka.kmeter-test:9092",
            "KMETER_SIDECAR_IMAGE": "kmeter-sidecar:test",
            "KMETER_INJECTOR_HOST": "127.0.0.1",
            "KMETER_INJECTOR_PORT": str(self.port),
            "KMETER_INJECTOR_TLS_CERT_FILE": str(self.certificates.cert_file),
            "KMETER_INJECTOR_TLS_KEY_FILE": str(self.certificates.key_file),
            "KMETER_INJECTOR_SHUTDOWN_DELAY": "0",
            "KMETER_INJECTOR_EVENTS": "true" if self.kubeconfig else "false",
            **({"KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else {}),
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "kmeter"), "injector"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        eventually(self.ready, timeout=30, what="the injector's /readyz answers over HTTPS")

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the injector exited; log:\n{self.log_tail()}")
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, str]:
        """GET over HTTPS, verifying the serving certificate against the test CA."""
        context = ssl.create_default_context(cafile=str(self.certificates.ca_file))
        context.check_hostname = self.check_hostname
        with urllib.request.urlopen(self.url + path, timeout=5, context=context) as response:
            return response.status, response.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of ``/metrics`` (0 when absent)."""
        wanted = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        )
        for line in self.get("/metrics")[1].splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == wanted:
                return float(value)
        return 0.0


class ServiceFront:
    """A TCP front for several injector replicas, as a Service would be for the API server.

    The API server reaches a webhook through one URL; in a cluster, that is a Service spreading
    connections over the ready replicas. Here each new connection goes to the next replica, in
    turn, that accepts it (a killed one refuses and is skipped); bytes are copied untouched, so
    TLS runs end to end between the API server and the injector. When a replica dies, its
    connections are closed on the API server's side too, as kube-proxy's would be.
    """

    def __init__(self, backends: list[InjectorProcess]) -> None:
        self.backends = backends
        self.port = free_port()
        self._next = 0
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self._loop
        ).result(10)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.backends)):
            backend = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                upstream = await asyncio.open_connection("127.0.0.1", backend.port)
                break
            except OSError:
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        with contextlib.suppress(asyncio.CancelledError):  # stop() ends every connection
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
