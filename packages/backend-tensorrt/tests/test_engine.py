"""TensorRT engines on an NVIDIA GPU (``nox -s gpu``): build, run against ONNX Runtime, save / load.

Skipped with the reason on machines without the ``engine`` extra or a GPU;
the conformance kit's engine class (test_conformance.py) covers the model suite.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import quantfx
from trt_testing import requires_engine
from quantfx.onnx import OnnxRuntimeModule
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.metrics import sqnr, top1_agreement
from quantfx.testing.models import MODEL_SUITE, calibration_data
from quantfx_tensorrt import export_onnx

pytestmark = [pytest.mark.gpu, requires_engine]


def _reference(name: str) -> tuple[Any, tuple]:
    model, example = MODEL_SUITE[name]()
    prepared = prepare_fx(model, None, example, backend="tensorrt")
    with torch.no_grad():
        for batch in [example, *calibration_data(example, n=4)]:
            prepared(*batch)
    return convert_to_reference_fx(prepared), example


def test_quantize_returns_an_engine_that_matches_onnxruntime() -> None:
    from quantfx_tensorrt.engine import TensorRTModule

    model, example = MODEL_SUITE["residual_block"]()
    engine = quantfx.quantize(model, backend="tensorrt", calibration_data=calibration_data(example, 4),
                              example_inputs=example, progress=False)
    assert isinstance(engine, TensorRTModule)
    assert engine.qdq_report.ok
    ort_model = OnnxRuntimeModule(engine.onnx_bytes)
    with torch.no_grad():
        assert sqnr(ort_model(*example), engine(*example)) >= 30.0


def test_engine_save_load_roundtrip(tmp_path) -> None:
    backend = quantfx.get_backend("tensorrt")
    ref, example = _reference("conv_bn_relu")
    engine = backend.lower(ref, example)
    backend.save(engine, tmp_path / "model.plan")
    assert (tmp_path / "model.plan.onnx").exists() and (tmp_path / "model.plan.json").exists()
    loaded = backend.load(tmp_path / "model.plan")
    assert torch.equal(loaded(*example), engine(*example))
    assert engine.benchmark(*example, iters=5, warmup=1) > 0


def test_dynamic_batch_engine() -> None:
    backend = quantfx.get_backend("tensorrt")
    ref, example = _reference("conv_bn_relu")
    engine = backend.lower(ref, example, dynamic_batch=True,
                           shapes={"x": ((1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 16, 16))})
    for batch in (1, 8):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            assert sqnr(ref(x), engine(x)) >= 30.0


def test_efficientnet_lite0_engine_vs_onnxruntime(efficientnet_reference: dict[str, Any]) -> None:
    from quantfx_tensorrt.engine import TensorRTModule, build_engine

    ref, evals = efficientnet_reference["reference"], efficientnet_reference["evals"]
    model = export_onnx(ref, (evals,))
    engine = TensorRTModule(build_engine(model), onnx_bytes=model.SerializeToString())
    with torch.no_grad():
        ort_out = OnnxRuntimeModule(model)(evals)
        trt_out = engine(evals)
        ref_out = ref(evals)
    # same floor as the ONNX Runtime test: different float/int kernels flip rounding ties that EfficientNet amplifies
    assert sqnr(ort_out, trt_out) >= 20.0
    assert top1_agreement(ref_out, trt_out) >= 0.75
