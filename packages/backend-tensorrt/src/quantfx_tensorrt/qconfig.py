"""TensorRT's default QConfigs: symmetric int8 everywhere, zero point 0.

TensorRT's explicit quantization only takes signed int8 with zero point 0
(symmetric), per-tensor for activations and per-channel (output-channel axis)
for weights. Calibration is max-based ("max" / MinMax), as in NVIDIA's
ModelOpt and pytorch-quantization defaults.

- activations: int8 [-128, 127], ``per_tensor_symmetric`` (MinMax for PTQ,
  moving-average MinMax fake-quant for QAT);
- weights: int8 [-127, 127] ``per_channel_symmetric`` on axis 0 (narrow
  range: scale = amax / 127, so +-amax are both representable);
- transposed convolutions: per-tensor weights (their output-channel axis is 1;
  quantfx's default mapping gives them per-tensor weights, as torch.ao does);
- ops whose output range is fixed (sigmoid, tanh, softmax ...) stay float:
  TensorRT runs them in float and quantfx's fixed-qparams presets are uint8.
"""

from __future__ import annotations

import torch

from quantfx.fake_quantize import FakeQuantize
from quantfx.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    NoopObserver,
    ObserverBase,
    PerChannelMinMaxObserver,
    ReuseInputObserver,
)
from quantfx.qconfig import QConfig
from quantfx.qconfig_mapping import QConfigMapping, build_default_qconfig_mapping

__all__ = [
    "ACT_QUANT_MIN",
    "ACT_QUANT_MAX",
    "WEIGHT_QUANT_MIN",
    "WEIGHT_QUANT_MAX",
    "Int8ReuseInputObserver",
    "get_tensorrt_qconfig",
    "get_tensorrt_qconfig_mapping",
]

ACT_QUANT_MIN, ACT_QUANT_MAX = -128, 127
WEIGHT_QUANT_MIN, WEIGHT_QUANT_MAX = -127, 127

_ACT = dict(dtype=torch.int8, qscheme=torch.per_tensor_symmetric, quant_min=ACT_QUANT_MIN, quant_max=ACT_QUANT_MAX)
_WEIGHT_PC = dict(
    dtype=torch.int8, qscheme=torch.per_channel_symmetric, quant_min=WEIGHT_QUANT_MIN, quant_max=WEIGHT_QUANT_MAX, ch_axis=0
)
_WEIGHT_PT = dict(dtype=torch.int8, qscheme=torch.per_tensor_symmetric, quant_min=WEIGHT_QUANT_MIN, quant_max=WEIGHT_QUANT_MAX)

# the fixed-qparams ops build_default_qconfig_mapping presets with uint8 observers
_FLOAT_OPS: tuple[object, ...] = (
    torch.nn.Sigmoid, torch.sigmoid, torch.nn.functional.sigmoid, "sigmoid", "sigmoid_",
    torch.nn.Hardsigmoid, torch.nn.functional.hardsigmoid, "hardsigmoid", "hardsigmoid_",
    torch.nn.Softmax, torch.nn.functional.softmax, torch.softmax, "softmax",
    torch.nn.Tanh, torch.tanh, torch.nn.functional.tanh, "tanh", "tanh_",
)


class Int8ReuseInputObserver(ReuseInputObserver):
    """``ReuseInputObserver`` for int8 activations (core's is fixed to uint8, which TensorRT cannot take).

    ``reshape`` keeps its input's int8 qparams instead of falling back to float
    with an ``UnsupportedQConfigWarning``. Those qparams are symmetric under the
    TensorRT defaults, which ``qscheme`` states for the backend's zero-point-0 check.
    """

    qscheme = torch.per_tensor_symmetric

    def __init__(self) -> None:
        ObserverBase.__init__(self, torch.int8, is_dynamic=False)


def get_tensorrt_qconfig(is_qat: bool = False, per_channel: bool = True) -> QConfig:
    """Symmetric int8 activations (per tensor) and weights (per channel unless ``per_channel=False``)."""
    weight_kwargs = _WEIGHT_PC if per_channel else _WEIGHT_PT
    if is_qat:
        weight_obs = MovingAveragePerChannelMinMaxObserver if per_channel else MovingAverageMinMaxObserver
        return QConfig(
            activation=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **_ACT),
            weight=FakeQuantize.with_args(observer=weight_obs, **weight_kwargs),
        )
    weight_obs = PerChannelMinMaxObserver if per_channel else MinMaxObserver
    return QConfig(activation=MinMaxObserver.with_args(**_ACT), weight=weight_obs.with_args(**weight_kwargs))


def get_tensorrt_qconfig_mapping(is_qat: bool = False) -> QConfigMapping:
    """TensorRT's default mapping for PTQ (``is_qat=False``) or QAT."""
    mapping = build_default_qconfig_mapping(
        get_tensorrt_qconfig(is_qat),
        is_qat=is_qat,
        transpose_qconfig=get_tensorrt_qconfig(is_qat, per_channel=False),
    )
    mapping.set_object_type("reshape", QConfig(activation=Int8ReuseInputObserver, weight=NoopObserver))
    for op in _FLOAT_OPS:
        mapping.set_object_type(op, None)
    return mapping
