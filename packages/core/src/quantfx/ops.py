"""The quantize / dequantize operators of quantfx's reference IR.

Every backend lowers from one form: float operators between these nodes. They
work on *plain* integer tensors (``torch.uint8`` / ``torch.int8`` /
``torch.int32``) with explicit scale and zero point, never on the quantized
dtypes (``torch.quint8`` ...) that torch 2.13 deprecates, so reference models
and the artifacts made from them outlive that deprecation.

The ops are registered with ``torch.library`` under the ``quantfx`` namespace
(``torch.ops.quantfx.quantize_per_tensor`` ...), so they survive
``torch.export`` and show up by name in a graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "quantize_per_tensor",
    "dequantize_per_tensor",
    "quantize_per_channel",
    "dequantize_per_channel",
    "choose_qparams_per_tensor",
    "quantize_per_tensor_tensor",
    "dequantize_per_tensor_tensor",
    "QUANTIZE_OPS",
    "DEQUANTIZE_OPS",
    "is_quantize_node",
    "is_dequantize_node",
]

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32)


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in _INT_DTYPES:
        raise ValueError(
            f"quantfx quantize ops store plain integer tensors; got dtype {dtype}, "
            f"expected one of {', '.join(str(d) for d in _INT_DTYPES)}"
        )


def _quantize(x: Tensor, scale: Tensor | float, zero_point: Tensor | int, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    # Same arithmetic as torch's and fbgemm's quantize: float32 inverse scale,
    # float32 multiply, round half to even; bit-exact with the native kernels.
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    inv_scale = torch.reciprocal(scale)
    q = torch.round(x.float() * inv_scale) + zero_point
    return torch.clamp(q, quant_min, quant_max).to(dtype)


@torch.library.custom_op("quantfx::quantize_per_tensor", mutates_args=())
def quantize_per_tensor(
    x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype
) -> Tensor:
    """Affine-quantize ``x`` to an integer tensor: clamp(round(x / scale) + zp)."""
    _check_dtype(dtype)
    return _quantize(x, scale, zero_point, quant_min, quant_max, dtype)


@quantize_per_tensor.register_fake
def _(x, scale, zero_point, quant_min, quant_max, dtype):
    return torch.empty_like(x, dtype=dtype)


@torch.library.custom_op("quantfx::dequantize_per_tensor", mutates_args=())
def dequantize_per_tensor(
    x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype
) -> Tensor:
    """Map an integer tensor back to float: (x - zp) * scale."""
    _check_dtype(dtype)
    return (x.to(torch.int32) - zero_point).to(torch.float32) * scale


@dequantize_per_tensor.register_fake
def _(x, scale, zero_point, quant_min, quant_max, dtype):
    return torch.empty_like(x, dtype=torch.float32)


def _channel_view(t: Tensor, x: Tensor, axis: int) -> Tensor:
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


@torch.library.custom_op("quantfx::quantize_per_channel", mutates_args=())
def quantize_per_channel(
    x: Tensor, scales: Tensor, zero_points: Tensor, axis: int, quant_min: int, quant_max: int, dtype: torch.dtype
) -> Tensor:
    """Per-channel affine quantization along ``axis`` (weights)."""
    _check_dtype(dtype)
    axis = axis % x.dim()
    inv = torch.reciprocal(_channel_view(scales.to(torch.float32), x, axis))
    zp = _channel_view(zero_points.to(torch.int64), x, axis)
    q = torch.round(x.float() * inv) + zp
    return torch.clamp(q, quant_min, quant_max).to(dtype)


@quantize_per_channel.register_fake
def _(x, scales, zero_points, axis, quant_min, quant_max, dtype):
    return torch.empty_like(x, dtype=dtype)


@torch.library.custom_op("quantfx::dequantize_per_channel", mutates_args=())
def dequantize_per_channel(
    x: Tensor, scales: Tensor, zero_points: Tensor, axis: int, quant_min: int, quant_max: int, dtype: torch.dtype
) -> Tensor:
    _check_dtype(dtype)
    axis = axis % x.dim()
    s = _channel_view(scales.to(torch.float32), x, axis)
    zp = _channel_view(zero_points.to(torch.int32), x, axis)
    return (x.to(torch.int32) - zp).to(torch.float32) * s


@dequantize_per_channel.register_fake
def _(x, scales, zero_points, axis, quant_min, quant_max, dtype):
    return torch.empty_like(x, dtype=torch.float32)


@torch.library.custom_op("quantfx::choose_qparams_per_tensor", mutates_args=())
def choose_qparams_per_tensor(
    x: Tensor, quant_min: int, quant_max: int, eps: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Dynamic quantization: asymmetric per-tensor qparams from the tensor's own range."""
    _check_dtype(dtype)
    min_val = torch.clamp(x.min(), max=0.0).float()
    max_val = torch.clamp(x.max(), min=0.0).float()
    scale = torch.clamp((max_val - min_val) / float(quant_max - quant_min), min=eps)
    zero_point = torch.clamp(quant_min - torch.round(min_val / scale), quant_min, quant_max).to(torch.int64)
    return scale.reshape(1), zero_point.reshape(1)


@choose_qparams_per_tensor.register_fake
def _(x, quant_min, quant_max, eps, dtype):
    return x.new_empty(1, dtype=torch.float32), x.new_empty(1, dtype=torch.int64)


@torch.library.custom_op("quantfx::quantize_per_tensor_tensor", mutates_args=())
def quantize_per_tensor_tensor(
    x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int, dtype: torch.dtype
) -> Tensor:
    """Like ``quantize_per_tensor`` with scale / zero point computed at run time (dynamic quant)."""
    _check_dtype(dtype)
    return _quantize(x, scale, zero_point, quant_min, quant_max, dtype)


@quantize_per_tensor_tensor.register_fake
def _(x, scale, zero_point, quant_min, quant_max, dtype):
    return torch.empty_like(x, dtype=dtype)


@torch.library.custom_op("quantfx::dequantize_per_tensor_tensor", mutates_args=())
def dequantize_per_tensor_tensor(
    x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int, dtype: torch.dtype
) -> Tensor:
    _check_dtype(dtype)
    return (x.to(torch.int32) - zero_point.to(torch.int32)).to(torch.float32) * scale.float()


@dequantize_per_tensor_tensor.register_fake
def _(x, scale, zero_point, quant_min, quant_max, dtype):
    return torch.empty_like(x, dtype=torch.float32)


QUANTIZE_OPS = (
    torch.ops.quantfx.quantize_per_tensor.default,
    torch.ops.quantfx.quantize_per_channel.default,
    torch.ops.quantfx.quantize_per_tensor_tensor.default,
)
DEQUANTIZE_OPS = (
    torch.ops.quantfx.dequantize_per_tensor.default,
    torch.ops.quantfx.dequantize_per_channel.default,
    torch.ops.quantfx.dequantize_per_tensor_tensor.default,
)


def _targets(ops):
    return set(ops) | {op.overloadpacket for op in ops}


_QUANTIZE_TARGETS = _targets(QUANTIZE_OPS)
_DEQUANTIZE_TARGETS = _targets(DEQUANTIZE_OPS)


def is_quantize_node(node) -> bool:
    return node.op == "call_function" and node.target in _QUANTIZE_TARGETS


def is_dequantize_node(node) -> bool:
    return node.op == "call_function" and node.target in _DEQUANTIZE_TARGETS
