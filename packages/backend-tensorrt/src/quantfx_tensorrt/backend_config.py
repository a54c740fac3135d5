"""TensorRT's BackendConfig: which patterns get Q/DQ, following its explicit-quantization rules.

TensorRT fuses a ``DequantizeLinear`` into the op that reads it and a
``QuantizeLinear`` into the op that writes it, so Q/DQ belong on the inputs
of the layers it runs in int8 (NVIDIA's Q/DQ placement recommendations):

- convolutions and transposed convolutions (with their BN / ReLU / ReLU6
  fusions), linear layers (Gemm) and ``torch.matmul``: weights and inputs;
- residual adds (``add`` and ``add`` + ReLU): both inputs, so the add runs in
  int8 next to the convolution;
- ``torch.cat`` and the ops that only move or select values (pooling,
  flatten / reshape / permute, ReLU / clamp, padding, upsampling): they share
  their input's scale, so Q/DQ commute through them;
- everything else (softmax, layer norm, sigmoid, hardswish, mul ...) stays
  float: TensorRT computes it in float between a DQ and the next Q.

Every dtype is signed int8 with zero point 0 (``DTypeWithConstraints``: range
[-128, 127], ``zero_point_exact_match=0``, which symmetric observers satisfy):
a qconfig with affine or uint8 observers is refused for a pattern at prepare
time (that op stays float, with an ``UnsupportedQConfigWarning``), and the ONNX
lowering checks the result again (``quantfx_tensorrt.lowering.check_tensorrt_qdq``).
"""

from __future__ import annotations

import operator

import torch

from quantfx.backend_config import BackendConfig, BackendPatternConfig, DTypeConfig, DTypeWithConstraints
from quantfx.backend_config.common import (
    binary_op_configs,
    cat_config,
    conv_configs,
    linear_configs,
    share_qparams_op_configs,
    tensor_info_op_configs,
)

__all__ = [
    "TENSORRT_INT8",
    "tensorrt_weighted_int8_dtype_config",
    "tensorrt_op_int8_dtype_config",
    "get_tensorrt_backend_config",
]

TENSORRT_INT8 = DTypeWithConstraints(
    dtype=torch.int8, quant_min_lower_bound=-128, quant_max_upper_bound=127, zero_point_exact_match=0
)
"""Symmetric signed int8 in [-128, 127]: the only integer Q/DQ TensorRT takes."""

tensorrt_weighted_int8_dtype_config = DTypeConfig(
    input_dtype=TENSORRT_INT8, output_dtype=TENSORRT_INT8, weight_dtype=TENSORRT_INT8, bias_dtype=torch.float
)
"""conv / linear: int8 input, weight and output; float bias (TensorRT quantizes the bias itself)."""

tensorrt_op_int8_dtype_config = DTypeConfig(input_dtype=TENSORRT_INT8, output_dtype=TENSORRT_INT8)
"""add / matmul / cat / pooling / layout ops: int8 in and out."""

_RESIDUAL_AND_MATMUL = (operator.add, torch.add, torch.matmul)


def _residual_add_and_matmul(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """add (alone or + ReLU) and matmul out of core's binary op set; mul stays float."""
    return [c for c in binary_op_configs(dtype_configs) if c.pattern_tuple[0] in _RESIDUAL_AND_MATMUL]


def get_tensorrt_backend_config() -> BackendConfig:
    """The ``tensorrt`` backend's BackendConfig (a new object each call, free to extend)."""
    weighted = [tensorrt_weighted_int8_dtype_config]
    op = [tensorrt_op_int8_dtype_config]
    return (
        BackendConfig("tensorrt")
        .set_backend_pattern_configs(conv_configs(weighted))
        .set_backend_pattern_configs(linear_configs(weighted))
        .set_backend_pattern_configs(_residual_add_and_matmul(op))
        .set_backend_pattern_config(cat_config(op))
        .set_backend_pattern_configs(share_qparams_op_configs(op))
        .set_backend_pattern_configs(tensor_info_op_configs(op))
    )
