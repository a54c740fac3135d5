"""The ``openvino`` BackendConfig: quantize what OpenVINO's CPU plugin runs in int8, leave the rest in float.

OpenVINO executes int8 through its low-precision transformations (LPT): a
FakeQuantize in front of an op is split into quantize / dequantize and the
dequantize is pushed through the ops LPT knows, so those ops run on u8 / i8
data. LPT knows convolution (incl. group / depthwise and transposed),
MatMul / fully connected, Add / Multiply, pooling, Concat, Clamp / ReLU,
padding, interpolation and the layout ops (Reshape, Transpose, Squeeze ...).
These are the patterns quantized here.

A conv whose only user is a residual add (``conv -> add [-> relu]``) is one
pattern, quantized at its input and after the add, not in between: OpenVINO's
CPU plugin fuses such an add into the convolution as a sum post-op and does
not round the conv output to its own grid (measured: a FakeQuantize there is
skipped), so the reference IR must not round it either. Without this pattern
1 output in 5 of EfficientNet-Lite0's first residual block was one step off
the reference, and the whole model followed the reference at 28.8 dB.

Attention's second matmul (``softmax -> matmul``, the probabilities times V) is
one pattern whose qconfig is the softmax's, which the openvino presets always
leave float, so that matmul stays float with both of its inputs, as NNCF's
transformer preset leaves it: OpenVINO runs attention as one fused MHA kernel
that takes int8 only for the first matmul (Q x K^T); quantizing the second
added a dequantize per input in front of the kernel (13 standalone nodes on a
6-layer encoder) and rounded the probabilities.

Left in float on purpose, because OpenVINO computes them in float anyway and
a quantize / dequantize pair around them would only add rounding and
conversions: LayerNorm (MVN), softmax, sigmoid / tanh / hardsigmoid,
hardswish / ELU / leaky ReLU / PReLU, standalone BatchNorm (OpenVINO folds it
into the preceding op), group / instance norm. Dynamic quantization is not
offered: OpenVINO's CPU plugin applies its own dynamic quantization to fully
connected layers at run time. Embeddings are weight-only (u8 table, float
lookups), which OpenVINO runs as a compressed Gather.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from quantfx.backend_config import (
    BackendConfig,
    BackendPatternConfig,
    DTypeConfig,
    ObservationType,
)
from quantfx.backend_config.common import (
    binary_op_configs,
    cat_config,
    conv_configs,
    default_op_quint8_dtype_config,
    embedding_op_configs,
    linear_configs,
    share_qparams_op_configs,
    tensor_info_op_configs,
    weight_only_quint8_dtype_config,
    weighted_op_quint8_dtype_config,
)
from quantfx.nn import reference as nnqr
from torch import nn

__all__ = [
    "BACKEND_NAME",
    "FLOAT_SHARE_QPARAMS_OPS",
    "conv_add_configs",
    "get_openvino_backend_config",
    "softmax_matmul_configs",
]

BACKEND_NAME = "openvino"

#: Share-qparams ops kept in float. ``nn.ConstantPad1d``: OpenVINO 2026.4's CPU plugin pads 3-D int8
#: tensors with 0 instead of a non-zero constant (measured: 15 dB SQNR); ZeroPad1d is unaffected.
FLOAT_SHARE_QPARAMS_OPS: tuple[type, ...] = (nn.ConstantPad1d,)


_CONVS = ((nn.Conv1d, nnqr.Conv1d), (nn.Conv2d, nnqr.Conv2d), (nn.Conv3d, nnqr.Conv3d))
_ADDS = (operator.add, torch.add)
_RELUS = (nn.ReLU, F.relu, torch.relu)


def conv_add_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """``conv -> add`` and ``conv -> add -> relu`` (the conv output either operand of the add) as one pattern."""
    configs = []
    for conv, reference in _CONVS:
        patterns = [(conv, add) for add in _ADDS] + [(conv, add, relu) for add in _ADDS for relu in _RELUS]
        for pattern in patterns:
            configs.append(
                BackendPatternConfig(pattern)
                .set_dtype_configs(dtype_configs)
                .set_observation_type(ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT)
                .set_root_module(conv)
                .set_reference_quantized_module(reference)
            )
    return configs


_SOFTMAXES = (nn.Softmax, F.softmax, torch.softmax, "softmax")
_MATMULS = (torch.matmul, operator.matmul, torch.bmm)


def softmax_matmul_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """``softmax -> matmul`` (the probabilities being the matmul's first input) as one pattern, rooted at the softmax.

    The match takes the softmax's qconfig, None in every openvino preset, so the
    matmul after a softmax stays float (see the module docstring).
    """
    return [
        BackendPatternConfig((softmax, matmul))
        .set_dtype_configs(dtype_configs)
        .set_observation_type(ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT)
        for softmax in _SOFTMAXES
        for matmul in _MATMULS
    ]


def get_openvino_backend_config() -> BackendConfig:
    """Conv / linear / matmul / add / mul / cat / pooling / layout ops in uint8 x int8, embeddings weight-only.

    A new object each call, so callers (and ``quantfx_extend_backend_config``
    plugins) may extend it freely.
    """
    weighted = [weighted_op_quint8_dtype_config]
    op = [default_op_quint8_dtype_config]
    return (
        BackendConfig(BACKEND_NAME)
        .set_backend_pattern_configs(conv_configs(weighted))
        .set_backend_pattern_configs(conv_add_configs(weighted))
        .set_backend_pattern_configs(softmax_matmul_configs(op))
        .set_backend_pattern_configs(linear_configs(weighted))
        .set_backend_pattern_configs(binary_op_configs(op))
        .set_backend_pattern_config(cat_config(op))
        .set_backend_pattern_configs(
            [c for c in share_qparams_op_configs(op) if c.pattern not in FLOAT_SHARE_QPARAMS_OPS]
        )
        .set_backend_pattern_configs(tensor_info_op_configs(op))
        .set_backend_pattern_configs(embedding_op_configs([weight_only_quint8_dtype_config]))
    )
