"""Fused QAT modules: conv / linear (+ BN) (+ ReLU / ReLU6) with weight fake-quant.

``ConvBn*`` / ``ConvBnReLU*`` / ``LinearBn1d`` simulate BN folding during
training the way torch.ao's ``_ConvBnNd`` does: the weight is scaled by
``bn.weight / running_std`` *before* fake-quant (so training sees the folded
weight's rounding), the conv output is unscaled and BN runs on it with batch
statistics. ``freeze_bn_stats`` stops updating running statistics late in
training; ``to_float`` folds BN for good and returns the float conv
(as ``ConvReLU*`` when fused with an activation).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init
from torch.nn.modules.utils import _pair, _single, _triple
from torch.nn.parameter import Parameter

import quantfx.nn.intrinsic.fused as nni
import quantfx.nn.qat.modules as nnqat
from quantfx.errors import ValidationError
from quantfx.nn.intrinsic.folding import fold_bn_weights
from quantfx.nn.qat.modules import _check_float_type, make_weight_fake_quant, resolve_qconfig

__all__ = [
    "LinearReLU",
    "LinearReLU6",
    "LinearBn1d",
    "ConvReLU1d",
    "ConvReLU2d",
    "ConvReLU3d",
    "ConvReLU6_1d",
    "ConvReLU6_2d",
    "ConvReLU6_3d",
    "ConvBn1d",
    "ConvBn2d",
    "ConvBn3d",
    "ConvBnReLU1d",
    "ConvBnReLU2d",
    "ConvBnReLU3d",
    "ConvBnReLU6_1d",
    "ConvBnReLU6_2d",
    "ConvBnReLU6_3d",
    "update_bn_stats",
    "freeze_bn_stats",
]


class _FusedQAT:
    """Marker mixin for fused QAT modules (not an ``nn.Sequential``, unlike torch.ao's)."""


def _apply_act(act: type[nn.Module] | None, x: Tensor) -> Tensor:
    if act is None:
        return x
    if act is nn.ReLU:
        return F.relu(x)
    if act is nn.ReLU6:
        return F.relu6(x)
    raise ValidationError(f"unsupported fused activation {act}")


# ----------------------------------------------------------------------------- linear


class LinearReLU(nnqat.Linear, _FusedQAT):
    """QAT Linear followed by ReLU."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.LinearReLU
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.LinearReLU

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(F.linear(input, self.weight_fake_quant(self.weight), self.bias))


class LinearReLU6(nnqat.Linear, _FusedQAT):
    """QAT Linear followed by ReLU6."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.LinearReLU6
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU6
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.LinearReLU6

    def forward(self, input: Tensor) -> Tensor:
        return F.relu6(F.linear(input, self.weight_fake_quant(self.weight), self.bias))


class _BnStatsMixin:
    """freeze / update of the BN running statistics shared by ConvBn and LinearBn."""

    bn: nn.modules.batchnorm._BatchNorm
    freeze_bn: bool

    def reset_running_stats(self) -> None:
        self.bn.reset_running_stats()

    def update_bn_stats(self):
        """Let BN use batch statistics and update its running statistics (normal QAT)."""
        self.freeze_bn = False
        self.bn.training = True
        return self

    def freeze_bn_stats(self):
        """Stop updating BN running statistics; BN then normalizes with them (late QAT)."""
        self.freeze_bn = True
        self.bn.training = False
        return self

    def train(self, mode: bool = True):
        """Like ``nn.Module.train`` but a frozen BN stays in eval mode."""
        self.training = mode
        if not self.freeze_bn:
            for module in self.children():  # type: ignore[attr-defined]
                module.train(mode)
        return self


class LinearBn1d(_BnStatsMixin, nn.Linear, _FusedQAT):
    """QAT Linear + BatchNorm1d with BN folding simulated (weight scaled by running std before fake-quant)."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.LinearBn1d

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        freeze_bn: bool = False,
        qconfig: Any = None,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias)
        self.qconfig = resolve_qconfig(type(self), None, qconfig)
        self.freeze_bn = freeze_bn if self.training else True
        self.bn = nn.BatchNorm1d(out_features, eps, momentum, True, True)
        self.weight_fake_quant = make_weight_fake_quant(self.qconfig)
        if bias:
            self.bias = Parameter(torch.empty(out_features))
        else:
            self.register_parameter("bias", None)
        self.reset_bn_parameters()
        if self.training and not freeze_bn:
            self.update_bn_stats()
        else:
            self.freeze_bn_stats()

    def reset_bn_parameters(self) -> None:
        self.bn.reset_running_stats()
        init.uniform_(self.bn.weight)
        init.zeros_(self.bn.bias)

    def forward(self, input: Tensor) -> Tensor:
        running_std = torch.sqrt(self.bn.running_var + self.bn.eps)
        scale_factor = self.bn.weight / running_std
        scaled_weight = self.weight_fake_quant(self.weight * scale_factor.reshape(-1, 1))
        zero_bias = torch.zeros_like(self.bias) if self.bias is not None else torch.zeros(self.out_features, device=scaled_weight.device)
        out = F.linear(input, scaled_weight, zero_bias)
        out = out / scale_factor.reshape(1, -1)
        if self.bias is not None:
            out = out + self.bias.reshape(1, -1)
        return self.bn(out)

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any = None, use_precomputed_fake_quant: bool = False) -> "LinearBn1d":
        """QAT module sharing the fused float ``LinearBn1d``'s parameters and BN statistics."""
        _check_float_type(cls, mod, cls._FLOAT_MODULE)
        qconfig = resolve_qconfig(cls, mod, qconfig)
        linear, bn = mod[0], mod[1]
        qat = cls(linear.in_features, linear.out_features, linear.bias is not None, bn.eps, bn.momentum, False, qconfig)
        qat.weight = linear.weight
        qat.bias = linear.bias
        _share_bn(qat.bn, bn)
        return qat

    def to_float(self) -> nn.Linear:
        """Float Linear with the BN (running statistics) folded in."""
        linear = nn.Linear(self.in_features, self.out_features)
        linear.weight, linear.bias = fold_bn_weights(
            self.weight.detach(), None if self.bias is None else self.bias.detach(), self.bn.running_mean,
            self.bn.running_var, self.bn.eps, self.bn.weight, self.bn.bias,
        )
        linear.train(self.training)
        return linear


def _share_bn(dst: nn.modules.batchnorm._BatchNorm, src: nn.modules.batchnorm._BatchNorm) -> None:
    dst.weight = src.weight
    dst.bias = src.bias
    dst.running_mean = src.running_mean
    dst.running_var = src.running_var
    dst.num_batches_tracked = src.num_batches_tracked


# ----------------------------------------------------------------------------- conv


class ConvReLU1d(nnqat.Conv1d, _FusedQAT):
    """QAT Conv1d followed by ReLU."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvReLU1d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU1d

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias))


class ConvReLU2d(nnqat.Conv2d, _FusedQAT):
    """QAT Conv2d followed by ReLU."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvReLU2d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU2d

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias))


class ConvReLU3d(nnqat.Conv3d, _FusedQAT):
    """QAT Conv3d followed by ReLU."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvReLU3d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU3d

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias))


class ConvReLU6_1d(nnqat.Conv1d, _FusedQAT):
    """QAT Conv1d followed by ReLU6."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvReLU6_1d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU6
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU6_1d

    def forward(self, input: Tensor) -> Tensor:
        return F.relu6(self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias))


class ConvReLU6_2d(nnqat.Conv2d, _FusedQAT):
    """QAT Conv2d followed by ReLU6."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvReLU6_2d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU6
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU6_2d

    def forward(self, input: Tensor) -> Tensor:
        return F.relu6(self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias))


class ConvReLU6_3d(nnqat.Conv3d, _FusedQAT):
    """QAT Conv3d followed by ReLU6."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvReLU6_3d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU6
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU6_3d

    def forward(self, input: Tensor) -> Tensor:
        return F.relu6(self._conv_forward(input, self.weight_fake_quant(self.weight), self.bias))


class _ConvBnNd(_BnStatsMixin, nn.modules.conv._ConvNd, _FusedQAT):
    """Conv + BN (+ activation) for QAT with BN folding simulated, numerically like torch.ao's ``_ConvBnNd``."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]]
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]]
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]]
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
        bias: bool | None = None,
        padding_mode: str = "zeros",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        freeze_bn: bool = False,
        qconfig: Any = None,
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
            False,
            padding_mode,
        )
        self.qconfig = resolve_qconfig(type(self), None, qconfig)
        self.freeze_bn = freeze_bn if self.training else True
        self.bn = self._FLOAT_BN_MODULE(out_channels, eps, momentum, True, True)
        self.weight_fake_quant = make_weight_fake_quant(self.qconfig)
        if bias:
            self.bias = Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_bn_parameters()
        if self.training and not freeze_bn:
            self.update_bn_stats()
        else:
            self.freeze_bn_stats()
        self._enable_slow_path_for_better_numerical_stability = False

    def reset_bn_parameters(self) -> None:
        self.bn.reset_running_stats()
        init.uniform_(self.bn.weight)
        init.zeros_(self.bn.bias)
        if self.bias is not None:  # the conv's bias, initialized like nn.Conv
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def _shapes(self) -> tuple[list[int], list[int]]:
        weight_shape = [1] * self.weight.dim()
        weight_shape[0] = -1
        bias_shape = [1] * self.weight.dim()
        bias_shape[1] = -1
        return weight_shape, bias_shape

    def _forward(self, input: Tensor) -> Tensor:
        if self._enable_slow_path_for_better_numerical_stability:
            return self._forward_slow(input)
        return self._forward_approximate(input)

    def _forward_approximate(self, input: Tensor) -> Tensor:
        # scale by the *previous* running std so fake-quant sees the folded weight; undo the
        # scale after the conv and let BN normalize with batch statistics (arXiv:1806.08342)
        running_std = torch.sqrt(self.bn.running_var + self.bn.eps)
        scale_factor = self.bn.weight / running_std
        weight_shape, bias_shape = self._shapes()
        scaled_weight = self.weight_fake_quant(self.weight * scale_factor.reshape(weight_shape))
        if self.bias is not None:
            zero_bias = torch.zeros_like(self.bias, dtype=input.dtype)
        else:
            zero_bias = torch.zeros(self.out_channels, device=scaled_weight.device, dtype=input.dtype)
        conv = self._conv_forward(input, scaled_weight, zero_bias)
        conv_orig = conv / scale_factor.reshape(bias_shape)
        if self.bias is not None:
            conv_orig = conv_orig + self.bias.reshape(bias_shape)
        return self.bn(conv_orig)

    def _forward_slow(self, input: Tensor) -> Tensor:
        # two conv passes; exact even when bn.weight == 0 (see torch.ao _ConvBnNd._forward_slow)
        zero_bias = torch.zeros(self.out_channels, device=self.weight.device, dtype=input.dtype)
        weight_shape, bias_shape = self._shapes()
        if self.bn.training:
            conv_out = self._conv_forward(input, self.weight, zero_bias)
            with torch.no_grad():
                conv_out_bias = conv_out if self.bias is None else conv_out + self.bias.reshape(bias_shape)
                self.bn(conv_out_bias)
            running_std = torch.sqrt(self.bn.running_var + self.bn.eps)
            scale_factor = self.bn.weight / running_std
            scaled_weight = self.weight_fake_quant(self.weight * scale_factor.reshape(weight_shape))
            conv_bn = self._conv_forward(input, scaled_weight, zero_bias)
            avg_dims = [0] + list(range(2, self.weight.dim()))
            batch_mean = conv_out.mean(avg_dims)
            batch_var = torch.square(conv_out - batch_mean.reshape(bias_shape)).mean(avg_dims)
            batch_std = torch.sqrt(batch_var + self.bn.eps)
            conv_bn = conv_bn * (running_std / batch_std).reshape(bias_shape)
            fused_mean, fused_std = batch_mean, batch_std
        else:
            running_std = torch.sqrt(self.bn.running_var + self.bn.eps)
            scale_factor = self.bn.weight / running_std
            scaled_weight = self.weight_fake_quant(self.weight * scale_factor.reshape(weight_shape))
            conv_bn = self._conv_forward(input, scaled_weight, zero_bias)
            fused_mean = self.bn.running_mean - (self.bias if self.bias is not None else 0)
            fused_std = running_std
        fused_bias = self.bn.bias - self.bn.weight * fused_mean / fused_std
        conv_bn = conv_bn + fused_bias.reshape(bias_shape)
        if self.bias is not None:  # keep the conv bias in the autograd graph (DDP)
            conv_bn = conv_bn + (self.bias - self.bias).reshape(bias_shape)
        return conv_bn

    def forward(self, input: Tensor) -> Tensor:
        return _apply_act(self._FLOAT_ACT_MODULE, self._forward(input))

    @classmethod
    def from_float(cls, mod: nn.Module, qconfig: Any = None, use_precomputed_fake_quant: bool = False) -> "_ConvBnNd":
        """QAT module sharing the fused float ConvBn(ReLU)'s conv parameters and BN parameters / statistics."""
        _check_float_type(cls, mod, cls._FLOAT_MODULE)
        qconfig = resolve_qconfig(cls, mod, qconfig)
        conv, bn = mod[0], mod[1]
        qat = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            bn.eps,
            bn.momentum,
            False,
            qconfig,
        )
        qat.weight = conv.weight
        qat.bias = conv.bias
        _share_bn(qat.bn, bn)
        return qat

    def to_float(self) -> nn.Module:
        """Float conv with BN folded (running statistics), as ``ConvReLU*`` when fused with an activation."""
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
        )
        conv.weight, conv.bias = fold_bn_weights(
            self.weight.detach(),
            None if self.bias is None else self.bias.detach(),
            self.bn.running_mean,
            self.bn.running_var,
            self.bn.eps,
            self.bn.weight,
            self.bn.bias,
        )
        conv.train(self.training)
        if self._FLOAT_ACT_MODULE is not None:
            fused = self._FUSED_FLOAT_MODULE(conv, self._FLOAT_ACT_MODULE())
            fused.train(self.training)
            return fused
        return conv


class ConvBn1d(_ConvBnNd, nn.Conv1d):
    """QAT Conv1d + BatchNorm1d with BN folding simulated in training."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvBn1d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv1d
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]] = nn.BatchNorm1d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = None
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = None
    _to_tuple = staticmethod(_single)


class ConvBn2d(_ConvBnNd, nn.Conv2d):
    """QAT Conv2d + BatchNorm2d with BN folding simulated in training."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvBn2d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv2d
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]] = nn.BatchNorm2d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = None
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = None
    _to_tuple = staticmethod(_pair)


class ConvBn3d(_ConvBnNd, nn.Conv3d):
    """QAT Conv3d + BatchNorm3d with BN folding simulated in training."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvBn3d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv3d
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]] = nn.BatchNorm3d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = None
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = None
    _to_tuple = staticmethod(_triple)


class ConvBnReLU1d(_ConvBnNd, nn.Conv1d):
    """QAT Conv1d + BatchNorm1d + ReLU with BN folding simulated in training."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvBnReLU1d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv1d
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]] = nn.BatchNorm1d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU1d
    _to_tuple = staticmethod(_single)


class ConvBnReLU2d(_ConvBnNd, nn.Conv2d):
    """QAT Conv2d + BatchNorm2d + ReLU with BN folding simulated in training."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvBnReLU2d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv2d
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]] = nn.BatchNorm2d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU2d
    _to_tuple = staticmethod(_pair)


class ConvBnReLU3d(_ConvBnNd, nn.Conv3d):
    """QAT Conv3d + BatchNorm3d + ReLU with BN folding simulated in training."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvBnReLU3d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv3d
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]] = nn.BatchNorm3d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU3d
    _to_tuple = staticmethod(_triple)


class ConvBnReLU6_1d(_ConvBnNd, nn.Conv1d):
    """QAT Conv1d + BatchNorm1d + ReLU6 with BN folding simulated in training."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvBnReLU6_1d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv1d
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]] = nn.BatchNorm1d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU6
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU6_1d
    _to_tuple = staticmethod(_single)


class ConvBnReLU6_2d(_ConvBnNd, nn.Conv2d):
    """QAT Conv2d + BatchNorm2d + ReLU6 with BN folding simulated in training."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvBnReLU6_2d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv2d
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]] = nn.BatchNorm2d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU6
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU6_2d
    _to_tuple = staticmethod(_pair)


class ConvBnReLU6_3d(_ConvBnNd, nn.Conv3d):
    """QAT Conv3d + BatchNorm3d + ReLU6 with BN folding simulated in training."""

    _FLOAT_MODULE: ClassVar[type[nn.Module]] = nni.ConvBnReLU6_3d
    _FLOAT_CONV_MODULE: ClassVar[type[nn.modules.conv._ConvNd]] = nn.Conv3d
    _FLOAT_BN_MODULE: ClassVar[type[nn.modules.batchnorm._BatchNorm]] = nn.BatchNorm3d
    _FLOAT_ACT_MODULE: ClassVar[type[nn.Module] | None] = nn.ReLU6
    _FUSED_FLOAT_MODULE: ClassVar[type[nn.Module] | None] = nni.ConvReLU6_3d
    _to_tuple = staticmethod(_triple)


_BN_QAT_TYPES = (
    ConvBn1d, ConvBn2d, ConvBn3d, ConvBnReLU1d, ConvBnReLU2d, ConvBnReLU3d,
    ConvBnReLU6_1d, ConvBnReLU6_2d, ConvBnReLU6_3d, LinearBn1d,
)


def update_bn_stats(mod: nn.Module) -> None:
    """For ``model.apply``: resume BN statistic updates in fused QAT ConvBn / LinearBn modules."""
    if isinstance(mod, _BN_QAT_TYPES):
        mod.update_bn_stats()


def freeze_bn_stats(mod: nn.Module) -> None:
    """For ``model.apply``: freeze BN running statistics in fused QAT ConvBn / LinearBn modules."""
    if isinstance(mod, _BN_QAT_TYPES):
        mod.freeze_bn_stats()
