"""quantfx's OpenVINO backend: int8 on Intel CPU / GPU / NPU through the OpenVINO runtime.

``quantfx.quantize(model, backend="openvino", calibration_data=..., example_inputs=...)``
returns an ``OpenVINOModule``: the model compiled by OpenVINO, with quantization
expressed as FakeQuantize nodes (the form NNCF produces), taking and returning
torch tensors. ``Backend.save`` / ``load`` write and read OpenVINO IR.
"""

from __future__ import annotations

from quantfx_openvino.backend import OpenVINOBackend
from quantfx_openvino.backend_config import get_openvino_backend_config
from quantfx_openvino.qconfig import (
    PRESETS,
    get_openvino_qconfig,
    get_openvino_qconfig_mapping,
)
from quantfx_openvino.runtime import OpenVINOModule

__all__ = [
    "PRESETS",
    "OpenVINOBackend",
    "OpenVINOModule",
    "get_openvino_backend_config",
    "get_openvino_qconfig",
    "get_openvino_qconfig_mapping",
]
