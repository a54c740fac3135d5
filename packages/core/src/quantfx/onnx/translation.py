"""ONNX translations of the reference IR's quantize / dequantize ops, for ``torch.onnx.export``.

``torch.onnx.export(dynamo=True)`` exports every float op of a reference
model with PyTorch's own ONNX function library; only the ``torch.ops.quantfx``
ops are quantfx's, and this table tells the exporter what they are in ONNX:

- ``quantize_per_tensor`` -> ``QuantizeLinear`` (preceded by a ``Clip`` when
  the quant range is narrower than the dtype, e.g. ``reduce_range``, because
  ``QuantizeLinear`` always saturates to the full dtype range);
- ``dequantize_per_tensor`` -> ``DequantizeLinear``;
- ``quantize_per_channel`` / ``dequantize_per_channel`` -> the same ops with
  per-axis scales (``axis`` attribute); the integer weight stays an int8
  initializer feeding ``DequantizeLinear``;
- dynamic quantization (``choose_qparams_per_tensor``, ``*_tensor`` variants)
  -> ``ReduceMin`` / ``ReduceMax`` arithmetic and runtime-scale Q / DQ.

Each function receives ONNX symbolic tensors for tensor arguments and Python
values for the rest (``dtype`` arrives as ``onnx_ir.DataType``, an IntEnum
holding the ONNX element type).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx
import torch
from onnx import TensorProto
from onnxscript import opset18 as op

import quantfx.ops  # noqa: F401  (registers torch.ops.quantfx.*)

__all__ = ["translation_table", "onnx_elem_type", "SUPPORTED_Q_DTYPES"]

_TORCH_TO_ONNX: dict[torch.dtype, int] = {
    torch.uint8: TensorProto.UINT8,
    torch.int8: TensorProto.INT8,
    torch.int16: TensorProto.INT16,
    torch.int32: TensorProto.INT32,
}

#: integer dtype (ONNX element type) -> its full range
_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.UINT8: (0, 255),
    TensorProto.INT8: (-128, 127),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.INT32: (-(2**31), 2**31 - 1),
}

#: torch dtype -> lowest opset whose QuantizeLinear can produce it
SUPPORTED_Q_DTYPES: dict[torch.dtype, int] = {torch.uint8: 10, torch.int8: 10, torch.int16: 21}


def onnx_elem_type(dtype: Any) -> int:
    """ONNX element type of a torch dtype or of the ``onnx_ir.DataType`` the exporter passes."""
    if isinstance(dtype, torch.dtype):
        return _TORCH_TO_ONNX[dtype]
    return int(dtype)


def _const(value: float | int, elem_type: int) -> Any:
    return op.Constant(value=onnx.helper.make_tensor("value", elem_type, [], [value]))


def _to_scalar(t: Any) -> Any:
    """A one-element tensor as a 0-d tensor: ONNX reads a 1-d scale as per-axis."""
    return op.Reshape(t, op.Constant(value=onnx.helper.make_tensor("shape", TensorProto.INT64, [0], [])))


def _is_full_range(elem_type: int, quant_min: int, quant_max: int) -> bool:
    return _RANGES.get(elem_type) == (int(quant_min), int(quant_max))


def quantize_per_tensor(x: Any, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: Any) -> Any:
    elem = onnx_elem_type(dtype)
    if not _is_full_range(elem, quant_min, quant_max):
        # clamp in float to the values that quantize to quant_min / quant_max: same result as clamping the integers
        lo = (int(quant_min) - int(zero_point)) * float(scale)
        hi = (int(quant_max) - int(zero_point)) * float(scale)
        x = op.Clip(x, _const(lo, TensorProto.FLOAT), _const(hi, TensorProto.FLOAT))
    return op.QuantizeLinear(x, _const(float(scale), TensorProto.FLOAT), _const(int(zero_point), elem))


def dequantize_per_tensor(x: Any, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: Any) -> Any:
    elem = onnx_elem_type(dtype)
    return op.DequantizeLinear(x, _const(float(scale), TensorProto.FLOAT), _const(int(zero_point), elem))


def quantize_per_channel(
    x: Any, scales: Any, zero_points: Any, axis: int, quant_min: int, quant_max: int, dtype: Any
) -> Any:
    elem = onnx_elem_type(dtype)
    scales = op.Cast(scales, to=TensorProto.FLOAT)
    return op.QuantizeLinear(x, scales, op.Cast(zero_points, to=elem), axis=int(axis))


def dequantize_per_channel(
    x: Any, scales: Any, zero_points: Any, axis: int, quant_min: int, quant_max: int, dtype: Any
) -> Any:
    elem = onnx_elem_type(dtype)
    scales = op.Cast(scales, to=TensorProto.FLOAT)
    return op.DequantizeLinear(x, scales, op.Cast(zero_points, to=elem), axis=int(axis))


def choose_qparams_per_tensor(x: Any, quant_min: int, quant_max: int, eps: float, dtype: Any) -> tuple[Any, Any]:
    # same arithmetic as quantfx.ops.choose_qparams_per_tensor (asymmetric, range includes 0)
    zero = _const(0.0, TensorProto.FLOAT)
    qmin = _const(float(quant_min), TensorProto.FLOAT)
    qmax = _const(float(quant_max), TensorProto.FLOAT)
    x = op.Cast(x, to=TensorProto.FLOAT)
    min_val = op.Min(op.ReduceMin(x, keepdims=0), zero)
    max_val = op.Max(op.ReduceMax(x, keepdims=0), zero)
    scale = op.Div(op.Sub(max_val, min_val), _const(float(quant_max - quant_min), TensorProto.FLOAT))
    scale = op.Max(scale, _const(float(eps), TensorProto.FLOAT))
    zp = op.Clip(op.Sub(qmin, op.Round(op.Div(min_val, scale))), qmin, qmax)
    one = op.Constant(value=onnx.helper.make_tensor("shape", TensorProto.INT64, [1], [1]))
    return op.Reshape(scale, one), op.Reshape(op.Cast(zp, to=TensorProto.INT64), one)


def quantize_per_tensor_tensor(
    x: Any, scale: Any, zero_point: Any, quant_min: int, quant_max: int, dtype: Any
) -> Any:
    elem = onnx_elem_type(dtype)
    s = _to_scalar(op.Cast(scale, to=TensorProto.FLOAT))
    zp = _to_scalar(op.Cast(zero_point, to=elem))
    if not _is_full_range(elem, quant_min, quant_max):
        zp_f = op.Cast(zp, to=TensorProto.FLOAT)
        lo = op.Mul(op.Sub(_const(float(quant_min), TensorProto.FLOAT), zp_f), s)
        hi = op.Mul(op.Sub(_const(float(quant_max), TensorProto.FLOAT), zp_f), s)
        x = op.Clip(x, lo, hi)
    return op.QuantizeLinear(x, s, zp)


def dequantize_per_tensor_tensor(
    x: Any, scale: Any, zero_point: Any, quant_min: int, quant_max: int, dtype: Any
) -> Any:
    elem = onnx_elem_type(dtype)
    s = _to_scalar(op.Cast(scale, to=TensorProto.FLOAT))
    return op.DequantizeLinear(x, s, _to_scalar(op.Cast(zero_point, to=elem)))


def translation_table() -> dict[Callable[..., Any], Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export``: every ``torch.ops.quantfx`` op."""
    q = torch.ops.quantfx
    return {
        q.quantize_per_tensor.default: quantize_per_tensor,
        q.dequantize_per_tensor.default: dequantize_per_tensor,
        q.quantize_per_channel.default: quantize_per_channel,
        q.dequantize_per_channel.default: dequantize_per_channel,
        q.choose_qparams_per_tensor.default: choose_qparams_per_tensor,
        q.quantize_per_tensor_tensor.default: quantize_per_tensor_tensor,
        q.dequantize_per_tensor_tensor.default: dequantize_per_tensor_tensor,
    }
