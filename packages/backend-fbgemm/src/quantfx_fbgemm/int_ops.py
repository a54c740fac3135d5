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
* :class:`DynamicLinear`: dynamic int8 Linear (FBGEMM's fused kernel, oneDNN as the fallback).
"""

from __future__ import annotations

import struct
from functools import lru_cache
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
    "dynamic_quantize",
    "DynamicLinear",
]


@lru_cache(maxsize=4096)
def _inv(scale: float) -> float:
    # float32 reciprocal, as quantfx.ops.quantize_per_tensor computes it; a Python float holding a
    # float32 value multiplies a float32 tensor exactly as the 0-dim float32 tensor would
    return float(torch.reciprocal(torch.tensor(scale, dtype=torch.float32)))


# Adding 1.5 * 2**23 to a float32 v with |v| < 2**22 lands in [2**23, 2**24), where the spacing is 1:
# the addition itself rounds v to an integer, half to even (torch.round's rule), and the low mantissa
# bits of the sum, read as int32, are that integer + _MAGIC_BITS. This replaces round + a slow
# float -> int cast (torch 2.13's float -> uint8 copy is not vectorised) by an add and a free view:
# 2.3x faster on 1M values (bench: 411 us vs 951 us).
_MAGIC = 12582912.0
_MAGIC_BITS = 0x4B400000


def _quantize_i32(x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int) -> Tensor:
    """``clamp(round(x * (1/scale)) + zero_point, quant_min, quant_max)`` as an int32 tensor (x's layout).

    Bit-exact with ``quantfx.ops.quantize_per_tensor``: the same float32 product, and
    clamping before rounding to the integer bounds ``quant_min - zp``, ``quant_max - zp``
    equals clamping after it (rounding is monotone and integers are its fixed points).
    """
    y = torch.mul(x.float(), _inv(scale))
    y.clamp_(quant_min - zero_point, quant_max - zero_point).add_(_MAGIC)
    return y.view(torch.int32).sub_(_MAGIC_BITS - zero_point)


def _quantize_u8(x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int) -> Tensor:
    """:func:`_quantize_i32` straight to uint8 (x's layout), one int32 pass fewer.

    The int32 bits are ``_MAGIC_BITS + round(v)`` and ``_MAGIC_BITS`` ends in a zero
    byte, so the (modular) cast to uint8 keeps ``round(v) mod 256``; adding the zero
    point in uint8 (also modular) lands on the clamped value, which is in 0..255.
    A zero point of 0 (e.g. after a ReLU) skips that pass.
    """
    y = torch.mul(x.float(), _inv(scale))
    y.clamp_(quant_min - zero_point, quant_max - zero_point).add_(_MAGIC)
    q = y.view(torch.int32).to(torch.uint8)
    return q.add_(zero_point) if zero_point else q


def _q(y: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    # elementwise ops and casts keep y's layout (channels-last stays so)
    if dtype == torch.uint8:
        return _quantize_u8(y, scale, zero_point, quant_min, quant_max)
    return _quantize_i32(y, scale, zero_point, quant_min, quant_max).to(dtype)


def quantize_in(x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    """Region entry: float -> integer (bit-exact with ``torch.ops.quantfx.quantize_per_tensor``).

    4-D tensors come out channels-last, the layout the conv kernels want (reordered
    while 4 bytes wide: torch's uint8 NCHW -> NHWC copy of a 3-channel image is ~3x slower).
    """
    q = _quantize_i32(x, scale, zero_point, quant_min, quant_max)
    if q.dim() == 4:
        q = q.contiguous(memory_format=torch.channels_last)
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


#: torch.ops.quantized.max_pool2d has a CPU kernel for plain uint8 tensors (no quantized dtype involved);
#: should a torch build drop it, max pooling falls back to a float copy.
_HAS_UINT8_MAX_POOL = hasattr(torch.ops.quantized, "max_pool2d")


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(a) for a in v]


def max_int(q: Tensor, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """Max pooling of an integer tensor (same qparams in and out; the max of integers is exact).

    2-D pooling of a 4-D uint8 tensor runs ``torch.ops.quantized.max_pool2d``
    on the plain tensor: the uint8 kernel torch's own x86 int8 compilation
    (inductor) uses, channels-last in and out, ~5-10x faster than pooling a
    float copy (measured: 64x112x112, 3x3/2, 1 thread: 145 us vs 717 us).
    Everything else pools a float32 copy: torch's generic uint8 max pooling
    is a slow scalar loop and rejects channels-last input (torch 2.13).
    """
    if op == "max_pool2d" and q.dim() == 4 and q.dtype == torch.uint8 and _HAS_UINT8_MAX_POOL:
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
        p = dict(zip(names, args))
        p.update({k: v for k, v in kwargs.items() if k in names})
        k = _pair(p["kernel_size"])
        stride = p.get("stride")
        s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride)
        return torch.ops.quantized.max_pool2d(
            q, k, s, _pair(p.get("padding", 0)), _pair(p.get("dilation", 1)), bool(p.get("ceil_mode", False))
        )
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


def _f32(v: float) -> float:
    """Round a Python float to the nearest float32 (IEEE: a float32 op computed in double and rounded once
    equals the float32 op, so chains of these reproduce torch's float32 arithmetic exactly)."""
    return struct.unpack("f", struct.pack("f", v))[0]


_F32_EPS = float(torch.finfo(torch.float32).eps)


def dynamic_quantize(x: Tensor, quant_min: int, quant_max: int, eps: float) -> tuple[Tensor, float, int]:
    """Dynamic quantization of a float tensor with its own range: ``(uint8 tensor, scale, zero point)``.

    Same float32 arithmetic as ``quantfx.ops.choose_qparams_per_tensor`` followed by
    ``quantize_per_tensor_tensor`` (the reference IR's dynamic chain), in one min/max
    pass plus one quantize pass. A lowered graph computes it once per tensor and
    hands the result to every :class:`DynamicLinear` reading that tensor (q / k / v
    projections share one).
    """
    mn_t, mx_t = torch.aminmax(x)
    mn, mx = min(float(mn_t), 0.0), max(float(mx_t), 0.0)
    scale = max(_f32(_f32(mx - mn) / float(quant_max - quant_min)), _f32(eps))
    zero_point = int(min(max(quant_min - round(_f32(mn / scale)), quant_min), quant_max))
    q = _quantize_u8(x, scale, zero_point, quant_min, quant_max)
    return (q if q.is_contiguous() else q.contiguous()), scale, zero_point


class DynamicLinear(nn.Module):
    """Dynamic int8 Linear: float in, per-call uint8 activation qparams, int8 GEMM, float out.

    Two routes, chosen by what the graph feeds it:

    * a float tensor: FBGEMM's ``quantized::linear_dynamic`` (or
      ``linear_relu_dynamic``), which quantizes the activation inside the GEMM
      (min/max, ``reduce_range``: 0..127 else 0..255), when
      :func:`kernels.fbgemm_dynamic_available`; otherwise (a torch without the
      quantized ops / dtypes) :func:`dynamic_quantize` + the oneDNN kernel;
    * the ``(uint8, scale, zero_point)`` triple of :func:`dynamic_quantize`:
      the oneDNN kernel (``onednn.qlinear_pointwise``) on that tensor, so several
      linears reading one tensor quantize it once.

    A ReLU after the linear runs in the kernel's epilogue either way.
    """

    def __init__(self, linear: kernels.PackedLinear, reduce_range: bool) -> None:
        super().__init__()
        self.linear = linear
        self.reduce_range = bool(reduce_range)

    def forward(self, x: Tensor | tuple[Tensor, float, int]) -> Tensor:
        if isinstance(x, Tensor):
            lin = self.linear
            packed = getattr(lin, "_packed_fbgemm", None)
            if packed is not None and x.dtype == torch.float32 and lin.output_dtype == torch.float32:
                # hot path (16 calls per forward of the 4-block bench encoder): the kernel straight away, ~1.5 us less per call
                op = torch.ops.quantized.linear_relu_dynamic if lin.post_op.name == "relu" else torch.ops.quantized.linear_dynamic
                return op(x, packed, self.reduce_range)
            if kernels.fbgemm_dynamic_available():
                return lin.forward_dynamic_fbgemm(x, self.reduce_range)
            qmin, qmax = kernels.activation_quant_range(self.reduce_range)
            x = dynamic_quantize(x, qmin, qmax, _F32_EPS)
        return self.linear.forward_prequantized(*x)

    def extra_repr(self) -> str:
        return f"reduce_range={self.reduce_range}"
