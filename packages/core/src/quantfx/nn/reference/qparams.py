"""``WeightQParams``: how a reference module's weight was quantized.

One immutable record (scheme, dtype, scale, zero point, axis, range) travels
from the weight observer to the reference module and on to every backend's
lowering, so none of them re-derives the range from the dtype and gets
``reduce_range`` / narrow-range weights wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from quantfx.dtypes import dtype_range, normalize_dtype
from quantfx.errors import ValidationError

__all__ = ["WeightQParams", "PER_CHANNEL_QSCHEMES", "FLOAT_WEIGHT_DTYPES"]

PER_CHANNEL_QSCHEMES = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)
_PER_TENSOR_QSCHEMES = (torch.per_tensor_affine, torch.per_tensor_symmetric)
# weight dtypes kept in floating point (fp16 weight-only / dynamic quantization)
FLOAT_WEIGHT_DTYPES = (torch.float16, torch.bfloat16)
_INT_WEIGHT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32)


def _as_tensor(v: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(v, Tensor):
        return v.detach().clone().to(dtype)
    return torch.tensor(v, dtype=dtype)


@dataclass(frozen=True)
class WeightQParams:
    """Quantization parameters of one weight tensor.

    ``scale`` / ``zero_point`` are tensors (0-d per tensor, 1-d per channel);
    ``zero_point`` is float for ``per_channel_affine_float_qparams`` (embeddings),
    integer otherwise. ``axis`` is the channel axis for per-channel schemes, else None.
    For float16 weights (fp16 weight-only / dynamic) ``qscheme`` is None and scale / zero point are 1 / 0.
    """

    qscheme: torch.qscheme | None
    dtype: torch.dtype
    scale: Tensor
    zero_point: Tensor
    axis: int | None = None
    quant_min: int | None = None
    quant_max: int | None = None

    def __post_init__(self) -> None:
        dtype = normalize_dtype(self.dtype)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass normalization)
        set_("dtype", dtype)
        if dtype in FLOAT_WEIGHT_DTYPES:
            set_("qscheme", None)
            set_("scale", _as_tensor(1.0 if self.scale is None else self.scale, torch.float32))
            set_("zero_point", _as_tensor(0 if self.zero_point is None else self.zero_point, torch.int64))
            set_("axis", None)
            set_("quant_min", None)
            set_("quant_max", None)
            return
        if dtype not in _INT_WEIGHT_DTYPES:
            raise ValidationError(
                f"WeightQParams: weight dtype {self.dtype} cannot be stored by a reference module; "
                "expected torch.int8 / torch.uint8 / torch.int32 (or quantized aliases) or torch.float16"
            )
        qscheme = self.qscheme
        if qscheme not in PER_CHANNEL_QSCHEMES + _PER_TENSOR_QSCHEMES:
            raise ValidationError(f"WeightQParams: unsupported qscheme {qscheme} for an integer weight")
        float_zp = qscheme == torch.per_channel_affine_float_qparams
        scale = _as_tensor(self.scale, torch.float32)
        zp = _as_tensor(self.zero_point, torch.float32 if float_zp else torch.int64)
        if qscheme in PER_CHANNEL_QSCHEMES:
            if self.axis is None:
                raise ValidationError(f"WeightQParams: per-channel qscheme {qscheme} needs axis (the observer's ch_axis)")
            scale, zp = scale.reshape(-1), zp.reshape(-1)
            if scale.numel() != zp.numel():
                raise ValidationError(f"WeightQParams: {scale.numel()} scales but {zp.numel()} zero points")
            set_("axis", int(self.axis))
        else:
            if scale.numel() != 1 or zp.numel() != 1:
                raise ValidationError(f"WeightQParams: per-tensor qscheme {qscheme} needs one scale / zero point, got {scale.numel()}")
            scale, zp = scale.reshape(()), zp.reshape(())
            set_("axis", None)
        if not bool(torch.all(scale > 0)) or not bool(torch.all(torch.isfinite(scale))):
            raise ValidationError(f"WeightQParams: scales must be finite and > 0, got {scale}")
        set_("scale", scale)
        set_("zero_point", zp)
        lo, hi = dtype_range(dtype)
        qmin = lo if self.quant_min is None else int(self.quant_min)
        qmax = hi if self.quant_max is None else int(self.quant_max)
        if not lo <= qmin < qmax <= hi:
            raise ValidationError(f"WeightQParams: quant range [{qmin}, {qmax}] does not fit {dtype} [{lo}, {hi}]")
        set_("quant_min", qmin)
        set_("quant_max", qmax)

    @property
    def is_per_channel(self) -> bool:
        return self.qscheme in PER_CHANNEL_QSCHEMES

    @property
    def is_float(self) -> bool:
        """True for float16 weight-only / dynamic configs: the weight is cast, not quantized."""
        return self.dtype in FLOAT_WEIGHT_DTYPES

    @classmethod
    def from_observer(cls, obs: Any) -> "WeightQParams":
        """Read the qparams an observer / fake-quant computed (calls ``obs.calculate_qparams()``)."""
        dtype = normalize_dtype(getattr(obs, "dtype", None))
        if dtype in FLOAT_WEIGHT_DTYPES:
            return cls(None, dtype, torch.tensor(1.0), torch.tensor(0))
        if dtype not in _INT_WEIGHT_DTYPES:
            raise ValidationError(
                f"WeightQParams.from_observer: {type(obs).__name__} has dtype {getattr(obs, 'dtype', None)}; a weight "
                "observer must produce an integer dtype (int8 / uint8) or float16"
            )
        scale, zero_point = obs.calculate_qparams()
        qscheme = getattr(obs, "qscheme", torch.per_tensor_affine)
        axis = getattr(obs, "ch_axis", None) if qscheme in PER_CHANNEL_QSCHEMES else None
        return cls(
            qscheme=qscheme,
            dtype=dtype,
            scale=scale,
            zero_point=zero_point,
            axis=axis,
            quant_min=getattr(obs, "quant_min", None),
            quant_max=getattr(obs, "quant_max", None),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WeightQParams":
        """From a torch.ao-style ``weight_qparams`` dict (qscheme, dtype, scale, zero_point, axis, quant_min, quant_max)."""
        return cls(
            qscheme=d.get("qscheme", torch.per_tensor_affine),
            dtype=d["dtype"],
            scale=d.get("scale", 1.0),
            zero_point=d.get("zero_point", 0),
            axis=d.get("axis"),
            quant_min=d.get("quant_min"),
            quant_max=d.get("quant_max"),
        )

    def to_dict(self) -> dict[str, Any]:
        """torch.ao-style ``weight_qparams`` dict (plain dtypes)."""
        return {
            "qscheme": self.qscheme,
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
            "axis": self.axis,
            "quant_min": self.quant_min,
            "quant_max": self.quant_max,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WeightQParams):
            return NotImplemented
        return (
            self.qscheme == other.qscheme
            and self.dtype == other.dtype
            and self.axis == other.axis
            and self.quant_min == other.quant_min
            and self.quant_max == other.quant_max
            and torch.equal(self.scale, other.scale)
            and torch.equal(self.zero_point, other.zero_point)
        )

    __hash__ = None  # type: ignore[assignment]  # holds tensors
