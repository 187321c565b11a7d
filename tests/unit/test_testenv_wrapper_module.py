"""The Kubernetes wrapper module that scripts/testenv generates from upstream's go.mod."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testenv"

UPSTREAM = """module k8s.io/kubernetes

go 1.25.0

require (
\tgithub.com/spf13/cobra v1.10.0
\tk8s.io/api v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def load_script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("testenv_script", str(SCRIPT))
    spec = importlib.util.spec_from_loader("testenv_script", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def test_every_staging_module_is_replaced_by_its_published_v0_minor_version() -> None:
    gomod = load_script().k8s_wrapper_gomod("v1.35.4", UPSTREAM)
    assert "require k8s.io/kubernetes v1.35.4" in gomod
    assert "\tk8s.io/api => k8s.io/api v0.35.4\n" in gomod
    assert "\tk8s.io/client-go => k8s.io/client-go v0.35.4\n" in gomod
    assert "cobra" not in gomod
    assert "go 1.25.0" in gomod
