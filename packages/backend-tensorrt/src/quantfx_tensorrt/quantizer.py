"""The PT2E ``Quantizer`` of the ``tensorrt`` backend: symmetric int8, zero point 0, everywhere.

The same scheme as the FX defaults (``quantfx_tensorrt.qconfig``), so a model
quantized through ``torch.export`` + ``prepare_pt2e`` exports to the same
TensorRT-ready Q/DQ ONNX as one quantized through ``prepare_fx``:

* activations: int8 [-128, 127] per-tensor symmetric, max calibration
  (MinMax; moving-average MinMax fake-quant for QAT);
* weights: int8 [-127, 127] per-channel symmetric on the output-channel axis;
  transposed convolutions per tensor, as the FX defaults;
* bias float (TensorRT quantizes it itself).

Q/DQ placement follows NVIDIA's explicit-quantization recommendations (and
``backend_config``): on the inputs of convolutions, linear layers (Gemm) and
``matmul``, and of residual adds, with ReLU / ReLU6 fused into the op before
them; ``cat`` and the ops that only move values (pooling, reshapes) share
their input's scale. ``mul``, softmax, layer norm, sigmoid / tanh and the
other activations stay float: TensorRT runs them in float between a DQ and
the next Q. Dynamic quantization is not offered (TensorRT has none for int8).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

from quantfx.fake_quantize import FakeQuantize
from quantfx.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from quantfx.quantizer import PatternQuantizer, QuantizationConfig, QuantizationSpec
from quantfx.quantizer.annotators import PAD_OPS, SHARE_QPARAMS_OPS

from quantfx_tensorrt.qconfig import ACT_QUANT_MAX, ACT_QUANT_MIN, WEIGHT_QUANT_MAX, WEIGHT_QUANT_MIN

__all__ = ["TensorRTQuantizer", "get_tensorrt_quantization_config", "get_tensorrt_quantizer"]


def get_tensorrt_quantization_config(*, is_qat: bool = False, per_channel: bool = True) -> QuantizationConfig:
    """Symmetric int8 activations (per tensor) and weights (per channel unless ``per_channel=False``).

    Cached, so equal arguments give the identical config.
    """
    return _tensorrt_config(bool(is_qat), bool(per_channel))


@functools.lru_cache
def _tensorrt_config(is_qat: bool, per_channel: bool) -> QuantizationConfig:
    act_ctr: Any = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver) if is_qat else MinMaxObserver
    act = QuantizationSpec(
        dtype=torch.int8, quant_min=ACT_QUANT_MIN, quant_max=ACT_QUANT_MAX, qscheme=torch.per_tensor_symmetric,
        observer_or_fake_quant_ctr=act_ctr,
    )
    if per_channel:
        weight_ctr: Any = (
            FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver) if is_qat else PerChannelMinMaxObserver
        )
        weight = QuantizationSpec(
            dtype=torch.int8, quant_min=WEIGHT_QUANT_MIN, quant_max=WEIGHT_QUANT_MAX,
            qscheme=torch.per_channel_symmetric, ch_axis=0, observer_or_fake_quant_ctr=weight_ctr,
        )
    else:
        weight_ctr = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver) if is_qat else MinMaxObserver
        weight = QuantizationSpec(
            dtype=torch.int8, quant_min=WEIGHT_QUANT_MIN, quant_max=WEIGHT_QUANT_MAX,
            qscheme=torch.per_tensor_symmetric, observer_or_fake_quant_ctr=weight_ctr,
        )
    return QuantizationConfig(input_activation=act, output_activation=act, weight=weight, bias=None, is_qat=is_qat)


class TensorRTQuantizer(PatternQuantizer):
    """PT2E quantizer for TensorRT; configurable per region (global / operator type / module type / module name).

    Configs come from :func:`get_tensorrt_quantization_config` (or None to
    keep a region float). Transposed convolutions get the config's weights
    per tensor.
    """

    STATIC_OPS: ClassVar[list[str]] = [
        "linear_relu",
        "linear_hardtanh",
        "linear",
        "conv_relu",
        "conv_hardtanh",
        "conv",
        "conv_transpose_relu",
        "conv_transpose_hardtanh",
        "conv_transpose",
        "matmul",
        "adaptive_avg_pool2d",
        "add_relu",
        "add",
        "cat",
    ]
    PER_TENSOR_WEIGHT_ANNOTATORS: ClassVar[tuple[str, ...]] = ("conv_transpose",)  # no per-channel transposed conv
    #: padding shares its input's qparams, as ``F.pad`` / ``nn.ZeroPad2d`` do in the FX config
    SHARE_QPARAMS_OPS: ClassVar[frozenset] = SHARE_QPARAMS_OPS | PAD_OPS
    DYNAMIC_OPS: ClassVar[list[str]] = []


def get_tensorrt_quantizer(*, is_qat: bool = False) -> TensorRTQuantizer:
    """The quantizer ``quantfx.get_backend("tensorrt").get_quantizer()`` returns: the default config everywhere."""
    return TensorRTQuantizer(get_tensorrt_quantization_config(is_qat=is_qat))
