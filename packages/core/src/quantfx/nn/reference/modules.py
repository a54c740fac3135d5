"""Reference quantized modules: the integer weight + its qparams, run as dequantize -> float op.

They are the weighted ops of quantfx's reference IR. Unlike torch.ao's
reference modules (float weight, quantized on every forward), they *store*
the integer weight (``weight_int``), so a backend's lowering reads exactly the
integers the reference numerics used, and a saved reference model carries no
float weight. ``forward`` dequantizes with ``torch.ops.quantfx`` and calls the
float functional op, which is the numerics every backend must match.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import quantfx.nn.qat.modules as nnqat
import quantfx.ops  # noqa: F401  (registers torch.ops.quantfx.*)
from quantfx.errors import ValidationError
from quantfx.nn.reference.qparams import FLOAT_WEIGHT_DTYPES, WeightQParams

__all__ = [
    "ReferenceQuantizedModule",
    "Linear",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Embedding",
    "EmbeddingBag",
    "quantize_weight",
    "dequantize_weight",
]

_QSCHEME_NAMES = {
    torch.per_tensor_affine: "per_tensor_affine",
    torch.per_tensor_symmetric: "per_tensor_symmetric",
    torch.per_channel_affine: "per_channel_affine",
    torch.per_channel_symmetric: "per_channel_symmetric",
    torch.per_channel_affine_float_qparams: "per_channel_affine_float_qparams",
}
_QSCHEME_BY_NAME = {v: k for k, v in _QSCHEME_NAMES.items()}
_DTYPE_BY_NAME = {str(d).removeprefix("torch."): d for d in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)}


def _float_qparams_quantize(w: Tensor, qp: WeightQParams) -> Tensor:
    # per_channel_affine_float_qparams: q = round(w / s + zp), zp is a float (torch.ao's embedding scheme);
    # quantfx.ops stores integer zero points only, so this scheme is computed here.
    shape = [1] * w.dim()
    shape[qp.axis % w.dim()] = -1
    inv = 1.0 / qp.scale.reshape(shape)
    q = torch.round(w.float() * inv + qp.zero_point.reshape(shape))
    return torch.clamp(q, qp.quant_min, qp.quant_max).to(qp.dtype)


def quantize_weight(weight: Tensor, qp: WeightQParams) -> Tensor:
    """Integer (or fp16) weight for ``qp``, via ``torch.ops.quantfx`` quantize ops."""
    w = weight.detach()
    if qp.is_float:
        return w.to(qp.dtype)
    if qp.qscheme == torch.per_channel_affine_float_qparams:
        return _float_qparams_quantize(w, qp)
    if qp.is_per_channel:
        return torch.ops.quantfx.quantize_per_channel(
            w.float(), qp.scale, qp.zero_point, qp.axis, qp.quant_min, qp.quant_max, qp.dtype
        )
    return torch.ops.quantfx.quantize_per_tensor(
        w.float(), float(qp.scale), int(qp.zero_point), qp.quant_min, qp.quant_max, qp.dtype
    )


def dequantize_weight(weight_int: Tensor, qp: WeightQParams) -> Tensor:
    """Float weight from the stored integers (the inverse of :func:`quantize_weight`, up to rounding)."""
    if qp.is_float:
        return weight_int.float()
    if qp.qscheme == torch.per_channel_affine_float_qparams:
        shape = [1] * weight_int.dim()
        shape[qp.axis % weight_int.dim()] = -1
        return (weight_int.float() - qp.zero_point.reshape(shape)) * qp.scale.reshape(shape)
    if qp.is_per_channel:
        return torch.ops.quantfx.dequantize_per_channel(
            weight_int, qp.scale, qp.zero_point, qp.axis, qp.quant_min, qp.quant_max, qp.dtype
        )
    return torch.ops.quantfx.dequantize_per_tensor(
        weight_int, float(qp.scale), int(qp.zero_point), qp.quant_min, qp.quant_max, qp.dtype
    )


def _coerce_qparams(weight_qparams: WeightQParams | dict[str, Any] | None) -> WeightQParams:
    if isinstance(weight_qparams, WeightQParams):
        return weight_qparams
    if isinstance(weight_qparams, dict):
        return WeightQParams.from_dict(weight_qparams)
    if weight_qparams is None:
        raise ValidationError(
            "a reference quantized module needs weight_qparams: pass WeightQParams.from_observer(weight_observer)"
        )
    raise ValidationError(f"weight_qparams must be WeightQParams or a dict, got {type(weight_qparams).__name__}")


class ReferenceQuantizedModule(nn.Module):
    """Holds ``weight_int`` + qparams buffers; subclasses add the float op in ``forward``.

    Buffers: ``weight_int`` (int8 / uint8 / int32, or float16), ``weight_scale``,
    ``weight_zero_point``. Attributes: ``weight_qscheme``, ``weight_dtype``,
    ``weight_axis`` (int or None), ``weight_quant_min``, ``weight_quant_max``.
    The attributes also travel in the state dict (``_extra_state``) so that
    ``load_state_dict`` restores a module quantized with different qparams.
    """

    _IS_REFERENCE: ClassVar[bool] = True
    _FLOAT_TYPES: ClassVar[tuple[type[nn.Module], ...]] = ()
    weight_int: Tensor
    weight_scale: Tensor
    weight_zero_point: Tensor

    def _init_weight(self, weight: Tensor, weight_qparams: WeightQParams | dict[str, Any] | None) -> None:
        qp = _coerce_qparams(weight_qparams)
        if qp.is_per_channel and not -weight.dim() <= qp.axis < weight.dim():
            raise ValidationError(f"{self._get_name()}: weight axis {qp.axis} out of range for a {weight.dim()}-d weight")
        if qp.is_per_channel and qp.scale.numel() != weight.shape[qp.axis]:
            raise ValidationError(
                f"{self._get_name()}: {qp.scale.numel()} per-channel scales for weight axis {qp.axis} of size {weight.shape[qp.axis]}"
            )
        self._set_qparams_attrs(qp)
        self.register_buffer("weight_int", quantize_weight(weight, qp).to(weight.device))
        self.register_buffer("weight_scale", qp.scale.to(weight.device))
        self.register_buffer("weight_zero_point", qp.zero_point.to(weight.device))
        self._refresh_scalar_qparams()

    def _set_qparams_attrs(self, qp: WeightQParams) -> None:
        self.weight_qscheme: torch.qscheme | None = qp.qscheme
        self.weight_dtype: torch.dtype = qp.dtype
        self.weight_axis: int | None = qp.axis
        self.weight_quant_min: int | None = qp.quant_min
        self.weight_quant_max: int | None = qp.quant_max

    @property
    def weight_qparams(self) -> WeightQParams:
        """The weight's qparams as one record (for lowerings)."""
        return WeightQParams(
            self.weight_qscheme,
            self.weight_dtype,
            self.weight_scale.cpu(),
            self.weight_zero_point.cpu(),
            self.weight_axis,
            self.weight_quant_min,
            self.weight_quant_max,
        )

    def get_quantized_weight(self) -> Tensor:
        """The stored integer weight (float16 for fp16 weight-only)."""
        return self.weight_int

    def get_weight(self) -> Tensor:
        """The dequantized float weight the reference numerics use."""
        if self.weight_dtype in FLOAT_WEIGHT_DTYPES:
            return self.weight_int.float()
        if self.weight_qscheme == torch.per_channel_affine_float_qparams:
            shape = [1] * self.weight_int.dim()
            shape[self.weight_axis % self.weight_int.dim()] = -1
            return (self.weight_int.float() - self.weight_zero_point.reshape(shape)) * self.weight_scale.reshape(shape)
        if self.weight_axis is not None:
            return torch.ops.quantfx.dequantize_per_channel(
                self.weight_int, self.weight_scale, self.weight_zero_point, self.weight_axis,
                self.weight_quant_min, self.weight_quant_max, self.weight_dtype,
            )
        return torch.ops.quantfx.dequantize_per_tensor(
            self.weight_int, self._scale_f, self._zp_i, self.weight_quant_min, self.weight_quant_max, self.weight_dtype
        )

    @property
    def weight(self) -> Tensor:
        """Dequantized weight, so code reading ``mod.weight`` (shapes, analysis) keeps working."""
        return self.get_weight()

    def _refresh_scalar_qparams(self) -> None:
        # per-tensor scale / zero point as Python numbers: they appear as constants in traced /
        # exported graphs (the reference IR's per-tensor form) instead of data-dependent .item() calls
        per_tensor = self.weight_axis is None and self.weight_scale.numel() == 1
        self._scale_f: float = float(self.weight_scale) if per_tensor else 1.0
        self._zp_i: int = int(self.weight_zero_point) if per_tensor else 0

    # -- serialization: qparam attributes ride along as plain str / int extra state (weights_only-safe)
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "weight_qscheme": _QSCHEME_NAMES.get(self.weight_qscheme, None),
            "weight_dtype": str(self.weight_dtype).removeprefix("torch."),
            "weight_axis": self.weight_axis,
            "weight_quant_min": self.weight_quant_min,
            "weight_quant_max": self.weight_quant_max,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.weight_qscheme = _QSCHEME_BY_NAME.get(state.get("weight_qscheme"), None)
        self.weight_dtype = _DTYPE_BY_NAME[state["weight_dtype"]]
        self.weight_axis = state.get("weight_axis")
        self.weight_quant_min = state.get("weight_quant_min")
        self.weight_quant_max = state.get("weight_quant_max")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # the incoming qparams may have other shapes / dtypes (per-tensor vs per-channel): adopt them
        for name in ("weight_int", "weight_scale", "weight_zero_point"):
            key = prefix + name
            if key in state_dict and isinstance(state_dict[key], Tensor):
                cur = getattr(self, name)
                incoming = state_dict[key]
                if cur.shape != incoming.shape or cur.dtype != incoming.dtype:
                    setattr(self, name, torch.empty_like(incoming, device=cur.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._refresh_scalar_qparams()

    def _qparams_repr(self) -> str:
        if self.weight_dtype in FLOAT_WEIGHT_DTYPES:
            return f"weight_dtype={self.weight_dtype}"
        qs = _QSCHEME_NAMES.get(self.weight_qscheme, str(self.weight_qscheme))
        s = f"weight_dtype={self.weight_dtype}, weight_qscheme={qs}, weight_quant_range=[{self.weight_quant_min}, {self.weight_quant_max}]"
        if self.weight_axis is None:
            s += f", weight_scale={self._scale_f:.6g}, weight_zero_point={self._zp_i}"
        else:
            s += f", weight_axis={self.weight_axis}, weight_scale=<{self.weight_scale.numel()} per channel>"
        return s

    @classmethod
    def _check_float(cls, mod: nn.Module) -> None:
        if type(mod) not in cls._FLOAT_TYPES:
            raise ValidationError(
                f"reference {cls.__name__}.from_float converts {' / '.join(t.__module__ + '.' + t.__name__ for t in cls._FLOAT_TYPES)}, "
                f"got {type(mod).__module__}.{type(mod).__name__}; unwrap fused modules / call to_float() on QAT modules first"
            )


def _copy_bias(dst: nn.Module, src_bias: Tensor | None) -> None:
    if src_bias is None:
        dst.register_parameter("bias", None)
    else:
        dst.bias = nn.Parameter(src_bias.detach().clone(), requires_grad=False)


class Linear(ReferenceQuantizedModule):
    """Reference quantized Linear: ``F.linear(x, dequantize(weight_int), bias)``."""

    _FLOAT_TYPES = (nn.Linear, nnqat.Linear)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_qparams: WeightQParams | dict[str, Any] | None = None,
        device: torch.device | None = None,
        weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        w = weight if weight is not None else torch.zeros(out_features, in_features, device=device)
        self._init_weight(w, weight_qparams)
        _copy_bias(self, torch.zeros(out_features, device=device) if bias else None)

    def _get_name(self) -> str:
        return "QuantizedLinear(Reference)"

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.get_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {self._qparams_repr()}"

    @classmethod
    def from_float(cls, mod: nn.Module, weight_qparams: WeightQParams | dict[str, Any]) -> "Linear":
        """Quantize ``mod.weight`` with ``weight_qparams``; the bias stays float."""
        cls._check_float(mod)
        ref = cls(mod.in_features, mod.out_features, mod.bias is not None, weight_qparams, weight=mod.weight)
        _copy_bias(ref, mod.bias)
        return ref


class _ConvNd(ReferenceQuantizedModule):
    _FLOAT_CONV: ClassVar[type[nn.modules.conv._ConvNd]]
    _F: ClassVar[Any]
    _NDIM: ClassVar[int]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        weight_qparams: WeightQParams | dict[str, Any] | None = None,
        device: torch.device | None = None,
        weight: Tensor | None = None,
        output_padding: Any = 0,
    ) -> None:
        super().__init__()
        # borrow nn.ConvNd's argument normalization (tuples, 'same' padding, padding_mode checks)
        proto = self._prototype(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode, output_padding)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "transposed", "output_padding", "_reversed_padding_repeated_twice"):
            setattr(self, name, getattr(proto, name))
        w = weight if weight is not None else torch.zeros(proto.weight.shape, device=device)
        if tuple(w.shape) != tuple(proto.weight.shape):
            raise ValidationError(f"{self._get_name()}: weight shape {tuple(w.shape)} != expected {tuple(proto.weight.shape)}")
        self._init_weight(w, weight_qparams)
        _copy_bias(self, torch.zeros(out_channels, device=device) if bias else None)

    def _prototype(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode, output_padding):
        with torch.device("meta"):
            return self._FLOAT_CONV(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, False, padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        return self._FLOAT_CONV._conv_forward(self, x, self.get_weight(), self.bias)  # type: ignore[arg-type]

    def _get_name(self) -> str:
        return f"Quantized{self._FLOAT_CONV.__name__}(Reference)"

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * len(self.kernel_size):
            s += f", padding={self.padding}"
        if self.dilation != (1,) * len(self.kernel_size):
            s += f", dilation={self.dilation}"
        if self.transposed and self.output_padding != (0,) * len(self.kernel_size):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + ", " + self._qparams_repr()

    @classmethod
    def from_float(cls, mod: nn.Module, weight_qparams: WeightQParams | dict[str, Any]) -> "_ConvNd":
        """Quantize ``mod.weight`` with ``weight_qparams``; the bias stays float."""
        cls._check_float(mod)
        ref = cls(
            mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.groups,
            mod.bias is not None, mod.padding_mode, weight_qparams, weight=mod.weight,
            output_padding=getattr(mod, "output_padding", 0),
        )
        _copy_bias(ref, mod.bias)
        return ref


class Conv1d(_ConvNd):
    """Reference quantized Conv1d: ``conv1d(x, dequantize(weight_int), bias)``."""

    _FLOAT_CONV = nn.Conv1d
    _FLOAT_TYPES = (nn.Conv1d, nnqat.Conv1d)


class Conv2d(_ConvNd):
    """Reference quantized Conv2d: ``conv2d(x, dequantize(weight_int), bias)``."""

    _FLOAT_CONV = nn.Conv2d
    _FLOAT_TYPES = (nn.Conv2d, nnqat.Conv2d)


class Conv3d(_ConvNd):
    """Reference quantized Conv3d: ``conv3d(x, dequantize(weight_int), bias)``."""

    _FLOAT_CONV = nn.Conv3d
    _FLOAT_TYPES = (nn.Conv3d, nnqat.Conv3d)


class _ConvTransposeNd(_ConvNd):
    _F: ClassVar[Any]
    _NDIM: ClassVar[int]

    def _prototype(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode, output_padding):
        with torch.device("meta"):
            return self._FLOAT_CONV(
                in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, False, dilation, padding_mode
            )

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        output_padding = self._FLOAT_CONV._output_padding(
            self, x, output_size, self.stride, self.padding, self.kernel_size, self._NDIM, self.dilation  # type: ignore[arg-type]
        )
        return type(self)._F(x, self.get_weight(), self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation)


class ConvTranspose1d(_ConvTransposeNd):
    """Reference quantized ConvTranspose1d."""

    _FLOAT_CONV = nn.ConvTranspose1d
    _FLOAT_TYPES = (nn.ConvTranspose1d,)
    _F = staticmethod(F.conv_transpose1d)
    _NDIM = 1


class ConvTranspose2d(_ConvTransposeNd):
    """Reference quantized ConvTranspose2d."""

    _FLOAT_CONV = nn.ConvTranspose2d
    _FLOAT_TYPES = (nn.ConvTranspose2d,)
    _F = staticmethod(F.conv_transpose2d)
    _NDIM = 2


class ConvTranspose3d(_ConvTransposeNd):
    """Reference quantized ConvTranspose3d."""

    _FLOAT_CONV = nn.ConvTranspose3d
    _FLOAT_TYPES = (nn.ConvTranspose3d,)
    _F = staticmethod(F.conv_transpose3d)
    _NDIM = 3


class Embedding(ReferenceQuantizedModule):
    """Reference quantized Embedding: row lookup in the dequantized table."""

    _FLOAT_TYPES = (nn.Embedding, nnqat.Embedding)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        weight_qparams: WeightQParams | dict[str, Any] | None = None,
        device: torch.device | None = None,
        weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        if padding_idx is not None and padding_idx < 0:
            padding_idx = num_embeddings + padding_idx
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        w = weight if weight is not None else torch.zeros(num_embeddings, embedding_dim, device=device)
        self._init_weight(w, weight_qparams)

    def _get_name(self) -> str:
        return "QuantizedEmbedding(Reference)"

    def forward(self, input: Tensor) -> Tensor:
        # get_weight() is a fresh tensor, so max_norm's in-place renorm never touches weight_int
        return F.embedding(input, self.get_weight(), self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, {self._qparams_repr()}"

    @classmethod
    def from_float(cls, mod: nn.Module, weight_qparams: WeightQParams | dict[str, Any]) -> "Embedding":
        cls._check_float(mod)
        return cls(
            mod.num_embeddings, mod.embedding_dim, mod.padding_idx, mod.max_norm, mod.norm_type,
            mod.scale_grad_by_freq, mod.sparse, weight_qparams, weight=mod.weight,
        )


class EmbeddingBag(ReferenceQuantizedModule):
    """Reference quantized EmbeddingBag: bag reduction over the dequantized table."""

    _FLOAT_TYPES = (nn.EmbeddingBag, nnqat.EmbeddingBag)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        weight_qparams: WeightQParams | dict[str, Any] | None = None,
        device: torch.device | None = None,
        weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        if padding_idx is not None and padding_idx < 0:
            padding_idx = num_embeddings + padding_idx
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.max_norm, self.norm_type, self.scale_grad_by_freq = max_norm, norm_type, scale_grad_by_freq
        self.mode, self.sparse, self.include_last_offset, self.padding_idx = mode, sparse, include_last_offset, padding_idx
        w = weight if weight is not None else torch.zeros(num_embeddings, embedding_dim, device=device)
        self._init_weight(w, weight_qparams)

    def _get_name(self) -> str:
        return "QuantizedEmbeddingBag(Reference)"

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        return F.embedding_bag(
            input, self.get_weight(), offsets, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.mode,
            self.sparse, per_sample_weights, self.include_last_offset, self.padding_idx,
        )

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}, {self._qparams_repr()}"

    @classmethod
    def from_float(cls, mod: nn.Module, weight_qparams: WeightQParams | dict[str, Any]) -> "EmbeddingBag":
        cls._check_float(mod)
        return cls(
            mod.num_embeddings, mod.embedding_dim, mod.max_norm, mod.norm_type, mod.scale_grad_by_freq, mod.mode,
            mod.sparse, mod.include_last_offset, mod.padding_idx, weight_qparams, weight=mod.weight,
        )
