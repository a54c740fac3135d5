"""Fused float modules: containers marking a chain of ops that quantizes as one unit.

``fuse`` replaces ``conv -> relu`` (etc.) with one of these ``nn.Sequential``
subclasses so that prepare puts a single observer after the whole chain and
convert produces one quantized op. Their forward is the plain float chain, so
fusion alone never changes numerics (except BN folding, done by the fuser
methods, which returns plain convs / ConvReLU modules instead).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from quantfx.errors import ValidationError

__all__ = [
    "_FusedModule",
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
    "LinearReLU",
    "LinearReLU6",
    "LinearBn1d",
    "BNReLU2d",
    "BNReLU3d",
]


class _FusedModule(nn.Sequential):
    """Base class of every quantfx fused module; ``isinstance`` checks use it."""

    # the float module types this container expects, in execution order
    _EXPECTED: tuple[type[nn.Module], ...] = ()

    def __init__(self, *mods: nn.Module) -> None:
        if len(mods) == 1 and isinstance(mods[0], OrderedDict):
            # nn.Sequential slicing rebuilds the container from an OrderedDict
            super().__init__(mods[0])
            return
        expected = type(self)._EXPECTED
        got = tuple(type_before_parametrizations(m) for m in mods)
        if len(got) != len(expected) or any(g is not e for g, e in zip(got, expected)):
            raise ValidationError(
                f"{type(self).__name__} fuses {' -> '.join(e.__name__ for e in expected)}; "
                f"got {' -> '.join(g.__name__ for g in got)}. Build it from modules of exactly those types."
            )
        super().__init__(*mods)


class ConvReLU1d(_FusedModule):
    """Conv1d followed by ReLU, quantized as one op."""

    _EXPECTED = (nn.Conv1d, nn.ReLU)


class ConvReLU2d(_FusedModule):
    """Conv2d followed by ReLU, quantized as one op."""

    _EXPECTED = (nn.Conv2d, nn.ReLU)


class ConvReLU3d(_FusedModule):
    """Conv3d followed by ReLU, quantized as one op."""

    _EXPECTED = (nn.Conv3d, nn.ReLU)


class ConvReLU6_1d(_FusedModule):
    """Conv1d followed by ReLU6 (clamp 0..6): the output observer sees the clamped range."""

    _EXPECTED = (nn.Conv1d, nn.ReLU6)


class ConvReLU6_2d(_FusedModule):
    """Conv2d followed by ReLU6 (MobileNet / EfficientNet-Lite): quantizing after the clamp keeps the 0..6 range."""

    _EXPECTED = (nn.Conv2d, nn.ReLU6)


class ConvReLU6_3d(_FusedModule):
    """Conv3d followed by ReLU6 (clamp 0..6): the output observer sees the clamped range."""

    _EXPECTED = (nn.Conv3d, nn.ReLU6)


class ConvBn1d(_FusedModule):
    """Conv1d + BatchNorm1d kept unfolded for QAT (BN folding simulated in training)."""

    _EXPECTED = (nn.Conv1d, nn.BatchNorm1d)


class ConvBn2d(_FusedModule):
    """Conv2d + BatchNorm2d kept unfolded for QAT (BN folding simulated in training)."""

    _EXPECTED = (nn.Conv2d, nn.BatchNorm2d)


class ConvBn3d(_FusedModule):
    """Conv3d + BatchNorm3d kept unfolded for QAT (BN folding simulated in training)."""

    _EXPECTED = (nn.Conv3d, nn.BatchNorm3d)


class ConvBnReLU1d(_FusedModule):
    """Conv1d + BatchNorm1d + ReLU kept unfolded for QAT."""

    _EXPECTED = (nn.Conv1d, nn.BatchNorm1d, nn.ReLU)


class ConvBnReLU2d(_FusedModule):
    """Conv2d + BatchNorm2d + ReLU kept unfolded for QAT."""

    _EXPECTED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)


class ConvBnReLU3d(_FusedModule):
    """Conv3d + BatchNorm3d + ReLU kept unfolded for QAT."""

    _EXPECTED = (nn.Conv3d, nn.BatchNorm3d, nn.ReLU)


class ConvBnReLU6_1d(_FusedModule):
    """Conv1d + BatchNorm1d + ReLU6 kept unfolded for QAT."""

    _EXPECTED = (nn.Conv1d, nn.BatchNorm1d, nn.ReLU6)


class ConvBnReLU6_2d(_FusedModule):
    """Conv2d + BatchNorm2d + ReLU6 kept unfolded for QAT."""

    _EXPECTED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU6)


class ConvBnReLU6_3d(_FusedModule):
    """Conv3d + BatchNorm3d + ReLU6 kept unfolded for QAT."""

    _EXPECTED = (nn.Conv3d, nn.BatchNorm3d, nn.ReLU6)


class LinearReLU(_FusedModule):
    """Linear followed by ReLU, quantized as one op."""

    _EXPECTED = (nn.Linear, nn.ReLU)


class LinearReLU6(_FusedModule):
    """Linear followed by ReLU6, quantized as one op."""

    _EXPECTED = (nn.Linear, nn.ReLU6)


class LinearBn1d(_FusedModule):
    """Linear + BatchNorm1d kept unfolded for QAT."""

    _EXPECTED = (nn.Linear, nn.BatchNorm1d)


class BNReLU2d(_FusedModule):
    """BatchNorm2d followed by ReLU, quantized as one op."""

    _EXPECTED = (nn.BatchNorm2d, nn.ReLU)


class BNReLU3d(_FusedModule):
    """BatchNorm3d followed by ReLU, quantized as one op."""

    _EXPECTED = (nn.BatchNorm3d, nn.ReLU)
