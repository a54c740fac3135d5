"""quantfx backend for NVIDIA TensorRT: explicit int8 quantization through ONNX Q/DQ.

>>> import quantfx, quantfx_tensorrt
>>> ref = quantfx.quantize_fx.convert_to_reference_fx(prepared)       # prepared for backend="tensorrt"
>>> quantfx_tensorrt.export_onnx(ref, example_inputs, "model.onnx")  # anywhere, no GPU needed
>>> trt_model = quantfx.lower(ref, "tensorrt", example_inputs)       # needs tensorrt + an NVIDIA GPU

Public names load lazily so that importing the plugin stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "TensorRTBackend": "quantfx_tensorrt.backend",
    "get_tensorrt_backend_config": "quantfx_tensorrt.backend_config",
    "get_tensorrt_qconfig": "quantfx_tensorrt.qconfig",
    "get_tensorrt_qconfig_mapping": "quantfx_tensorrt.qconfig",
    "export_onnx": "quantfx_tensorrt.lowering",
    "check_tensorrt_qdq": "quantfx_tensorrt.lowering",
    "build_engine": "quantfx_tensorrt.engine",
    "TensorRTModule": "quantfx_tensorrt.engine",
    "probe_gpus": "quantfx_tensorrt.devices",
    "save": "quantfx_tensorrt.artifact",
    "load": "quantfx_tensorrt.artifact",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantfx_tensorrt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
