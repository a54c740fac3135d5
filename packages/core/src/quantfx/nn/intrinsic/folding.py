"""Folding BatchNorm statistics into the preceding conv / linear weights.

Eval-mode fusion and ``to_float()`` of the QAT ConvBn modules both need it.
Written here (not ``torch.nn.utils.fusion``) so grouped transposed convs fold
correctly: their output channel sits on weight dim 1 *within each group*.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from quantfx.errors import ValidationError

__all__ = ["fold_bn_weights", "fold_conv_bn_eval", "fold_linear_bn_eval"]


def fold_bn_weights(
    weight: Tensor,
    bias: Tensor | None,
    bn_running_mean: Tensor,
    bn_running_var: Tensor,
    bn_eps: float,
    bn_weight: Tensor | None,
    bn_bias: Tensor | None,
    *,
    transpose: bool = False,
    groups: int = 1,
) -> tuple[nn.Parameter, nn.Parameter]:
    """Return (weight, bias) such that ``op(x, w', b') == bn(op(x, w, b))`` with BN in eval mode.

    ``weight`` is a conv / linear weight with output channels on dim 0, or, for
    transposed convs (``transpose=True``), on dim 1 of each of ``groups`` blocks of dim 0.
    """
    requires_grad = weight.requires_grad
    with torch.no_grad():
        new_w, new_b = _fold(weight, bias, bn_running_mean, bn_running_var, bn_eps, bn_weight, bn_bias, transpose, groups)
    return nn.Parameter(new_w, requires_grad), nn.Parameter(new_b, requires_grad)


def _fold(weight, bias, bn_running_mean, bn_running_var, bn_eps, bn_weight, bn_bias, transpose, groups):
    w_dtype = weight.dtype
    b_dtype = bias.dtype if bias is not None else w_dtype
    if bias is None:
        bias = torch.zeros_like(bn_running_mean)
    if bn_weight is None:
        bn_weight = torch.ones_like(bn_running_mean)
    if bn_bias is None:
        bn_bias = torch.zeros_like(bn_running_mean)
    inv_std = torch.rsqrt(bn_running_var + bn_eps)
    scale = bn_weight * inv_std  # one factor per output channel
    if not transpose:
        shape = [-1] + [1] * (weight.dim() - 1)
        new_w = weight * scale.reshape(shape)
    else:
        in_ch, out_per_group = weight.shape[0], weight.shape[1]
        if in_ch % groups:
            raise ValidationError(f"transposed conv weight with {in_ch} input channels is not divisible into {groups} groups")
        rest = list(weight.shape[2:])
        w = weight.reshape([groups, in_ch // groups, out_per_group] + rest)
        s = scale.reshape([groups, 1, out_per_group] + [1] * len(rest))
        new_w = (w * s).reshape(weight.shape)
    new_b = (bias - bn_running_mean) * inv_std * bn_weight + bn_bias
    return new_w.to(w_dtype), new_b.to(b_dtype)


def _check_bn_foldable(bn: nn.modules.batchnorm._BatchNorm, owner: str) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise ValidationError(
            f"cannot fold {type(bn).__name__} into {owner}: it has track_running_stats=False, so eval mode "
            "uses batch statistics that no fixed weight can reproduce; keep the BN unfused."
        )


def fold_conv_bn_eval(conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm) -> nn.modules.conv._ConvNd:
    """A copy of ``conv`` with ``bn`` (eval statistics) folded into its weight and bias."""
    if conv.training or bn.training:
        raise ValidationError(
            f"post-training fusion folds BatchNorm running statistics and needs eval mode, but "
            f"{type(conv).__name__}.training={conv.training}, {type(bn).__name__}.training={bn.training}. "
            "Call model.eval() before fuse / prepare_fx, or use is_qat=True (prepare_qat_fx) to keep BN trainable."
        )
    _check_bn_foldable(bn, type(conv).__name__)
    if conv.out_channels != bn.num_features:
        raise ValidationError(
            f"{type(conv).__name__}.out_channels={conv.out_channels} does not match BatchNorm "
            f"num_features={bn.num_features}; only a BatchNorm over the conv's output channels can be folded."
        )
    fused = copy.deepcopy(conv)
    fused.weight, fused.bias = fold_bn_weights(
        fused.weight,
        fused.bias,
        bn.running_mean,
        bn.running_var,
        bn.eps,
        bn.weight,
        bn.bias,
        transpose=bool(conv.transposed),
        groups=conv.groups,
    )
    return fused


def fold_linear_bn_eval(linear: nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> nn.Linear:
    """A copy of ``linear`` with ``bn`` (eval statistics) folded into its weight and bias."""
    if linear.training or bn.training:
        raise ValidationError(
            f"post-training fusion folds BatchNorm running statistics and needs eval mode, but "
            f"Linear.training={linear.training}, {type(bn).__name__}.training={bn.training}. "
            "Call model.eval() before fuse / prepare_fx, or use is_qat=True (prepare_qat_fx)."
        )
    _check_bn_foldable(bn, "Linear")
    if linear.out_features != bn.num_features:
        raise ValidationError(
            f"Linear.out_features={linear.out_features} does not match BatchNorm num_features={bn.num_features}; "
            "only a BatchNorm over the Linear's output features can be folded."
        )
    fused = copy.deepcopy(linear)
    fused.weight, fused.bias = fold_bn_weights(
        fused.weight, fused.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return fused
