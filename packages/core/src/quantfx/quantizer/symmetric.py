"""``SymmetricQuantizer``: the generic XNNPACK-style quantizer every backend can start from.

int8 activations (affine, [-128, 127], histogram observer), int8 symmetric
weights ([-127, 127], per tensor or per channel), float bias: the scheme
XNNPACK, QNNPACK, TFLite and most accelerators run natively. It is the
``reference`` backend's PT2E quantizer; a backend subclasses it and changes
the config, the annotator list (``STATIC_OPS``) or the share-qparams ops::

    class MyQuantizer(SymmetricQuantizer):
        STATIC_OPS = ["my_fused_op", *SymmetricQuantizer.STATIC_OPS]

The configs and the annotated patterns match executorch's ``XNNPACKQuantizer``
(torchao's, formerly torch.ao's; ``get_symmetric_quantization_config`` takes
the same arguments) using quantfx's observers: without the ReLU6 / Hardtanh
fusions the two produce bit-identical models (tests/test_pt2e_oracle.py).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch

from quantfx.quantizer.annotators import QuantizationConfig
from quantfx.quantizer.pattern import PatternQuantizer
from quantfx.quantizer.quantizer import QuantizationSpec

__all__ = ["SymmetricQuantizer", "get_symmetric_quantization_config", "QuantizationConfig"]


@functools.lru_cache
def get_symmetric_quantization_config(
    is_per_channel: bool = False,
    is_qat: bool = False,
    is_dynamic: bool = False,
    act_qmin: int = -128,
    act_qmax: int = 127,
    weight_qmin: int = -127,
    weight_qmax: int = 127,
) -> QuantizationConfig:
    """int8 activations / int8 symmetric weights, for PTQ, QAT (``is_qat``) or dynamic activations.

    Same arguments and observers as torchao's XNNPACK config: HistogramObserver
    activations (PTQ), fused moving-average fake-quants (QAT), MinMax /
    PerChannelMinMax weights; eps 2**-12 everywhere. Cached, so equal arguments
    give the identical config object.
    """
    from quantfx.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize
    from quantfx.observers import (
        HistogramObserver,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
        PlaceholderObserver,
    )

    act_args: dict[str, Any] = {"eps": 2**-12}
    act_ctr: Any
    if is_qat:
        if is_dynamic:
            act_ctr = FakeQuantize
            act_args["observer"] = MovingAverageMinMaxObserver.with_args(averaging_constant=1)
        else:
            act_ctr = FusedMovingAvgObsFakeQuantize
    else:
        act_ctr = PlaceholderObserver if is_dynamic else HistogramObserver
    act = QuantizationSpec(
        dtype=torch.int8,
        quant_min=act_qmin,
        quant_max=act_qmax,
        qscheme=torch.per_tensor_affine,
        is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=act_ctr.with_args(**act_args),
    )
    weight_qscheme = torch.per_channel_symmetric if is_per_channel else torch.per_tensor_symmetric
    weight_args: dict[str, Any] = {"eps": 2**-12}
    weight_ctr: Any
    if is_qat:
        weight_ctr = FusedMovingAvgObsFakeQuantize
        weight_args["observer"] = MovingAveragePerChannelMinMaxObserver if is_per_channel else MovingAverageMinMaxObserver
    else:
        weight_ctr = PerChannelMinMaxObserver if is_per_channel else MinMaxObserver
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=weight_qmin,
        quant_max=weight_qmax,
        qscheme=weight_qscheme,
        ch_axis=0,
        observer_or_fake_quant_ctr=weight_ctr.with_args(**weight_args),
    )
    return QuantizationConfig(
        input_activation=act,
        output_activation=None if is_dynamic else act,
        weight=weight,
        bias=None,
        is_qat=is_qat,
    )


class SymmetricQuantizer(PatternQuantizer):
    """XNNPACK-style quantizer: a global config, overridable per module name, module type or operator type.

    Precedence: ``set_module_name`` > ``set_module_type`` > ``set_operator_type`` > ``set_global``.
    A config of None leaves that part in float. ``STATIC_QAT_ONLY_OPS`` /
    ``STATIC_OPS`` / ``DYNAMIC_OPS`` name annotators in
    ``quantfx.quantizer.annotators.ANNOTATORS``, fusions first (see
    :class:`quantfx.quantizer.PatternQuantizer` for the machinery).
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
        "adaptive_avg_pool2d",
        "add_relu",
        "add",
        "mul_relu",
        "mul",
        "cat",
    ]
