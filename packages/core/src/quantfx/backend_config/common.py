"""The standard pattern sets every backend config is built from, and the ``reference`` backend's config.

Mirrors torch.ao's ``_common_operator_config_utils`` + ``native.py`` with
quantfx's modules and plain dtypes. Each function takes the DTypeConfigs a
backend supports for that family of ops and returns BackendPatternConfigs;
a backend composes them (and overrides single patterns) in its plugin.

Additions over torch.ao: ReLU6 / Hardtanh(0, 6) fusion with conv / conv+bn /
linear (MobileNet, EfficientNet-Lite), ``torch.relu`` / ``.relu()`` as fusable
activations, padding ops and ``nn.Flatten`` / ``nn.Dropout`` as
share-qparams ops (they stay quantized instead of a float island), and
``F.softmax`` as a fixed-qparams op. Each pattern is defined once (torch.ao
redefines some, the later silently replacing the earlier).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import quantfx.nn.intrinsic as nni
import quantfx.nn.intrinsic.qat as nniqat
import quantfx.nn.qat as nnqat
import quantfx.nn.reference as nnqr
from quantfx.backend_config.backend_config import (
    BackendConfig,
    BackendPatternConfig,
    DTypeConfig,
    DTypeWithConstraints,
    ObservationType,
)
from quantfx.errors import ValidationError
from quantfx.fuser_method_mappings import (
    fuse_bn_relu,
    fuse_conv_bn,
    fuse_conv_bn_relu,
    fuse_conv_relu,
    fuse_convtranspose_bn,
    fuse_linear_bn,
    fuse_linear_relu,
)

__all__ = [
    "weighted_op_quint8_dtype_config",
    "default_static_int8_dtype_config",
    "default_op_quint8_dtype_config",
    "default_op_fp16_dtype_config",
    "default_dynamic_int8_dtype_config",
    "default_dynamic_float16_dtype_config",
    "input_output_only_quint8_dtype_config",
    "weight_only_quint8_dtype_config",
    "FIXED_QPARAMS_OP_0TO1_CONSTRAINTS",
    "FIXED_QPARAMS_OP_NEG1TO1_CONSTRAINTS",
    "FIXED_QPARAMS_OP_TO_CONSTRAINTS",
    "RELU_ACTIVATIONS",
    "RELU6_ACTIVATIONS",
    "conv_configs",
    "linear_configs",
    "binary_op_configs",
    "share_qparams_op_configs",
    "fixed_qparams_op_configs",
    "cat_config",
    "bn_configs",
    "default_op_configs",
    "ln_configs",
    "embedding_op_configs",
    "rnn_op_configs",
    "tensor_info_op_configs",
    "add_fixed_qparams_to_dtype_configs",
    "get_reference_backend_config",
]

# ----------------------------------------------------------------------------- dtype configs

weighted_op_quint8_dtype_config = DTypeConfig(
    input_dtype=torch.uint8, output_dtype=torch.uint8, weight_dtype=torch.int8, bias_dtype=torch.float
)
"""Static conv / linear: uint8 activations, int8 weights, float bias."""

default_static_int8_dtype_config = weighted_op_quint8_dtype_config
"""Alias of ``weighted_op_quint8_dtype_config``."""

default_op_quint8_dtype_config = DTypeConfig(input_dtype=torch.uint8, output_dtype=torch.uint8)
"""Static ops without weights (add, pooling, activations): uint8 in and out."""

default_op_fp16_dtype_config = DTypeConfig(
    input_dtype=torch.float16, output_dtype=torch.float16, weight_dtype=torch.float16, bias_dtype=torch.float16
)
"""Everything in float16."""

default_dynamic_int8_dtype_config = DTypeConfig(
    input_dtype=torch.uint8, output_dtype=torch.float, weight_dtype=torch.int8, bias_dtype=torch.float, is_dynamic=True
)
"""Dynamic quantization: activations quantized to uint8 at run time, int8 weights, float output."""

default_dynamic_float16_dtype_config = DTypeConfig(
    input_dtype=torch.float16, output_dtype=torch.float, weight_dtype=torch.float16, bias_dtype=torch.float, is_dynamic=True
)
"""Dynamic fp16: fp16 weights, float output."""

input_output_only_quint8_dtype_config = DTypeConfig(
    input_dtype=torch.uint8, output_dtype=torch.uint8, weight_dtype=torch.float, bias_dtype=torch.float
)
"""uint8 in / out, float weight and bias (layer_norm)."""

weight_only_quint8_dtype_config = DTypeConfig(input_dtype=torch.float, output_dtype=torch.float, weight_dtype=torch.uint8)
"""Weight-only uint8 (embeddings, per-row with float zero points): float in / out."""

FIXED_QPARAMS_OP_0TO1_CONSTRAINTS = DTypeWithConstraints(
    dtype=torch.uint8, quant_min_lower_bound=0, quant_max_upper_bound=255, scale_exact_match=1.0 / 256.0, zero_point_exact_match=0
)
FIXED_QPARAMS_OP_NEG1TO1_CONSTRAINTS = DTypeWithConstraints(
    dtype=torch.uint8, quant_min_lower_bound=0, quant_max_upper_bound=255, scale_exact_match=2.0 / 256.0, zero_point_exact_match=128
)

FIXED_QPARAMS_OP_TO_CONSTRAINTS: dict[Any, DTypeWithConstraints] = {
    nn.Hardsigmoid: FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    F.hardsigmoid: FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    "hardsigmoid": FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    "hardsigmoid_": FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    nn.Sigmoid: FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    torch.sigmoid: FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    F.sigmoid: FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    "sigmoid": FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    "sigmoid_": FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    nn.Softmax: FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    F.softmax: FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    torch.softmax: FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    "softmax": FIXED_QPARAMS_OP_0TO1_CONSTRAINTS,
    nn.Tanh: FIXED_QPARAMS_OP_NEG1TO1_CONSTRAINTS,
    torch.tanh: FIXED_QPARAMS_OP_NEG1TO1_CONSTRAINTS,
    F.tanh: FIXED_QPARAMS_OP_NEG1TO1_CONSTRAINTS,
    "tanh": FIXED_QPARAMS_OP_NEG1TO1_CONSTRAINTS,
    "tanh_": FIXED_QPARAMS_OP_NEG1TO1_CONSTRAINTS,
}
"""Ops whose output range is fixed (sigmoid 0..1, tanh -1..1): exact scale / zero point for uint8."""

RELU_ACTIVATIONS: tuple[Any, ...] = (nn.ReLU, F.relu, torch.relu, "relu")
"""Activations that fuse as ReLU (functional forms become ``nn.ReLU`` in the fused module)."""

RELU6_ACTIVATIONS: tuple[Any, ...] = (nn.ReLU6, F.relu6, nn.Hardtanh, F.hardtanh)
"""Activations that fuse as ReLU6; a Hardtanh fuses only when it is exactly (0, 6)."""

_OUT_DIFFERENT = ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT
_OUT_SHARE = ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT


def _pc(pattern: Any, dtype_configs: list[DTypeConfig], observation_type: ObservationType | None = _OUT_DIFFERENT) -> BackendPatternConfig:
    c = BackendPatternConfig(pattern).set_dtype_configs(dtype_configs)
    if observation_type is not None:
        c.set_observation_type(observation_type)
    return c


def _fusion(pattern: tuple, dtype_configs: list[DTypeConfig], fuser: Callable, fused: type[nn.Module] | None) -> BackendPatternConfig:
    return _pc(pattern, dtype_configs).set_fuser_method(fuser).set_fused_module(fused)


# ----------------------------------------------------------------------------- conv


class _ConvMeta(NamedTuple):
    root: type
    transpose: type
    bn: type
    reference: type
    transpose_reference: type
    fused_relu: type
    fused_relu6: type
    fused_bn: type
    fused_bn_relu: type
    fused_bn_relu6: type
    qat: type
    relu_qat: type
    relu6_qat: type
    bn_qat: type
    bn_relu_qat: type
    bn_relu6_qat: type
    func: Callable
    func_transpose: Callable


_CONV_METAS = (
    _ConvMeta(nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nnqr.Conv1d, nnqr.ConvTranspose1d,
              nni.ConvReLU1d, nni.ConvReLU6_1d, nni.ConvBn1d, nni.ConvBnReLU1d, nni.ConvBnReLU6_1d,
              nnqat.Conv1d, nniqat.ConvReLU1d, nniqat.ConvReLU6_1d, nniqat.ConvBn1d, nniqat.ConvBnReLU1d,
              nniqat.ConvBnReLU6_1d, F.conv1d, F.conv_transpose1d),
    _ConvMeta(nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nnqr.Conv2d, nnqr.ConvTranspose2d,
              nni.ConvReLU2d, nni.ConvReLU6_2d, nni.ConvBn2d, nni.ConvBnReLU2d, nni.ConvBnReLU6_2d,
              nnqat.Conv2d, nniqat.ConvReLU2d, nniqat.ConvReLU6_2d, nniqat.ConvBn2d, nniqat.ConvBnReLU2d,
              nniqat.ConvBnReLU6_2d, F.conv2d, F.conv_transpose2d),
    _ConvMeta(nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nnqr.Conv3d, nnqr.ConvTranspose3d,
              nni.ConvReLU3d, nni.ConvReLU6_3d, nni.ConvBn3d, nni.ConvBnReLU3d, nni.ConvBnReLU6_3d,
              nnqat.Conv3d, nniqat.ConvReLU3d, nniqat.ConvReLU6_3d, nniqat.ConvBn3d, nniqat.ConvBnReLU3d,
              nniqat.ConvBnReLU6_3d, F.conv3d, F.conv_transpose3d),
)


def _weighted(pattern: Any, dtype_configs: list[DTypeConfig], root: type, reference: type, qat: type | None = None) -> BackendPatternConfig:
    c = _pc(pattern, dtype_configs).set_root_module(root).set_reference_quantized_module(reference)
    if qat is not None:
        c.set_qat_module(qat)
    return c


def conv_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """Conv1d/2d/3d and ConvTranspose1d/2d/3d: modules, functionals, fusions with BN / ReLU / ReLU6, fused and QAT modules."""
    configs: list[BackendPatternConfig] = []
    for c in _CONV_METAS:
        # plain conv modules and their QAT / fused versions: swapped for reference modules in convert
        configs.append(_weighted(c.root, dtype_configs, c.root, c.reference, c.qat))
        configs.append(_weighted(c.qat, dtype_configs, c.root, c.reference))
        configs.append(_weighted(c.fused_relu, dtype_configs, c.root, c.reference, c.relu_qat))
        configs.append(_weighted(c.relu_qat, dtype_configs, c.root, c.reference))
        configs.append(_weighted(c.fused_relu6, dtype_configs, c.root, c.reference, c.relu6_qat))
        configs.append(_weighted(c.relu6_qat, dtype_configs, c.root, c.reference))
        # ConvBn(ReLU) float containers exist only in QAT (eval fusion folds BN), so they only name a QAT module
        configs.append(_pc(c.fused_bn, dtype_configs).set_qat_module(c.bn_qat))
        configs.append(_pc(c.fused_bn_relu, dtype_configs).set_qat_module(c.bn_relu_qat))
        configs.append(_pc(c.fused_bn_relu6, dtype_configs).set_qat_module(c.bn_relu6_qat))
        configs.append(_weighted(c.bn_qat, dtype_configs, c.root, c.reference))
        configs.append(_weighted(c.bn_relu_qat, dtype_configs, c.root, c.reference))
        configs.append(_weighted(c.bn_relu6_qat, dtype_configs, c.root, c.reference))
        # functional conv (weight / bias are graph inputs)
        configs.append(_pc(c.func, dtype_configs)._set_input_type_to_index({"weight": 1, "bias": 2}))
        for act in (nn.ReLU, F.relu):
            configs.append(_pc((c.func, act), dtype_configs))
        # fusions (execution order)
        configs.append(_fusion((c.root, c.bn), dtype_configs, fuse_conv_bn, c.fused_bn))
        for act in RELU_ACTIVATIONS:
            configs.append(_fusion((c.root, act), dtype_configs, fuse_conv_relu, c.fused_relu))
            configs.append(_fusion((c.root, c.bn, act), dtype_configs, fuse_conv_bn_relu, c.fused_bn_relu))
        for act in RELU6_ACTIVATIONS:
            configs.append(_fusion((c.root, act), dtype_configs, fuse_conv_relu, c.fused_relu6))
            configs.append(_fusion((c.root, c.bn, act), dtype_configs, fuse_conv_bn_relu, c.fused_bn_relu6))
        # transposed conv
        configs.append(_weighted(c.transpose, dtype_configs, c.transpose, c.transpose_reference))
        configs.append(
            _fusion((c.transpose, c.bn), dtype_configs, fuse_convtranspose_bn, None)
            .set_root_module(c.transpose)
            .set_reference_quantized_module(c.transpose_reference)
        )
        configs.append(_pc(c.func_transpose, dtype_configs)._set_input_type_to_index({"weight": 1, "bias": 2}))
    return configs


# ----------------------------------------------------------------------------- linear


def linear_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """Linear: module, functional, fusions with ReLU / ReLU6 / BatchNorm1d, fused and QAT modules."""
    configs = [
        _weighted(nn.Linear, dtype_configs, nn.Linear, nnqr.Linear, nnqat.Linear),
        _weighted(nnqat.Linear, dtype_configs, nn.Linear, nnqr.Linear),
        _pc(F.linear, dtype_configs)._set_input_type_to_index({"weight": 1, "bias": 2}),
        _weighted(nni.LinearReLU, dtype_configs, nn.Linear, nnqr.Linear, nniqat.LinearReLU),
        _weighted(nniqat.LinearReLU, dtype_configs, nn.Linear, nnqr.Linear),
        _weighted(nni.LinearReLU6, dtype_configs, nn.Linear, nnqr.Linear, nniqat.LinearReLU6),
        _weighted(nniqat.LinearReLU6, dtype_configs, nn.Linear, nnqr.Linear),
        # as in torch.ao, a float LinearBn1d (only made by QAT fusion) converts as reference Linear + float BN tail
        _weighted(nni.LinearBn1d, dtype_configs, nn.Linear, nnqr.Linear, nniqat.LinearBn1d),
        _weighted(nniqat.LinearBn1d, dtype_configs, nn.Linear, nnqr.Linear),
        _fusion((nn.Linear, nn.BatchNorm1d), dtype_configs, fuse_linear_bn, nni.LinearBn1d),
    ]
    for act in RELU_ACTIVATIONS:
        configs.append(_fusion((nn.Linear, act), dtype_configs, fuse_linear_relu, nni.LinearReLU))
    for act in RELU6_ACTIVATIONS:
        configs.append(_fusion((nn.Linear, act), dtype_configs, fuse_linear_relu, nni.LinearReLU6))
    for act in (nn.ReLU, F.relu):
        configs.append(_pc((F.linear, act), dtype_configs))
    return configs


# ----------------------------------------------------------------------------- ops without weights


def binary_op_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """add / mul (operator and torch), alone and followed by ReLU, plus matmul.

    With one tensor argument (``x + 1``) the output shares the input's observer;
    with two it gets its own.
    """
    num_tensor_args = {0: _OUT_DIFFERENT, 1: _OUT_SHARE, 2: _OUT_DIFFERENT}
    configs = []
    for op in (operator.add, torch.add, operator.mul, torch.mul):
        for pattern in ((op, nn.ReLU), (op, F.relu), (op, torch.relu), op):
            configs.append(_pc(pattern, dtype_configs)._set_num_tensor_args_to_observation_type(num_tensor_args))
    configs.append(_pc(torch.matmul, dtype_configs))
    return configs


def cat_config(dtype_configs: list[DTypeConfig]) -> BackendPatternConfig:
    """``torch.cat``: inputs and output share one observer, so cat needs no requantization."""
    return _pc(torch.cat, dtype_configs, _OUT_SHARE)


SHARE_QPARAMS_OPS: tuple[Any, ...] = (
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.Hardtanh, nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.Flatten,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
    torch.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    torch.avg_pool1d, torch._C._nn.avg_pool2d, torch._C._nn.avg_pool3d,  # F.avg_pool*d are these objects
    F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.hardtanh, F.hardtanh_, F.relu, F.relu6, torch.relu, F.dropout, F.interpolate, F.pad,
    F.pixel_shuffle, F.pixel_unshuffle,
    torch.clamp, torch.flatten, torch.mean, torch.narrow, torch.repeat_interleave, torch.reshape,
    torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze, torch.stack, operator.floordiv,
    "clamp", "contiguous", "detach", "detach_", "expand", "flatten", "mean", "narrow", "permute", "repeat",
    "repeat_interleave", "reshape", "resize_", "relu", "relu_", "squeeze", "squeeze_", "transpose",
    "unsqueeze", "unsqueeze_", "view",
)
"""Ops that only move / select / clamp values, so the output can reuse the input's qparams."""


def share_qparams_op_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """Pooling, reshaping, clamping, padding and standalone ReLU/ReLU6: output shares the input's observer."""
    return [_pc(op, dtype_configs, _OUT_SHARE) for op in SHARE_QPARAMS_OPS]


def add_fixed_qparams_to_dtype_configs(
    dtype_configs: list[DTypeConfig], constraints: DTypeWithConstraints
) -> list[DTypeConfig]:
    """Copies of ``dtype_configs`` whose activations of ``constraints.dtype`` carry the fixed-qparams constraints."""
    out = []
    for dc in dtype_configs:
        new = {}
        for field in ("input_dtype_with_constraints", "output_dtype_with_constraints"):
            orig: DTypeWithConstraints = getattr(dc, field)
            if orig.dtype != constraints.dtype:
                new[field] = orig
                continue
            if orig.scale_min_lower_bound is not None or orig.scale_max_upper_bound is not None:
                raise ValidationError(
                    f"{dc!r}: scale_min_lower_bound / scale_max_upper_bound cannot apply to fixed-qparams ops "
                    "(their scale is fixed); use a dtype config without scale bounds for sigmoid / tanh / softmax"
                )
            new[field] = dataclasses.replace(
                orig,
                quant_min_lower_bound=constraints.quant_min_lower_bound,
                quant_max_upper_bound=constraints.quant_max_upper_bound,
                scale_exact_match=constraints.scale_exact_match,
                zero_point_exact_match=constraints.zero_point_exact_match,
            )
        out.append(
            DTypeConfig(
                input_dtype=new["input_dtype_with_constraints"],
                output_dtype=new["output_dtype_with_constraints"],
                weight_dtype=dc.weight_dtype_with_constraints,
                bias_dtype=dc.bias_dtype,
                is_dynamic=dc.is_dynamic,
            )
        )
    return out


def fixed_qparams_op_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """sigmoid / hardsigmoid / softmax (0..1) and tanh (-1..1) with exact scale / zero point constraints."""
    return [
        _pc(op, add_fixed_qparams_to_dtype_configs(dtype_configs, constraints))
        for op, constraints in FIXED_QPARAMS_OP_TO_CONSTRAINTS.items()
    ]


def bn_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """Standalone BatchNorm2d/3d and BN + ReLU fusion (BNReLU2d/3d)."""
    configs = []
    for bn, fused in ((nn.BatchNorm2d, nni.BNReLU2d), (nn.BatchNorm3d, nni.BNReLU3d)):
        for act in RELU_ACTIVATIONS:
            configs.append(_fusion((bn, act), dtype_configs, fuse_bn_relu, fused))
        configs.append(_pc(bn, dtype_configs))
        configs.append(_pc(fused, dtype_configs))
    return configs


def default_op_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """Ops that need their own output observer: hardswish, elu, leaky_relu, prelu, instance / group norm."""
    ops = (
        nn.ELU, nn.LeakyReLU, nn.Hardswish, nn.PReLU, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
        nn.GroupNorm, F.elu, F.hardswish, F.leaky_relu,
    )
    configs = [_pc(op, dtype_configs) for op in ops]
    configs.append(_pc(F.group_norm, dtype_configs)._set_input_type_to_index({"weight": 2, "bias": 3}))
    configs.append(_pc(F.instance_norm, dtype_configs)._set_input_type_to_index({"weight": 3, "bias": 4}))
    return configs


def ln_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """LayerNorm module and functional."""
    return [
        _pc(nn.LayerNorm, dtype_configs),
        _pc(F.layer_norm, dtype_configs)._set_input_type_to_index({"weight": 2, "bias": 3}),
    ]


def embedding_op_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """Embedding / EmbeddingBag (weight-only): float modules, their QAT versions, reference modules."""
    configs = []
    for emb, qat, ref in ((nn.Embedding, nnqat.Embedding, nnqr.Embedding), (nn.EmbeddingBag, nnqat.EmbeddingBag, nnqr.EmbeddingBag)):
        configs.append(_weighted(emb, dtype_configs, emb, ref, qat))
        configs.append(_weighted(qat, dtype_configs, emb, ref))
    return configs


def rnn_op_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """LSTM / GRU / RNN cells (dynamic). quantfx has no reference RNN modules yet, so only backends
    that lower float RNN modules themselves should include these."""
    return [_pc(op, dtype_configs).set_root_module(op) for op in (nn.GRUCell, nn.LSTMCell, nn.RNNCell, nn.LSTM, nn.GRU)]


def tensor_info_op_configs(dtype_configs: list[DTypeConfig]) -> list[BackendPatternConfig]:
    """``x.shape`` / ``x.size()``: read metadata, never observed."""
    return [_pc(op, dtype_configs, ObservationType.INPUT_OUTPUT_NOT_OBSERVED) for op in ("shape", "size")]


# ----------------------------------------------------------------------------- the reference backend


def get_reference_backend_config() -> BackendConfig:
    """The ``reference`` backend: every standard pattern, static uint8 activations / int8 weights,
    plus dynamic int8 / fp16 linear and weight-only uint8 embeddings.

    A new object each call, so callers may extend it freely.
    """
    weighted = [weighted_op_quint8_dtype_config]
    linear = [weighted_op_quint8_dtype_config, default_dynamic_int8_dtype_config, default_dynamic_float16_dtype_config]
    op = [default_op_quint8_dtype_config]
    return (
        BackendConfig("reference")
        .set_backend_pattern_configs(conv_configs(weighted))
        .set_backend_pattern_configs(linear_configs(linear))
        .set_backend_pattern_configs(binary_op_configs(op))
        .set_backend_pattern_config(cat_config(op))
        .set_backend_pattern_configs(default_op_configs(op))
        .set_backend_pattern_configs(fixed_qparams_op_configs(op))
        .set_backend_pattern_configs(share_qparams_op_configs(op))
        .set_backend_pattern_configs(tensor_info_op_configs(op))
        .set_backend_pattern_configs(bn_configs(op))
        .set_backend_pattern_configs(ln_configs([input_output_only_quint8_dtype_config]))
        .set_backend_pattern_configs(embedding_op_configs([weight_only_quint8_dtype_config]))
    )
