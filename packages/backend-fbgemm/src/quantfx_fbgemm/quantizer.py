"""The PT2E ``Quantizer`` of the ``x86`` and ``fbgemm`` backends.

The same scheme as the backends' default QConfigMappings
(``quantfx_fbgemm.qconfig``), written as quantization specs so that a model
quantized through ``torch.export`` + ``prepare_pt2e`` lowers to the same
oneDNN int8 kernels with the same numbers as one quantized through
``prepare_fx``:

* activations: uint8, per-tensor affine, HistogramObserver (PTQ) or fused
  moving-average fake-quant (QAT); 7-bit ([0, 127]) exactly where the FX
  defaults use ``reduce_range`` (always for ``fbgemm``, on CPUs without VNNI
  for ``x86``), because the u8 x s8 kernels saturate otherwise;
* weights: int8 per-channel symmetric (full [-128, 127], torch.ao's
  ``default_per_channel_weight_observer``); float bias;
* dynamic (``is_dynamic=True``): run-time uint8 activations, per-tensor int8
  weights, Linear only -- ``get_dynamic_qconfig``'s scheme.

Patterns: conv / conv-transpose / linear with their ReLU / ReLU6 (hardtanh)
fusions, matmul, add / mul (+ ReLU), cat, adaptive average pooling, and the
share-qparams ops (pooling, reshapes) after a quantized output -- the ops the
oneDNN lowering runs in int8.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

from quantfx.fake_quantize import FusedMovingAvgObsFakeQuantize
from quantfx.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)
from quantfx.quantizer import PatternQuantizer, QuantizationConfig, QuantizationSpec
from quantfx.quantizer.annotators import PAD_OPS, SHARE_QPARAMS_OPS

from quantfx_fbgemm.qconfig import default_reduce_range

__all__ = ["X86Quantizer", "get_x86_quantization_config", "get_x86_quantizer"]


def get_x86_quantization_config(
    backend: str = "x86", *, is_qat: bool = False, is_dynamic: bool = False, reduce_range: bool | None = None
) -> QuantizationConfig:
    """The ``backend``'s ("x86" or "fbgemm") default scheme as a QuantizationConfig (see module docstring).

    ``reduce_range=None`` chooses it as the FX defaults do (``default_reduce_range(backend)``).
    Cached, so equal arguments give the identical config.
    """
    rr = default_reduce_range(backend) if reduce_range is None else reduce_range
    return _x86_config(bool(is_qat), bool(is_dynamic), bool(rr))


@functools.lru_cache
def _x86_config(is_qat: bool, is_dynamic: bool, rr: bool) -> QuantizationConfig:
    act_max = 127 if rr else 255
    if is_dynamic:
        act_ctr: Any = PlaceholderObserver
    elif is_qat:
        act_ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver)
    else:
        act_ctr = HistogramObserver
    act = QuantizationSpec(
        dtype=torch.uint8, quant_min=0, quant_max=act_max, qscheme=torch.per_tensor_affine,
        is_dynamic=is_dynamic, observer_or_fake_quant_ctr=act_ctr,
    )
    if is_dynamic:  # get_dynamic_qconfig: per-tensor symmetric int8 weights
        weight = QuantizationSpec(
            dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
            observer_or_fake_quant_ctr=MinMaxObserver,
        )
    else:
        weight_ctr: Any = (
            FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver)
            if is_qat else PerChannelMinMaxObserver
        )
        weight = QuantizationSpec(
            dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=0,
            observer_or_fake_quant_ctr=weight_ctr,
        )
    return QuantizationConfig(
        input_activation=act, output_activation=None if is_dynamic else act, weight=weight, bias=None, is_qat=is_qat
    )


class X86Quantizer(PatternQuantizer):
    """PT2E quantizer for the oneDNN int8 kernels (``x86`` / ``fbgemm``); configurable per region.

    ``set_global`` / ``set_operator_type`` / ``set_module_type`` /
    ``set_module_name`` take configs from :func:`get_x86_quantization_config`
    (or None to keep a region float).
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
        "mul_relu",
        "mul",
        "cat",
    ]
    #: padding shares its input's qparams, as ``F.pad`` / ``nn.ZeroPad2d`` do in the FX config
    SHARE_QPARAMS_OPS: ClassVar[frozenset] = SHARE_QPARAMS_OPS | PAD_OPS


def get_x86_quantizer(backend: str = "x86", *, is_qat: bool = False, reduce_range: bool | None = None) -> X86Quantizer:
    """The quantizer ``quantfx.get_backend(backend).get_quantizer()`` returns: the default config everywhere."""
    return X86Quantizer(get_x86_quantization_config(backend, is_qat=is_qat, reduce_range=reduce_range))
