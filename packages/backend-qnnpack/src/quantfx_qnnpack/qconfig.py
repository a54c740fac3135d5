"""Default QConfigs / QConfigMappings of the ``qnnpack`` backend (PTQ and QAT).

XNNPACK's native int8 scheme, the same one ExecuTorch's ``XNNPACKQuantizer``
uses: int8 affine activations from a histogram observer with a 2**-12 scale
floor, per-channel symmetric int8 weights in [-127, 127]. No ``reduce_range``:
XNNPACK's kernels do not overflow the way x86 without VNNI does. The qconfigs
are core's (``quantfx.qconfig``); the mapping is core's
``build_default_qconfig_mapping`` with int8 fixed-qparams observers for
sigmoid / tanh, which XNNPACK's QS8 kernels require.
"""

from __future__ import annotations

import torch

from quantfx.fake_quantize import FixedQParamsFakeQuantize
from quantfx.observers import FixedQParamsObserver
from quantfx.qconfig import (
    QConfig,
    default_per_channel_symmetric_qnnpack_qat_qconfig,
    default_per_channel_symmetric_qnnpack_qconfig,
    default_symmetric_qnnpack_qat_qconfig,
    default_symmetric_qnnpack_qconfig,
)
from quantfx.qconfig_mapping import QConfigMapping, build_default_qconfig_mapping

__all__ = [
    "int8_fixed_qparams_0to1_observer",
    "int8_fixed_qparams_neg1to1_observer",
    "get_default_qnnpack_qconfig",
    "get_default_qnnpack_qconfig_mapping",
]

int8_fixed_qparams_0to1_observer = FixedQParamsObserver.with_args(
    scale=1.0 / 256.0, zero_point=-128, dtype=torch.int8, quant_min=-128, quant_max=127
)
"""sigmoid / hardsigmoid / softmax output in int8: XNNPACK's QS8 sigmoid requires (1/256, -128)."""

int8_fixed_qparams_neg1to1_observer = FixedQParamsObserver.with_args(
    scale=2.0 / 256.0, zero_point=0, dtype=torch.int8, quant_min=-128, quant_max=127
)
"""tanh output in int8: (1/128, 0)."""

_FIXED_0TO1_OPS = (
    torch.nn.Hardsigmoid, torch.nn.functional.hardsigmoid, "hardsigmoid", "hardsigmoid_",
    torch.nn.Sigmoid, torch.sigmoid, "sigmoid", "sigmoid_", torch.nn.Softmax, torch.nn.functional.softmax,
    torch.softmax, "softmax",
)
_FIXED_NEG1TO1_OPS = (torch.nn.Tanh, torch.tanh, "tanh", "tanh_")


def get_default_qnnpack_qconfig(is_qat: bool = False, per_channel: bool = True) -> QConfig:
    """int8 activations (scale >= 2**-12) and symmetric int8 weights in [-127, 127]."""
    if is_qat:
        return default_per_channel_symmetric_qnnpack_qat_qconfig if per_channel else default_symmetric_qnnpack_qat_qconfig
    return default_per_channel_symmetric_qnnpack_qconfig if per_channel else default_symmetric_qnnpack_qconfig


def get_default_qnnpack_qconfig_mapping(is_qat: bool = False, per_channel: bool = True) -> QConfigMapping:
    """The default mapping for PTQ (or QAT): core's per-op exceptions, int8 fixed qparams for sigmoid / tanh."""
    qconfig = get_default_qnnpack_qconfig(is_qat, per_channel)
    mapping = build_default_qconfig_mapping(qconfig, is_qat=is_qat)
    weight = qconfig.weight
    for ops, observer in ((_FIXED_0TO1_OPS, int8_fixed_qparams_0to1_observer), (_FIXED_NEG1TO1_OPS, int8_fixed_qparams_neg1to1_observer)):
        activation = FixedQParamsFakeQuantize.with_args(observer=observer) if is_qat else observer
        fixed = QConfig(activation=activation, weight=weight)
        for op in ops:
            mapping.set_object_type(op, fixed)
    return mapping
