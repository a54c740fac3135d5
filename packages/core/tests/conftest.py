"""Core's tests see a core-only install, even on a dev machine with backend packages installed.

nox runs them in a venv holding only quantfx-core; this keeps a developer's
editable backend installs (quantfx-backend-*) from leaking into plugin tests.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import quantfx.plugins


_HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _core_only_plugins(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest applies a conftest outside its rootdir to every test: when core's tests run in one
    # session with a backend's (whose pyproject then is the rootdir), leave the backend's tests alone
    if _HERE not in Path(request.node.path).resolve().parents:
        return
    real_entry_points = importlib.metadata.entry_points

    def entry_points(**params):
        eps = real_entry_points(**params)
        if params.get("group") != "quantfx.backends":
            return eps
        # the real backend packages (module quantfx_<name>); tests' own fake dists stay visible
        keep = [ep for ep in eps if not ep.value.startswith("quantfx_")]
        return importlib.metadata.EntryPoints(keep)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(quantfx.plugins, "_plugin_manager", None)
