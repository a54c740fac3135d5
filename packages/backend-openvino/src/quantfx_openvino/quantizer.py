"""The PT2E ``Quantizer`` of the ``openvino`` backend: NNCF's presets as quantization specs.

The same scheme as the FX defaults (``quantfx_openvino.qconfig``), so a model
quantized through ``torch.export`` + ``prepare_pt2e`` lowers to the same
OpenVINO FakeQuantize model as one quantized through ``prepare_fx``:

* ``performance`` (default): per-tensor *symmetric* activations, sign-aware
  (u8 with zero point 0 for non-negative tensors, i8-symmetric otherwise;
  ``OpenVINOActivationObserver``, mean of per-batch min / max), per-channel
  symmetric int8 weights -- 7-bit ([-63, 63]) on x86 CPUs without VNNI / AMX
  (NNCF's ``overflow_fix``), [-127, 127] otherwise or with ``overflow_fix=False``;
* ``mixed``: the same weights, per-tensor affine uint8 activations;
* ``transformer`` (where ``quantfx_openvino.qconfig.PRESETS`` has it): ``mixed``
  specs on linear / conv / matmul only (``OpenVINOTransformerQuantizer``);
* transposed convolutions take per-tensor weights (OpenVINO's low-precision
  deconvolution has one weight scale).

Patterns: only what OpenVINO's low-precision transformations run in int8 --
convolution (incl. depthwise and transposed, with ReLU / ReLU6 fused),
MatMul / fully connected, Add / Multiply, Concat, pooling and the layout ops
that share their input's scale. LayerNorm, softmax, sigmoid / tanh / hardswish
and the other activations stay float, as in ``backend_config``.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import torch
from quantfx.errors import ValidationError
from quantfx.fake_quantize import FakeQuantize
from quantfx.observers import (
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from quantfx.quantizer import PatternQuantizer, QuantizationConfig, QuantizationSpec

from quantfx_openvino.qconfig import (
    OpenVINOActivationObserver,
    OpenVINOMovingAverageActivationObserver,
    _activation_kwargs,
    _weight_range,
)

__all__ = ["OpenVINOQuantizer", "OpenVINOTransformerQuantizer", "get_openvino_quantization_config", "get_openvino_quantizer"]


def get_openvino_quantization_config(
    preset: str = "performance",
    *,
    is_qat: bool = False,
    overflow_fix: bool | None = None,
    statistics: str = "mean_minmax",
) -> QuantizationConfig:
    """``preset``'s activation and weight specs (see module docstring); ``overflow_fix=None`` detects the CPU.

    ``statistics``: the post-training activation range estimator, as in
    ``quantfx_openvino.qconfig.get_openvino_qconfig``. Cached, so equal
    arguments give the identical config.
    """
    _activation_kwargs(preset)  # ValidationError naming the presets for an unknown one
    if statistics not in ("mean_minmax", "minmax"):
        raise ValidationError(
            f"openvino: statistics must be 'mean_minmax' (NNCF's default) or 'minmax', got {statistics!r}"
        )
    return _openvino_config(preset, bool(is_qat), _weight_range(overflow_fix), statistics)


@functools.lru_cache
def _openvino_config(
    preset: str, is_qat: bool, weight_range: tuple[int, int], statistics: str = "mean_minmax"
) -> QuantizationConfig:
    act_kwargs = _activation_kwargs(preset)
    qmin, qmax = weight_range
    act_ctr: Any = (
        FakeQuantize.with_args(observer=OpenVINOMovingAverageActivationObserver) if is_qat
        else OpenVINOActivationObserver if statistics == "mean_minmax"
        else OpenVINOActivationObserver.with_args(statistics=statistics)
    )
    act = QuantizationSpec(
        dtype=act_kwargs["dtype"], quant_min=0, quant_max=255, qscheme=act_kwargs["qscheme"],
        observer_or_fake_quant_ctr=act_ctr,
    )
    weight_ctr: Any = (
        FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver) if is_qat else PerChannelMinMaxObserver
    )
    weight = QuantizationSpec(
        dtype=torch.int8, quant_min=qmin, quant_max=qmax, qscheme=torch.per_channel_symmetric, ch_axis=0,
        observer_or_fake_quant_ctr=weight_ctr,
    )
    return QuantizationConfig(input_activation=act, output_activation=act, weight=weight, bias=None, is_qat=is_qat)


class OpenVINOQuantizer(PatternQuantizer):
    """PT2E quantizer for OpenVINO; configurable per region (global / operator type / module type / module name).

    Configs come from :func:`get_openvino_quantization_config` (or None to
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
        "mul_relu",
        "mul",
        "cat",
    ]
    PER_TENSOR_WEIGHT_ANNOTATORS: ClassVar[tuple[str, ...]] = ("conv_transpose",)  # no per-channel transposed conv
    DYNAMIC_OPS: ClassVar[list[str]] = []  # OpenVINO's CPU plugin quantizes fully connected layers dynamically itself


class OpenVINOTransformerQuantizer(OpenVINOQuantizer):
    """The ``transformer`` preset (NNCF's ``model_type=TRANSFORMER``): only the matmul-like ops are quantized.

    Residual adds, LayerNorm, GELU, softmax and the layout ops between them
    stay float, as in the FX ``transformer`` mapping.
    """

    STATIC_OPS: ClassVar[list[str]] = ["linear", "conv", "matmul"]
    STATIC_QAT_ONLY_OPS: ClassVar[list[str]] = []
    SHARE_QPARAMS_OPS: ClassVar[frozenset] = frozenset()


def get_openvino_quantizer(
    preset: str = "performance",
    *,
    is_qat: bool = False,
    overflow_fix: bool | None = None,
    statistics: str = "mean_minmax",
) -> OpenVINOQuantizer:
    """The quantizer ``quantfx.get_backend("openvino").get_quantizer()`` returns: ``preset`` everywhere."""
    config = get_openvino_quantization_config(
        preset, is_qat=is_qat, overflow_fix=overflow_fix, statistics=statistics
    )
    return OpenVINOTransformerQuantizer(config) if preset == "transformer" else OpenVINOQuantizer(config)
