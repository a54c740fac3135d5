"""A QConfigMapping whose ONNX export ONNX Runtime's CPU provider runs in its int8 kernels.

Why a mapping and not an export option: ONNX Runtime fuses a
``DequantizeLinear -> Conv [-> Clip / Relu] -> QuantizeLinear`` group into
``QLinearConv`` only when nothing float is left between the Conv and the
Quantize. It drops a ReLU / ReLU6 ``Clip`` only when the quantize's range
already makes it redundant, i.e. when the zero point sits at the bottom of the
range (asymmetric activations). Symmetric int8 (zero point 0, what TensorRT
needs) keeps ReLU6's lower bound meaningful, so ONNX Runtime runs such a conv in
float between a DQ and a Q. No rewrite of the exported graph can change that
without changing its numbers: the scale and zero point are chosen at
calibration. Measured on pretrained EfficientNet-Lite0, ONNX Runtime 1.32, 2
threads (docs/how-to/export-onnx.md): TensorRT's symmetric defaults fuse 11 of
49 convs and no add (int8 0.4x the speed of fp32); this mapping fuses 49 of 49
convs and all 9 adds (1.3-2x).

The activations are full-range uint8: a narrowed range (``reduce_range``) is
exported as a ``Clip`` before ``QuantizeLinear`` (ONNX always saturates to the
full dtype range), which blocks the fusion just as ReLU6 does.
"""

from __future__ import annotations

import torch

from quantfx.fake_quantize import FakeQuantize
from quantfx.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from quantfx.qconfig import QConfig
from quantfx.qconfig_mapping import QConfigMapping, build_default_qconfig_mapping

__all__ = ["get_onnxruntime_qconfig", "get_onnxruntime_qconfig_mapping"]

_ACT = dict(dtype=torch.uint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=255)
_WEIGHT = dict(dtype=torch.int8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127, ch_axis=0)


def get_onnxruntime_qconfig(is_qat: bool = False) -> QConfig:
    """Asymmetric full-range uint8 activations, symmetric per-channel int8 weights in [-127, 127]."""
    if is_qat:
        return QConfig(
            activation=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **_ACT),
            weight=FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, **_WEIGHT),
        )
    return QConfig(activation=MinMaxObserver.with_args(**_ACT), weight=PerChannelMinMaxObserver.with_args(**_WEIGHT))


def get_onnxruntime_qconfig_mapping(is_qat: bool = False) -> QConfigMapping:
    """Prepare with this (``backend="reference"``) and export with ``quantfx.onnx.export_onnx`` for ONNX Runtime CPU."""
    return build_default_qconfig_mapping(get_onnxruntime_qconfig(is_qat), is_qat=is_qat)
