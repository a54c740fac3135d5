"""The small integer-domain ops a lowered fbgemm / x86 graph calls between the packed kernels.

Everything works on plain ``torch.uint8`` tensors with explicit qparams, like
:mod:`quantfx_fbgemm.kernels`. Functions here are referenced by lowered
graphs by qualified name, so the artifact format (``quantfx_fbgemm.artifact``)
can rebuild a graph without unpickling code: keep their names stable.

* region entry / exit: :func:`quantize_in`, :func:`dequantize_out`;
* binary ops: :func:`add_int`, :func:`mul_int` (float arithmetic on the integer
  values, as torch.ao's quantized add does internally);
* :func:`cat_int` (requantizes only inputs whose qparams differ);
* :func:`avg_int` (pooling / mean on the integers, rounded to the output qparams);
* :class:`Lookup`: any elementwise op of one uint8 tensor as a 256-entry table,
  bit-exact with the reference (hardswish, sigmoid, tanh, ``x * 0.35`` ...);
* :class:`DynamicLinear`: dynamic int8 Linear on the oneDNN kernel.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantfx_fbgemm import kernels

__all__ = [
    "quantize_in",
    "dequantize_out",
    "requant",
    "add_int",
    "mul_int",
    "cat_int",
    "avg_int",
    "max_int",
    "Lookup",
    "DynamicLinear",
]


def _q(y: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    # same arithmetic as quantfx.ops.quantize_per_tensor: float32 inverse scale, round half to even
    inv = torch.reciprocal(torch.tensor(scale, dtype=torch.float32))
    q = torch.round(y.float() * inv).add_(zero_point).clamp_(quant_min, quant_max)
    if y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        return q.to(dtype, memory_format=torch.channels_last)
    return q.to(dtype)


def quantize_in(x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    """Region entry: float -> integer (bit-exact with ``torch.ops.quantfx.quantize_per_tensor``).

    4-D tensors come out channels-last, the layout the conv kernels want.
    """
    inv = torch.reciprocal(torch.tensor(scale, dtype=torch.float32))
    q = torch.round(x.float() * inv).add_(zero_point).clamp_(quant_min, quant_max)
    if q.dim() == 4:
        return q.to(dtype, memory_format=torch.channels_last)
    return q.to(dtype)


def dequantize_out(q: Tensor, scale: float, zero_point: int) -> Tensor:
    """Region exit: integer -> float32, contiguous (so float code after it may ``.view``)."""
    out = torch.empty(q.shape, dtype=torch.float32)
    out.copy_(q)
    return out.sub_(zero_point).mul_(scale)


def requant(q: Tensor, in_scale: float, in_zp: int, scale: float, zero_point: int, quant_min: int, quant_max: int,
            dtype: torch.dtype) -> Tensor:
    """Re-express an integer tensor in other qparams (identity when they match)."""
    if in_scale == scale and in_zp == zero_point and q.dtype == dtype and quant_min <= 0 and quant_max >= 255:
        return q
    return _q((q.float() - in_zp) * in_scale, scale, zero_point, quant_min, quant_max, dtype)


def _deq(q: Tensor, scale: float, zero_point: int) -> Tensor:
    return (q.float() - zero_point) * scale


def add_int(a: Tensor, a_scale: float, a_zp: int, b: Tensor, b_scale: float, b_zp: int, scale: float,
            zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype, relu: bool = False) -> Tensor:
    """``quantize(relu?(dequantize(a) + dequantize(b)))`` in one pass per operand (broadcasting)."""
    y = _deq(a, a_scale, a_zp) + _deq(b, b_scale, b_zp)
    if relu:
        y = F.relu_(y)
    return _q(y, scale, zero_point, quant_min, quant_max, dtype)


def mul_int(a: Tensor, a_scale: float, a_zp: int, b: Tensor, b_scale: float, b_zp: int, scale: float,
            zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype, relu: bool = False) -> Tensor:
    """``quantize(relu?(dequantize(a) * dequantize(b)))`` (broadcasting)."""
    y = _deq(a, a_scale, a_zp) * _deq(b, b_scale, b_zp)
    if relu:
        y = F.relu_(y)
    return _q(y, scale, zero_point, quant_min, quant_max, dtype)


def cat_int(tensors: list[Tensor], dim: int, qparams: list[tuple[float, int]], scale: float, zero_point: int,
            quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    """``torch.cat`` of integer tensors; inputs already in the output qparams are not touched."""
    parts = [requant(t, s, z, scale, zero_point, quant_min, quant_max, dtype) for t, (s, z) in zip(tensors, qparams)]
    return torch.cat(parts, dim)


_AVG_FNS: dict[str, Callable[..., Tensor]] = {
    "avg_pool1d": F.avg_pool1d,
    "avg_pool2d": F.avg_pool2d,
    "avg_pool3d": F.avg_pool3d,
    "adaptive_avg_pool1d": F.adaptive_avg_pool1d,
    "adaptive_avg_pool2d": F.adaptive_avg_pool2d,
    "adaptive_avg_pool3d": F.adaptive_avg_pool3d,
    "mean": torch.mean,
}

_MAX_FNS: dict[str, Callable[..., Tensor]] = {
    "max_pool1d": F.max_pool1d,
    "max_pool2d": F.max_pool2d,
    "max_pool3d": F.max_pool3d,
}


def max_int(q: Tensor, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """Max pooling of an integer tensor (same qparams in and out).

    Computed on a float32 copy: the max of integers is exact in float, and
    torch's uint8 max pooling is slow (scalar NCHW loop) and fails on
    channels-last input (torch 2.13).
    """
    return _MAX_FNS[op](q.float(), *args, **kwargs).to(q.dtype)


def avg_int(q: Tensor, op: str, args: tuple[Any, ...], kwargs: dict[str, Any], in_scale: float, in_zp: int,
            scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    """Averaging ops (avg / adaptive-avg pooling, mean) of an integer tensor, requantized to the output qparams.

    Runs the same float32 steps as the reference (``dequantize -> op ->
    quantize``) in one function, so results match it bit for bit (rounding
    ties included) without separate graph nodes. The dequantized copy is
    contiguous (as in the reference) so reductions sum in the same order.
    """
    y = _AVG_FNS[op](dequantize_out(q, in_scale, in_zp), *args, **kwargs)
    return _q(y, scale, zero_point, quant_min, quant_max, dtype)



class Lookup(nn.Module):
    """An elementwise op of one uint8 tensor as a 256-entry uint8 table.

    The table is the reference computation ``quantize(op(dequantize(v)))``
    evaluated on all 256 input values, so the result is bit-exact with the
    reference IR whatever the op (hardswish, sigmoid, tanh, leaky_relu,
    ``x * c``, ``x + c``, clamps ...), in one gather pass.
    """

    table: Tensor

    def __init__(self, table: Tensor, op_name: str = "") -> None:
        super().__init__()
        if table.dtype != torch.uint8 or table.numel() != 256:
            raise ValueError(f"Lookup table must be 256 uint8 values, got {table.numel()} {table.dtype}")
        self.register_buffer("table", table.contiguous())
        self.op_name = op_name

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"Lookup ({self.op_name}) input must be torch.uint8, got {x.dtype}")
        if x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
            out = torch.empty_like(x)  # same layout: gather over the raw storage order
            n = x.numel()
            torch.index_select(self.table, 0, x.as_strided((n,), (1,)).int(), out=out.as_strided((n,), (1,)))
            return out
        return self.table.index_select(0, x.reshape(-1).int()).view(x.shape)

    def extra_repr(self) -> str:
        return self.op_name


class DynamicLinear(nn.Module):
    """Dynamic int8 Linear: float in, per-call uint8 qparams, oneDNN int8 GEMM, float out.

    ``reduce_range`` (7-bit activations) follows the kernels' ISA, as torch.ao's
    fbgemm dynamic linear does internally.
    """

    def __init__(self, linear: kernels.PackedLinear, reduce_range: bool) -> None:
        super().__init__()
        self.linear = linear
        self.reduce_range = bool(reduce_range)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear.forward_dynamic(x.contiguous(), reduce_range=self.reduce_range)

    def extra_repr(self) -> str:
        return f"reduce_range={self.reduce_range}"
