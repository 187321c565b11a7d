"""The test environment as the tests see it, and identities bound to chosen RBAC roles.

Later tests run kmeter's operator under the chart's ClusterRole, not as admin, to prove the
role is enough. :class:`KubeUsers` gives each such identity a ServiceAccount of its own, binds
it to the role, and writes a kubeconfig holding a token from the TokenRequest API — the same
kind of credential the operator gets in a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kubernetes import client, config
from kubernetes.client.exceptions import NotFoundException

IDENTITY_NAMESPACE = "kmeter-test-identities"


@dataclass(frozen=True)
class Environment:
    """Where the real parts listen."""

    kafka_bootstrap: str
    kubeconfig: Path
    path: str

    def api_client(self) -> client.ApiClient:
        """A Kubernetes API client with admin rights."""
        return config.new_client_from_config(config_file=str(self.kubeconfig))


@dataclass
class KubeUsers:
    """Creates kubeconfigs for ServiceAccounts bound to a given Role or ClusterRole."""

    testenv: Environment
    _bindings: list[tuple[str, str | None, str]] = field(default_factory=list)
    _folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="kmeter-users-")))

    def kubeconfig_for(
        self,
        role_kind: Literal["Role", "ClusterRole"],
        role_name: str,
        namespace: str | None = None,
    ) -> Path:
        """A kubeconfig for a fresh identity bound to ``role_kind/role_name``.

        A ClusterRole is bound cluster-wide unless ``namespace`` is given (then with a
        RoleBinding in that namespace); a Role is always bound in its ``namespace``.
        """
        if role_kind == "Role" and namespace is None:
            raise ValueError("a Role is namespaced: give the namespace it lives in")
        api = self.testenv.api_client()
        core = client.CoreV1Api(api)
        rbac = client.RbacAuthorizationV1Api(api)
        self._ensure_namespace(core)
        name = f"user-{role_name.replace(':', '-')[:40]}-{uuid.uuid4().hex[:6]}"
        core.create_namespaced_service_account(IDENTITY_NAMESPACE, {"metadata": {"name": name}})
        binding = {
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": role_kind,
                "name": role_name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": IDENTITY_NAMESPACE}],
        }
        if namespace is None:
            rbac.create_cluster_role_binding(binding)
        else:
            rbac.create_namespaced_role_binding(namespace, binding)
        self._bindings.append((name, namespace, role_kind))
        token = core.create_namespaced_service_account_token(
            name, IDENTITY_NAMESPACE, {"spec": {"expirationSeconds": 3600 * 6}}
        ).status.token
        return self._write_kubeconfig(name, token)

    def delete_all(self) -> None:
        """Remove every identity and binding created, so tests leave the cluster clean."""
        api = self.testenv.api_client()
        rbac = client.RbacAuthorizationV1Api(api)
        for name, namespace, _ in self._bindings:
            # Gone already is fine: a test may have deleted the namespace it bound a Role in.
            with contextlib.suppress(NotFoundException):
                if namespace is None:
                    rbac.delete_cluster_role_binding(name)
                else:
                    rbac.delete_namespaced_role_binding(name, namespace)
            with contextlib.suppress(NotFoundException):
                client.CoreV1Api(api).delete_namespaced_service_account(name, IDENTITY_NAMESPACE)
        self._bindings.clear()

    def _ensure_namespace(self, core: client.CoreV1Api) -> None:
        existing = {ns.metadata.name for ns in core.list_namespace().items}
        if IDENTITY_NAMESPACE not in existing:
            core.create_namespace({"metadata": {"name": IDENTITY_NAMESPACE}})

    def _write_kubeconfig(self, name: str, token: str) -> Path:
        admin = json.loads(self.testenv.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        path = self._folder / f"{name}.kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [cluster],
                    "users": [{"name": name, "user": {"token": token}}],
                    "contexts": [
                        {"name": name, "context": {"cluster": cluster["name"], "user": name}}
                    ],
                    "current-context": name,
                }
            )
        )
        return path
