"""The conformance kit for the tensorrt backend.

On every machine: the lowering up to the engine (reference -> TensorRT-ready
Q/DQ ONNX) run by ONNX Runtime must match the reference IR at >= 35 dB on the
whole model suite, with a Q/DQ pair in front of every conv / gemm / matmul
input and nothing TensorRT's parser would reject. With an NVIDIA GPU and
TensorRT (``nox -s gpu``), the engine itself goes through the same kit.

Op cases: a representative set by default (one ONNX export each costs ~1 s);
``QUANTFX_FULL_CONFORMANCE=1`` runs every pattern of the BackendConfig.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from trt_testing import requires_engine
from quantfx.onnx import OnnxRuntimeModule, check_qdq
from quantfx.plugins import get_plugin_manager
from quantfx.testing.conformance import BackendConformanceTests
from quantfx_tensorrt.lowering import tensorrt_problems

# one case per kind of op TensorRT runs in int8 (the model suite covers the rest in context)
REPRESENTATIVE_OPS = (
    "Conv1d", "Conv2d", "Conv2d+BatchNorm2d+ReLU", "Conv2d+ReLU6", "Conv3d", "ConvTranspose2d",
    "Linear+ReLU", "F.linear", "operator.add+ReLU", "torch.matmul", "torch.cat",
    "MaxPool2d", "AdaptiveAvgPool2d", "Upsample", ".permute",
)
_FULL = os.environ.get("QUANTFX_FULL_CONFORMANCE") == "1"

# Averaging int8 values lands exactly on .5 steps (mean of 2 or 4 integers); float rounding noise in the
# two runtimes then breaks those ties either way, so about one output in eight differs by one step.
_AVERAGING_OPS = {name: 30.0 for name in ("AvgPool2d", "AdaptiveAvgPool2d", "torch.mean", "F.avg_pool2d",
                                           "F.adaptive_avg_pool2d", "AvgPool1d", "AvgPool3d", "AdaptiveAvgPool1d",
                                           "AdaptiveAvgPool3d", "F.avg_pool1d", "F.avg_pool3d", ".mean",
                                           "F.adaptive_avg_pool1d", "F.adaptive_avg_pool3d")}


class TestTensorRTOnnxConformance(BackendConformanceTests):
    """Everything before the engine: the TensorRT-ready ONNX model, run by ONNX Runtime on CPU."""

    backend = "tensorrt"
    default_model_sqnr = 35.0
    default_op_sqnr = 35.0
    sqnr_bounds = _AVERAGING_OPS
    ops = None if _FULL else REPRESENTATIVE_OPS

    def lower(self, reference: Any, example_inputs: tuple[Any, ...]) -> Any:
        backend = self.backend_object()
        rules = get_plugin_manager().lowering_rules(self.backend)
        return backend.lower(reference, example_inputs, lowering_rules=rules, engine=False)

    def test_qdq_in_front_of_every_compute_input(self, model_name: str) -> None:
        """Q/DQ pair on every conv / gemm / matmul data input, no dangling Q/DQ, nothing TensorRT rejects."""
        f = self._lowered_flow("model", model_name)
        assert isinstance(f.artifact, OnnxRuntimeModule)
        model = f.artifact.onnx_model
        report = check_qdq(model)
        assert report.ok, f"{model_name}:\n{report.summary()}"
        assert report.quantized_compute_nodes, f"{model_name}: no conv / gemm / matmul quantized"
        assert tensorrt_problems(model) == []
        assert set(report.weight_types.values()) == {3}, "weights must be int8 initializers (ONNX INT8 = 3)"


@pytest.mark.gpu
@requires_engine
class TestTensorRTEngineConformance(BackendConformanceTests):
    """The TensorRT engine against the reference IR (needs an NVIDIA GPU and the engine extra)."""

    backend = "tensorrt"
    # TensorRT fuses Q/DQ into int8 kernels with their own requantization rounding
    default_model_sqnr = 30.0
    default_op_sqnr = 30.0
    sqnr_bounds = _AVERAGING_OPS
    ops = None if _FULL else REPRESENTATIVE_OPS
