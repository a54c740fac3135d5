"""Fuser methods: turn a matched chain of float modules into one fused module.

Signature (torch.ao's): ``fuser(is_qat, *modules_in_execution_order) -> nn.Module``.
In eval mode (``is_qat=False``) BatchNorm is folded into the conv / linear
weights with its running statistics, so the result is a plain conv (or
``ConvReLU*``); for QAT the BN stays, inside ``ConvBn*`` / ``ConvBnReLU*``
containers that prepare swaps for the BN-folding-simulating QAT modules.

A fuser may decline a particular instance (a Hardtanh that is not 0..6, a BN
without running statistics, ConvTranspose+BN under QAT) by raising
:class:`FusionSkipped`; ``fuse`` then leaves the chain unfused and records the
reason in ``gm.meta["quantfx_fusion_skipped"]``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

import quantfx.nn.intrinsic as nni
from quantfx.errors import ValidationError
from quantfx.nn.intrinsic.folding import fold_conv_bn_eval, fold_linear_bn_eval

__all__ = [
    "FusionSkipped",
    "fuse_conv_bn",
    "fuse_conv_bn_relu",
    "fuse_linear_bn",
    "fuse_convtranspose_bn",
    "fuse_conv_relu",
    "fuse_linear_relu",
    "fuse_bn_relu",
    "sequential_wrapper2",
    "as_relu6",
    "DEFAULT_OP_LIST_TO_FUSER_METHOD",
    "get_fuser_method",
]


class FusionSkipped(ValidationError):
    """This instance of a fusion pattern cannot be fused; ``fuse`` leaves it as is and records why."""


_CONV_BN = {nn.Conv1d: nni.ConvBn1d, nn.Conv2d: nni.ConvBn2d, nn.Conv3d: nni.ConvBn3d}
_CONV_BN_RELU = {nn.Conv1d: nni.ConvBnReLU1d, nn.Conv2d: nni.ConvBnReLU2d, nn.Conv3d: nni.ConvBnReLU3d}
_CONV_BN_RELU6 = {nn.Conv1d: nni.ConvBnReLU6_1d, nn.Conv2d: nni.ConvBnReLU6_2d, nn.Conv3d: nni.ConvBnReLU6_3d}
_CONV_RELU = {nn.Conv1d: nni.ConvReLU1d, nn.Conv2d: nni.ConvReLU2d, nn.Conv3d: nni.ConvReLU3d}
_CONV_RELU6 = {nn.Conv1d: nni.ConvReLU6_1d, nn.Conv2d: nni.ConvReLU6_2d, nn.Conv3d: nni.ConvReLU6_3d}
_BN_RELU = {nn.BatchNorm2d: nni.BNReLU2d, nn.BatchNorm3d: nni.BNReLU3d}
_BN_DIM = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d,
           nn.ConvTranspose1d: nn.BatchNorm1d, nn.ConvTranspose2d: nn.BatchNorm2d, nn.ConvTranspose3d: nn.BatchNorm3d}


def as_relu6(act: nn.Module) -> nn.ReLU6 | None:
    """``act`` as an ``nn.ReLU6`` if it computes clamp(x, 0, 6) (ReLU6, or Hardtanh(0, 6)), else None."""
    if type(act) is nn.ReLU6:
        return act
    if type(act) is nn.Hardtanh and float(act.min_val) == 0.0 and float(act.max_val) == 6.0:
        relu6 = nn.ReLU6(inplace=act.inplace)
        relu6.train(act.training)
        return relu6
    return None


def _activation(act: nn.Module, what: str) -> tuple[str, nn.Module]:
    """('relu' | 'relu6', module) for a fusable activation, else FusionSkipped."""
    if type(act) is nn.ReLU:
        return "relu", act
    relu6 = as_relu6(act)
    if relu6 is not None:
        return "relu6", relu6
    if isinstance(act, nn.Hardtanh):
        raise FusionSkipped(
            f"{what}: Hardtanh(min_val={act.min_val}, max_val={act.max_val}) is not ReLU6 (0..6); only ReLU and ReLU6 "
            "fuse into the preceding op"
        )
    raise FusionSkipped(f"{what}: activation {type(act).__name__} does not fuse; only ReLU and ReLU6 do")


def _check_same_mode(*mods: nn.Module) -> None:
    if len({m.training for m in mods}) > 1:
        raise ValidationError(
            "modules to fuse must all be in the same mode (train or eval), got "
            + ", ".join(f"{type(m).__name__}.training={m.training}" for m in mods)
            + "; call model.train() or model.eval() on the whole model before fusing"
        )


def _check_qat_bn(owner: nn.Module, bn: nn.Module, out: int) -> None:
    if bn.num_features != out:
        raise ValidationError(
            f"{type(owner).__name__} has {out} output channels but {type(bn).__name__} has num_features={bn.num_features}"
        )
    if not bn.affine or not bn.track_running_stats:
        raise FusionSkipped(
            f"{type(bn).__name__}(affine={bn.affine}, track_running_stats={bn.track_running_stats}) cannot be simulated "
            "folded in QAT: it needs affine=True and track_running_stats=True"
        )


def _check_conv_bn_types(conv: nn.Module, bn: nn.Module) -> None:
    expected = _BN_DIM.get(type(conv))
    if expected is None or type(bn) is not expected:
        raise ValidationError(
            f"cannot fuse {type(conv).__name__} with {type(bn).__name__}: expected "
            f"{expected.__name__ if expected else 'a Conv1d/2d/3d or ConvTranspose1d/2d/3d'} + matching BatchNorm"
        )


def _fold_eval(fold: Callable[[nn.Module, nn.Module], nn.Module], mod: nn.Module, bn: nn.Module) -> nn.Module:
    if bn.running_mean is None or bn.running_var is None:
        raise FusionSkipped(
            f"{type(bn).__name__} has track_running_stats=False: in eval mode it normalizes with batch statistics, "
            "which no folded weight reproduces"
        )
    return fold(mod, bn)


def fuse_conv_bn(is_qat: bool, conv: nn.Module, bn: nn.Module) -> nn.Module:
    """Conv + BN: eval folds BN into the conv; QAT returns ``ConvBn{1,2,3}d`` (BN kept, folding simulated)."""
    _check_conv_bn_types(conv, bn)
    _check_same_mode(conv, bn)
    if is_qat:
        _check_qat_bn(conv, bn, conv.out_channels)
        return _CONV_BN[type(conv)](conv, bn)
    return _fold_eval(fold_conv_bn_eval, conv, bn)


def fuse_conv_bn_relu(is_qat: bool, conv: nn.Module, bn: nn.Module, relu: nn.Module) -> nn.Module:
    """Conv + BN + ReLU / ReLU6: eval folds BN and returns ``ConvReLU*`` / ``ConvReLU6_*``; QAT returns ``ConvBnReLU*``."""
    _check_conv_bn_types(conv, bn)
    _check_same_mode(conv, bn)  # the activation has no train/eval behaviour
    kind, act = _activation(relu, f"{type(conv).__name__} + {type(bn).__name__}")
    if is_qat:
        _check_qat_bn(conv, bn, conv.out_channels)
        table = _CONV_BN_RELU if kind == "relu" else _CONV_BN_RELU6
        return table[type(conv)](conv, bn, act)
    folded = _fold_eval(fold_conv_bn_eval, conv, bn)
    table = _CONV_RELU if kind == "relu" else _CONV_RELU6
    return table[type(conv)](folded, act)


def fuse_linear_bn(is_qat: bool, linear: nn.Module, bn: nn.Module) -> nn.Module:
    """Linear + BatchNorm1d: eval folds BN into the linear; QAT returns ``LinearBn1d``."""
    if type(linear) is not nn.Linear or type(bn) is not nn.BatchNorm1d:
        raise ValidationError(f"cannot fuse {type(linear).__name__} with {type(bn).__name__}: expected Linear + BatchNorm1d")
    _check_same_mode(linear, bn)
    if is_qat:
        _check_qat_bn(linear, bn, linear.out_features)
        return nni.LinearBn1d(linear, bn)
    return _fold_eval(fold_linear_bn_eval, linear, bn)


def fuse_convtranspose_bn(is_qat: bool, convt: nn.Module, bn: nn.Module) -> nn.Module:
    """ConvTranspose + BN: eval folds BN into the transposed conv (grouped too). No QAT variant exists, so QAT leaves them unfused."""
    _check_conv_bn_types(convt, bn)
    _check_same_mode(convt, bn)
    if is_qat:
        raise FusionSkipped(
            f"{type(convt).__name__} + {type(bn).__name__} has no QAT fused module; both stay separate during QAT"
        )
    return _fold_eval(fold_conv_bn_eval, convt, bn)


def fuse_conv_relu(is_qat: bool, conv: nn.Module, relu: nn.Module) -> nn.Module:
    """Conv + ReLU / ReLU6 -> ``ConvReLU*`` / ``ConvReLU6_*`` (same in eval and QAT)."""
    if type(conv) not in _CONV_RELU:
        raise ValidationError(f"cannot fuse {type(conv).__name__} with an activation: expected Conv1d/2d/3d")
    kind, act = _activation(relu, type(conv).__name__)
    return (_CONV_RELU if kind == "relu" else _CONV_RELU6)[type(conv)](conv, act)


def fuse_linear_relu(is_qat: bool, linear: nn.Module, relu: nn.Module) -> nn.Module:
    """Linear + ReLU / ReLU6 -> ``LinearReLU`` / ``LinearReLU6``."""
    if type(linear) is not nn.Linear:
        raise ValidationError(f"cannot fuse {type(linear).__name__} with an activation: expected Linear")
    kind, act = _activation(relu, "Linear")
    return nni.LinearReLU(linear, act) if kind == "relu" else nni.LinearReLU6(linear, act)


def fuse_bn_relu(is_qat: bool, bn: nn.Module, relu: nn.Module) -> nn.Module:
    """BatchNorm2d/3d + ReLU -> ``BNReLU2d`` / ``BNReLU3d``."""
    if type(bn) not in _BN_RELU or type(relu) is not nn.ReLU:
        raise FusionSkipped(f"{type(bn).__name__} + {type(relu).__name__} has no fused module (BatchNorm2d/3d + ReLU only)")
    return _BN_RELU[type(bn)](bn, relu)


def sequential_wrapper2(sequential: type[nn.Module]) -> Callable[[bool, nn.Module, nn.Module], nn.Module]:
    """A fuser method that puts two modules in the ``sequential`` container, whatever ``is_qat``."""

    def fuser_method(is_qat: bool, m1: nn.Module, m2: nn.Module) -> nn.Module:
        return sequential(m1, m2)

    fuser_method.__name__ = f"fuse_into_{sequential.__name__}"
    return fuser_method


DEFAULT_OP_LIST_TO_FUSER_METHOD: dict[tuple, Callable[..., nn.Module]] = {}
for _conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    _bn = _BN_DIM[_conv]
    DEFAULT_OP_LIST_TO_FUSER_METHOD[(_conv, _bn)] = fuse_conv_bn
    for _act in (nn.ReLU, nn.ReLU6, nn.Hardtanh):
        DEFAULT_OP_LIST_TO_FUSER_METHOD[(_conv, _bn, _act)] = fuse_conv_bn_relu
        DEFAULT_OP_LIST_TO_FUSER_METHOD[(_conv, _act)] = fuse_conv_relu
for _convt in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    DEFAULT_OP_LIST_TO_FUSER_METHOD[(_convt, _BN_DIM[_convt])] = fuse_convtranspose_bn
DEFAULT_OP_LIST_TO_FUSER_METHOD[(nn.Linear, nn.BatchNorm1d)] = fuse_linear_bn
for _act in (nn.ReLU, nn.ReLU6, nn.Hardtanh):
    DEFAULT_OP_LIST_TO_FUSER_METHOD[(nn.Linear, _act)] = fuse_linear_relu
DEFAULT_OP_LIST_TO_FUSER_METHOD[(nn.BatchNorm2d, nn.ReLU)] = fuse_bn_relu
DEFAULT_OP_LIST_TO_FUSER_METHOD[(nn.BatchNorm3d, nn.ReLU)] = fuse_bn_relu


def get_fuser_method(
    op_list: tuple, additional_fuser_method_mapping: dict[tuple, Callable[..., nn.Module]] | None = None
) -> Callable[..., nn.Module]:
    """The fuser method for a tuple of module types in execution order (torch.ao's ``get_fuser_method``)."""
    table = {**DEFAULT_OP_LIST_TO_FUSER_METHOD, **(additional_fuser_method_mapping or {})}
    fuser = table.get(tuple(op_list))
    if fuser is None:
        raise ValidationError(
            f"no fuser method for {tuple(getattr(t, '__name__', t) for t in op_list)}; pass "
            "additional_fuser_method_mapping={(types...): fuser} or set one on the BackendPatternConfig"
        )
    return fuser
del _conv, _bn, _act, _convt
