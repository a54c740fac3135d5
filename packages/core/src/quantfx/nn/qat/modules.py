"""QAT modules: float modules whose weight passes through ``weight_fake_quant`` in forward.

prepare_qat swaps ``nn.Linear`` / ``nn.Conv2d`` / ... for these so training sees
the weight rounding it will get after convert. The fake-quant module comes from
``qconfig.weight()``; quantfx passes the qconfig to ``from_float`` explicitly
(falling back to ``mod.qconfig`` for code written against torch.ao).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair, _single, _triple
from torch.nn.utils.parametrize import is_parametrized, transfer_parametrizations_and_params, type_before_parametrizations

from quantfx.errors import ValidationError
from quantfx.nn.intrinsic.fused import _FusedModule

__all__ = ["Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "EmbeddingBag", "resolve_qconfig", "make_weight_fake_quant"]


def resolve_qconfig(cls: type, mod: nn.Module | None, qconfig: Any) -> Any:
    """The qconfig to use: the explicit argument, else ``mod.qconfig``; error if neither."""
    if qconfig is None and mod is not None:
        qconfig = getattr(mod, "qconfig", None)
    if qconfig is None:
        raise ValidationError(
            f"{cls.__module__}.{cls.__name__} needs a qconfig with a weight fake-quant: "
            f"call {cls.__name__}.from_float(mod, qconfig) or pass qconfig= to the constructor."
        )
    if getattr(qconfig, "weight", None) is None:
        raise ValidationError(f"{cls.__name__}: qconfig {qconfig!r} has no weight fake-quant constructor (qconfig.weight is None)")
    return qconfig


def make_weight_fake_quant(qconfig: Any, device: torch.device | None = None) -> nn.Module:
    """Instantiate ``qconfig.weight()`` on ``device``."""
    fq = qconfig.weight()
    if device is not None:
        fq = fq.to(device)
    return fq


def _check_float_type(cls: type, mod: nn.Module, expected: type | tuple[type, ...]) -> None:
    exp = expected if isinstance(expected, tuple) else (expected,)
    got = type_before_parametrizations(mod)
    if got not in exp:
        raise ValidationError(
            f"{cls.__name__}.from_float converts {' or '.join(e.__name__ for e in exp)}, got {got.__module__}.{got.__name__}"
        )


class Linear(nn.Linear):
    """``nn.Linear`` whose weight is fake-quantized in forward (QAT)."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nn.Linear
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = None  # set by fused LinearReLU variants
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        qconfig: Any = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.qconfig = resolve_qconfig(type(self), None, qconfig)
        self.weight_fake_quant = make_weight_fake_quant(self.qconfig, device)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight_fake_quant(self.weight), self.bias)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any = None, use_precomputed_fake_quant: bool = False) -> "Linear":
        """QAT module sharing ``mod``'s weight / bias parameters (fused ``LinearReLU`` accepted)."""
        _check_float_type(cls, mod, cls._FLOAT_MODULE)
        qconfig = resolve_qconfig(cls, mod, qconfig)
        if isinstance(mod, _FusedModule):
            mod = mod[0]
        qat = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, qconfig=qconfig, device=mod.weight.device)
        for name in ("weight", "bias"):
            if is_parametrized(mod, name):
                transfer_parametrizations_and_params(mod, qat, name)
            else:
                setattr(qat, name, getattr(mod, name))
        return qat

    def to_float(self) -> nn.Module:
        """The float ``nn.Linear`` (wrapped with the activation if fused) holding the trained weights."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=self.weight.device)
        linear.weight = nn.Parameter(self.weight.detach())
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach())
        linear.train(self.training)
        if self._FLOAT_ACT_MODULE is not None and self._FUSED_FLOAT_MODULE is not None:
            fused = self._FUSED_FLOAT_MODULE(linear, self._FLOAT_ACT_MODULE())
            fused.train(self.training)
            return fused
        return linear


class _ConvNd(nn.modules.conv._ConvNd):
    _FLOAT_MODULE: ClassVar[type[nn.Module]]
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]]
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = None
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = None
    _to_tuple: ClassVar[Any] = staticmethod(_pair)

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
        qconfig: Any = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        t = type(self)._to_tuple
        nn.modules.conv._ConvNd.__init__(
            self,
            in_channels,
            out_channels,
            t(kernel_size),
            t(stride),
            padding if isinstance(padding, str) else t(padding),
            t(dilation),
            False,
            t(0),
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self.qconfig = resolve_qconfig(type(self), None, qconfig)
        self.weight_fake_quant = make_weight_fake_quant(self.qconfig, device)

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any = None, use_precomputed_fake_quant: bool = False) -> "_ConvNd":
        """QAT conv sharing ``mod``'s weight / bias parameters (fused ``ConvReLU`` accepted)."""
        _check_float_type(cls, mod, cls._FLOAT_MODULE)
        qconfig = resolve_qconfig(cls, mod, qconfig)
        if isinstance(mod, _FusedModule):
            mod = mod[0]
        qat = cls(
            mod.in_channels,
            mod.out_channels,
            mod.kernel_size,
            stride=mod.stride,
            padding=mod.padding,
            dilation=mod.dilation,
            groups=mod.groups,
            bias=mod.bias is not None,
            padding_mode=mod.padding_mode,
            qconfig=qconfig,
            device=mod.weight.device,
        )
        qat.weight = mod.weight
        qat.bias = mod.bias
        return qat

    def to_float(self) -> nn.Module:
        """The float conv (wrapped with the activation as a fused module if fused) holding the trained weights."""
        conv = self._FLOAT_CONV_MODULE(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device=self.weight.device,
        )
        conv.weight = nn.Parameter(self.weight.detach())
        if self.bias is not None:
            conv.bias = nn.Parameter(self.bias.detach())
        conv.train(self.training)
        if self._FLOAT_ACT_MODULE is not None and self._FUSED_FLOAT_MODULE is not None:
            fused = self._FUSED_FLOAT_MODULE(conv, self._FLOAT_ACT_MODULE())
            fused.train(self.training)
            return fused
        return conv


class Conv1d(_ConvNd, nn.Conv1d):
    """``nn.Conv1d`` whose weight is fake-quantized in forward (QAT)."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nn.Conv1d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv1d
    _to_tuple = staticmethod(_single)


class Conv2d(_ConvNd, nn.Conv2d):
    """``nn.Conv2d`` whose weight is fake-quantized in forward (QAT)."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nn.Conv2d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv2d
    _to_tuple = staticmethod(_pair)


class Conv3d(_ConvNd, nn.Conv3d):
    """``nn.Conv3d`` whose weight is fake-quantized in forward (QAT)."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nn.Conv3d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv3d
    _to_tuple = staticmethod(_triple)


def _check_embedding_qscheme(cls: type, fq: nn.Module) -> None:
    qscheme = getattr(fq, "qscheme", None)
    if qscheme != torch.per_channel_affine_float_qparams:
        raise ValidationError(
            f"{cls.__name__} weights are quantized per row with float zero points: the weight fake-quant needs "
            f"qscheme=torch.per_channel_affine_float_qparams, got {qscheme}. Use an embedding qconfig "
            "(e.g. quantfx.qconfig.default_embedding_qat_qconfig)."
        )


class Embedding(nn.Embedding):
    """``nn.Embedding`` whose table is fake-quantized per row in forward (QAT)."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nn.Embedding

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        qconfig: Any = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, _weight,
            device=device, dtype=dtype,
        )
        self.qconfig = resolve_qconfig(type(self), None, qconfig)
        self.weight_fake_quant = make_weight_fake_quant(self.qconfig, device)
        _check_embedding_qscheme(type(self), self.weight_fake_quant)

    def forward(self, input: Tensor) -> Tensor:
        return F.embedding(
            input, self.weight_fake_quant(self.weight), self.padding_idx, self.max_norm, self.norm_type,
            self.scale_grad_by_freq, self.sparse,
        )

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any = None, use_precomputed_fake_quant: bool = False) -> "Embedding":
        """QAT embedding sharing ``mod``'s weight parameter."""
        _check_float_type(cls, mod, cls._FLOAT_MODULE)
        qconfig = resolve_qconfig(cls, mod, qconfig)
        return cls(
            mod.num_embeddings, mod.embedding_dim, mod.padding_idx, mod.max_norm, mod.norm_type,
            mod.scale_grad_by_freq, mod.sparse, mod.weight, device=mod.weight.device, qconfig=qconfig,
        )

    def to_float(self) -> nn.Embedding:
        emb = nn.Embedding(
            self.num_embeddings, self.embedding_dim, self.padding_idx, self.max_norm, self.norm_type,
            self.scale_grad_by_freq, self.sparse, None, device=self.weight.device,
        )
        emb.weight = nn.Parameter(self.weight.detach())
        emb.train(self.training)
        return emb


class EmbeddingBag(nn.EmbeddingBag):
    """``nn.EmbeddingBag`` whose table is fake-quantized per row in forward (QAT)."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nn.EmbeddingBag

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Tensor | None = None,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        qconfig: Any = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, max_norm, norm_type, scale_grad_by_freq, mode, sparse, _weight,
            include_last_offset, padding_idx, device=device, dtype=dtype,
        )
        self.qconfig = resolve_qconfig(type(self), None, qconfig)
        self.weight_fake_quant = make_weight_fake_quant(self.qconfig, device)
        _check_embedding_qscheme(type(self), self.weight_fake_quant)

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        return F.embedding_bag(
            input, self.weight_fake_quant(self.weight), offsets, self.max_norm, self.norm_type,
            self.scale_grad_by_freq, self.mode, self.sparse, per_sample_weights, self.include_last_offset,
            self.padding_idx,
        )

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any = None, use_precomputed_fake_quant: bool = False) -> "EmbeddingBag":
        """QAT embedding bag sharing ``mod``'s weight parameter."""
        _check_float_type(cls, mod, cls._FLOAT_MODULE)
        qconfig = resolve_qconfig(cls, mod, qconfig)
        return cls(
            mod.num_embeddings, mod.embedding_dim, mod.max_norm, mod.norm_type, mod.scale_grad_by_freq, mod.mode,
            mod.sparse, mod.weight, mod.include_last_offset, mod.padding_idx, qconfig=qconfig,
            device=mod.weight.device,
        )

    def to_float(self) -> nn.EmbeddingBag:
        emb = nn.EmbeddingBag(
            self.num_embeddings, self.embedding_dim, self.max_norm, self.norm_type, self.scale_grad_by_freq,
            self.mode, self.sparse, None, self.include_last_offset, self.padding_idx, device=self.weight.device,
        )
        emb.weight = nn.Parameter(self.weight.detach())
        emb.train(self.training)
        return emb
