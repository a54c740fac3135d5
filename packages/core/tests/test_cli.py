"""The ``quantfx`` command line, run as users run it (subprocess) and in process."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import quantfx.plugins
from quantfx import cli
from quantfx.reference_backend import ReferenceBackend
from quantfx.plugins import Availability, QuantfxPluginManager, hookimpl


def run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QUANTFX_PLUGINS"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "quantfx", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_backends_command_shows_reference():
    proc = run_cli("backends")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["name", "available", "distribution", "version", "details"]
    row = next(line.split() for line in lines if line.startswith("reference"))
    assert row[1] == "yes"
    assert row[2].replace("_", "-").lower() == "quantfx-core"
    assert "Plugin load errors" not in proc.stdout


def test_backends_command_reports_broken_plugin(tmp_path):
    site = tmp_path / "site"
    info = site / "qfx_cli_broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qfx-cli-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[quantfx.backends]\nbroken = qfx_cli_broken_mod\n")
    (site / "qfx_cli_broken_mod.py").write_text("raise RuntimeError('no licence server')\n")
    proc = run_cli("backends", env_extra={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    assert "Plugin load errors:" in proc.stdout
    assert (
        "Error importing plugin 'broken' (distribution qfx-cli-broken): RuntimeError: no licence server"
        in proc.stdout
    )
    reference_row = next(line.split() for line in proc.stdout.splitlines() if line.startswith("reference"))
    assert reference_row[1] == "yes"


def test_backends_json():
    proc = run_cli("backends", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)}
    assert rows["reference"]["available"] is True
    assert rows["reference"]["plugin"] == "reference"


def test_console_script_points_at_main():
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name="quantfx")
    assert ep.load() is cli.main


@pytest.fixture
def pm(monkeypatch):
    monkeypatch.delenv("QUANTFX_PLUGINS", raising=False)
    manager = QuantfxPluginManager()
    monkeypatch.setattr(quantfx.plugins, "_plugin_manager", manager)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return manager


def test_quantize_requires_explicit_calibration(pm, capsys):
    rc = cli.main(["quantize", "--model", "os:getcwd", "--example-shape", "1,3"])
    assert rc == 1
    assert "needs calibration data" in capsys.readouterr().err


def test_quantize_unknown_backend(pm, capsys):
    rc = cli.main(
        ["quantize", "--model", "os:getcwd", "--backend", "tensorrt", "--example-shape", "1,3",
         "--calibration", "random:1"]
    )
    assert rc == 1
    assert "pip install quantfx-backend-tensorrt" in capsys.readouterr().err


def test_quantize_rejects_bad_shape_and_bad_model(pm, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["quantize", "--model", "m:f", "--example-shape", "1,x"])
    assert exit_info.value.code == 2
    rc = cli.main(["quantize", "--model", "os:sep", "--example-shape", "1,3", "--calibration", "random:1"])
    assert rc == 1
    assert "must be an nn.Module" in capsys.readouterr().err


def test_backends_command_shows_availability_details(pm, capsys):
    advice = "start the process with OMP_WAIT_POLICY=PASSIVE so idle threads sleep instead of spinning"

    class Probed(ReferenceBackend):
        name = "probed"

        def availability(self):
            return Availability(True, details={"isa": "avx512_vnni", "threading": advice})

    class Missing(ReferenceBackend):
        name = "missing"

        def availability(self):
            return Availability.unavailable("the 'acme-runtime' package is not installed (pip install acme-runtime)")

    class Plugin:
        @hookimpl
        def quantfx_register_backends(self, register):
            register(Probed())
            register(Missing())

    quantfx.plugins.register(Plugin(), name="probed-plugin")
    assert cli.main(["backends"]) == 0
    text = capsys.readouterr().out
    probed = next(line for line in text.splitlines() if line.startswith("probed"))
    assert "isa=avx512_vnni" in probed and "OMP_WAIT_POLICY" not in probed  # long advice is not squeezed into the row
    assert "Notes:" in text and "probed threading: start the process with OMP_WAIT_POLICY=PASSIVE" in text
    assert "Why unavailable:" in text and "missing: the 'acme-runtime' package is not installed" in text
    assert cli.main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["probed"]["details"] == {"isa": "avx512_vnni", "threading": advice}


MODEL_MODULE = """
import torch.nn as nn

def make():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
"""


def test_quantize_end_to_end_saves_with_backend(pm, tmp_path, monkeypatch, capsys):
    (tmp_path / "qfx_cli_model.py").write_text(textwrap.dedent(MODEL_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))

    class Savable(ReferenceBackend):
        name = "savable"

        def save(self, lowered, path):
            torch.save(lowered.state_dict(), path)

    class Plugin:
        @hookimpl
        def quantfx_register_backends(self, register):
            register(Savable())

    quantfx.plugins.register(Plugin(), name="savable-plugin")
    out = tmp_path / "model.pt"
    args = ["quantize", "--model", "qfx_cli_model:make", "--example-shape", "1,3,8,8",
            "--calibration", "random:2", "--no-progress"]
    assert cli.main([*args, "--backend", "savable", "--output", str(out)]) == 0
    assert "Saved to" in capsys.readouterr().out
    state = torch.load(out)
    int_weights = [v for k, v in state.items() if k.endswith("weight_int")]
    assert len(int_weights) == 2 and all(w.dtype == torch.int8 for w in int_weights)

    # the reference backend has no artifact format: a clear error, not a crash
    assert cli.main([*args, "--backend", "reference", "--output", str(tmp_path / "ref.pt")]) == 1
    assert "no deployment format" in capsys.readouterr().err
    assert not (tmp_path / "ref.pt").exists()
