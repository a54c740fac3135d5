"""Export quantfx reference models to ONNX with explicit QuantizeLinear / DequantizeLinear.

One exporter every backend reuses (TensorRT, ONNX Runtime, OpenVINO's and
TVM's ONNX importers)::

    from quantfx.onnx import export_onnx, check_qdq, OnnxRuntimeModule

    ref = convert_to_reference_fx(prepared)
    model = export_onnx(ref, example_inputs, "model.onnx")   # onnx.ModelProto, checked
    assert check_qdq(model).ok                                 # Q/DQ in front of every conv / gemm / matmul
    ort_model = OnnxRuntimeModule(model)                       # call it like the torch model
    y = ort_model(x)
    print(compare_quantize_points(ref, model, x).summary())    # where ONNX Runtime and the reference differ

For ONNX Runtime's CPU int8 kernels, prepare with
``get_onnxruntime_qconfig_mapping()`` (asymmetric uint8 activations: ONNX
Runtime fuses conv + ReLU / ReLU6 only then); TensorRT needs its own
symmetric defaults (``quantfx_tensorrt``).

Needs the optional extra: ``pip install 'quantfx-core[onnx]'`` (onnx,
onnxscript for ``torch.onnx.export``, onnxruntime).
"""

from __future__ import annotations

from quantfx.onnx._deps import ONNX_EXTRA_HINT, require_onnx

require_onnx()

from quantfx.onnx.check import COMPUTE_OPS, QDQReport, check_qdq  # noqa: E402
from quantfx.onnx.compare import LayerwiseReport, QuantPointDiff, compare_quantize_points  # noqa: E402
from quantfx.onnx.export import DEFAULT_OPSET, export_onnx  # noqa: E402
from quantfx.onnx.qconfig import get_onnxruntime_qconfig, get_onnxruntime_qconfig_mapping  # noqa: E402
from quantfx.onnx.passes import DEFAULT_PASSES, OnnxPass, fit_bias_in_int32, fold_weight_transposes  # noqa: E402
from quantfx.onnx.runtime import OnnxRuntimeModule, load_onnx  # noqa: E402

__all__ = [
    "export_onnx",
    "check_qdq",
    "QDQReport",
    "compare_quantize_points",
    "LayerwiseReport",
    "QuantPointDiff",
    "COMPUTE_OPS",
    "OnnxRuntimeModule",
    "load_onnx",
    "OnnxPass",
    "DEFAULT_PASSES",
    "DEFAULT_OPSET",
    "fold_weight_transposes",
    "fit_bias_in_int32",
    "get_onnxruntime_qconfig",
    "get_onnxruntime_qconfig_mapping",
    "ONNX_EXTRA_HINT",
]
