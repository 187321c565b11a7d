"""Reading manifest files as the API server reads them (``kmeter dev``, ``kmeter api --manifests``).

PyYAML follows YAML 1.1, where a float with an exponent needs a dot and a signed exponent:
``limit: 1e6`` or ``1.5e3`` would be the *string* ``"1e6"`` and refused as "not a number",
although ``kubectl apply`` sends them as the numbers they look like (as JSON and YAML 1.2 read
them). This loader adds those forms — a number with an exponent — to PyYAML's safe loader;
everything else reads as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

__all__ = ["load_all"]


class _ManifestLoader(yaml.SafeLoader):
    """The safe loader, plus every number written with an exponent."""


_ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load_all(text: str) -> Iterator[Any]:
    """The documents of ``text``, as :func:`yaml.safe_load_all` gives them but for ``1e6``
    and ``1.5e3``."""
    return yaml.load_all(text, Loader=_ManifestLoader)
