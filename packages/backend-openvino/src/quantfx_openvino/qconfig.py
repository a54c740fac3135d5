"""Default QConfigMappings for OpenVINO, after NNCF's presets.

``performance`` (the default, NNCF's default preset): symmetric per-channel
int8 weights and symmetric per-tensor activations, so OpenVINO's kernels need
no zero-point compensation. An activation that never goes below zero (after
ReLU / ReLU6) is *unsigned* symmetric (u8, zero point 0, the whole 0..255
grid); a signed one is i8-symmetric, written as uint8 with zero point 128
(OpenVINO's FakeQuantize sees the same symmetric range and runs it as i8).

``mixed`` (NNCF's ``MIXED``): the same weights, asymmetric (affine) uint8
activations, better for activations whose range is far from symmetric
(GELU / swish outputs, un-normalized inputs).

``transformer`` (NNCF's ``model_type=TRANSFORMER``): ``mixed`` qconfigs on
the matmul-like ops only (linear, conv, ``torch.matmul`` / ``bmm``) plus
weight-only embeddings; residual adds, LayerNorm, GELU, softmax and the
layout ops between them stay float, as NNCF's transformer ignored patterns
keep them.

Activation ranges are the *mean* over calibration batches of each batch's
min / max (NNCF's ``MEAN_MINMAX`` range estimator for activations), which
ignores a single outlier batch; weights use their exact min / max.
``statistics="minmax"`` keeps the absolute extremes instead.

On x86 CPUs without VNNI / AMX, weights default to 7 bits ([-63, 63]) so
that u8 x s8 products cannot saturate oneDNN's int16 intermediate
(``quantfx_openvino.devices.cpu_needs_overflow_fix``; NNCF's
``overflow_fix``); pass ``overflow_fix=False`` for a GPU / NPU target.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from quantfx.errors import ValidationError
from quantfx.fake_quantize import FakeQuantize
from quantfx.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from quantfx.qconfig import QConfig
from quantfx.qconfig_mapping import QConfigMapping, build_default_qconfig_mapping
from torch import Tensor

from quantfx_openvino.devices import cpu_needs_overflow_fix

__all__ = [
    "PRESETS",
    "OpenVINOActivationObserver",
    "OpenVINOMovingAverageActivationObserver",
    "get_openvino_qconfig",
    "get_openvino_qconfig_mapping",
]

PRESETS = ("performance", "mixed", "transformer")

# ops OpenVINO computes in float (see backend_config): no qconfig, so no observer is inserted around them
_FLOAT_OPS: tuple[Any, ...] = (
    torch.nn.LayerNorm, F.layer_norm, torch.nn.PReLU,
    torch.nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid", "sigmoid_",
    torch.nn.Hardsigmoid, F.hardsigmoid, "hardsigmoid", "hardsigmoid_",
    torch.nn.Tanh, torch.tanh, F.tanh, "tanh", "tanh_",
    torch.nn.Softmax, F.softmax, torch.softmax, "softmax",
)


class _SignAwareSymmetricMixin:
    """Symmetric uint8 qparams that use the whole grid for non-negative tensors.

    Core's symmetric uint8 always puts the zero point at 128, wasting half of
    the grid on a ReLU output. Here a tensor whose observed minimum is >= 0
    gets zero point ``quant_min`` and ``scale = max / (quant_max - quant_min)``
    (NNCF's unsigned symmetric quantizer); a signed one gets zero point 128 and
    ``scale = max|x| / 127`` (NNCF's signed one: [-128, 127] * scale).
    Affine qschemes keep core's arithmetic.
    """

    def _calculate_qparams(self, min_val: Tensor, max_val: Tensor) -> tuple[Tensor, Tensor]:
        scale, zero_point = super()._calculate_qparams(min_val, max_val)  # type: ignore[misc]
        if self.qscheme != torch.per_tensor_symmetric or self.dtype != torch.uint8:  # type: ignore[attr-defined]
            return scale, zero_point
        qmin, qmax = self.quant_min, self.quant_max  # type: ignore[attr-defined]
        amax = torch.max(-torch.clamp(min_val, max=0.0), torch.clamp(max_val, min=0.0)).reshape(1).float()
        if bool((min_val >= 0).all()):
            scale = torch.max(amax / float(qmax - qmin), self.eps)  # type: ignore[attr-defined]
            zero_point = torch.full_like(zero_point, qmin)
        else:
            half = (qmax - qmin + 1) // 2  # 128 for [0, 255]
            scale = torch.max(amax / float(half - 1), self.eps)  # type: ignore[attr-defined]
            zero_point = torch.full_like(zero_point, qmin + half)
        return scale, zero_point


class OpenVINOActivationObserver(_SignAwareSymmetricMixin, MinMaxObserver):
    """Post-training activation observer: mean (over batches) of per-batch min / max, sign-aware symmetric.

    ``statistics="mean_minmax"`` (default, NNCF's estimator for activations)
    averages each calibration batch's extremes; ``"minmax"`` keeps the
    absolute extremes (core's MinMaxObserver). Measured on pretrained
    EfficientNet-Lite0 (24 calibration crops): ``minmax`` is closer to fp32
    (SQNR 14.7 vs 12.8 dB) but more sensitive to rounding noise: OpenVINO and
    the reference agree at 27.3 vs 30.1 dB, and so do the reference in
    float32 and in float64 (27.4 vs 30.2 dB): it is the quantized model's own
    reproducibility, not OpenVINO computing something else
    (``quantfx_openvino.lowering.layerwise_divergence``: every layer within
    one step, on at most 5 elements in 10^5).
    """

    def __init__(self, statistics: str = "mean_minmax", **kwargs: Any) -> None:
        if statistics not in ("mean_minmax", "minmax"):
            raise ValidationError(
                f"OpenVINOActivationObserver: statistics must be 'mean_minmax' or 'minmax', got {statistics!r}"
            )
        super().__init__(**kwargs)
        self.statistics = statistics
        self.register_buffer("min_sum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("max_sum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("num_batches", torch.tensor(0, dtype=torch.int64))

    def forward(self, x_orig: Tensor) -> Tensor:
        if self.statistics == "minmax" or x_orig.numel() == 0:
            return super().forward(x_orig)
        x = x_orig.detach().to(self.min_val.dtype)
        lo, hi = torch.aminmax(x)
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            return super().forward(x_orig)  # core's observer raises its CalibrationError naming the node
        self.min_sum += lo.double()
        self.max_sum += hi.double()
        self.num_batches += 1
        self.min_val.copy_((self.min_sum / self.num_batches).to(self.min_val.dtype))
        self.max_val.copy_((self.max_sum / self.num_batches).to(self.max_val.dtype))
        return x_orig

    def reset_min_max_vals(self) -> None:
        super().reset_min_max_vals()
        self.min_sum.zero_()
        self.max_sum.zero_()
        self.num_batches.zero_()

    def extra_repr(self) -> str:
        return f"statistics={self.statistics}, {super().extra_repr()}"


class OpenVINOMovingAverageActivationObserver(_SignAwareSymmetricMixin, MovingAverageMinMaxObserver):
    """QAT activation observer: moving-average min / max, sign-aware symmetric."""


def _activation_kwargs(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ValidationError(f"unknown OpenVINO preset {preset!r}; expected one of {', '.join(PRESETS)}")
    qscheme = torch.per_tensor_symmetric if preset == "performance" else torch.per_tensor_affine  # mixed, transformer
    return {"dtype": torch.uint8, "qscheme": qscheme}


def _weight_range(overflow_fix: bool | None) -> tuple[int, int]:
    if overflow_fix is None:
        overflow_fix = cpu_needs_overflow_fix()
    return (-63, 63) if overflow_fix else (-127, 127)


def get_openvino_qconfig(
    preset: str = "performance",
    *,
    is_qat: bool = False,
    overflow_fix: bool | None = None,
    statistics: str = "mean_minmax",
) -> QConfig:
    """The global QConfig of a preset: see the module docstring.

    ``overflow_fix=None`` detects the CPU (7-bit weights on x86 without VNNI / AMX).
    ``statistics``: the post-training activation range estimator (``"mean_minmax"``
    or ``"minmax"``, see ``OpenVINOActivationObserver``); QAT uses moving averages.
    """
    act = _activation_kwargs(preset)
    if statistics not in ("mean_minmax", "minmax"):
        raise ValidationError(
            f"openvino: statistics must be 'mean_minmax' (NNCF's default) or 'minmax', got {statistics!r}"
        )
    qmin, qmax = _weight_range(overflow_fix)
    weight = {"dtype": torch.int8, "qscheme": torch.per_channel_symmetric, "quant_min": qmin, "quant_max": qmax}
    if is_qat:
        return QConfig(
            activation=FakeQuantize.with_args(observer=OpenVINOMovingAverageActivationObserver, quant_min=0, quant_max=255, **act),
            weight=FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, **weight),
        )
    stats = {} if statistics == "mean_minmax" else {"statistics": statistics}  # the default stays out of the partial
    return QConfig(
        activation=OpenVINOActivationObserver.with_args(**act, **stats),
        weight=PerChannelMinMaxObserver.with_args(**weight),
    )


# the matmul-like ops the ``transformer`` preset quantizes (NNCF quantizes only the inputs of these)
_TRANSFORMER_QUANTIZED_OPS: tuple[Any, ...] = (
    torch.nn.Linear, F.linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, F.conv1d, F.conv2d, F.conv3d,
    torch.matmul, torch.bmm, operator.matmul, "matmul", "bmm",
)


# matmuls whose operands are both activations in a transformer (nn.Linear / F.linear carry a weight)
_ACTIVATION_MATMULS: tuple[Any, ...] = (torch.matmul, torch.bmm, operator.matmul, "matmul", "bmm")


def _per_tensor_weight(qconfig: QConfig, is_qat: bool, overflow_fix: bool | None) -> QConfig:
    qmin, qmax = _weight_range(overflow_fix)
    kw = {"dtype": torch.int8, "qscheme": torch.per_tensor_symmetric, "quant_min": qmin, "quant_max": qmax}
    weight = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, **kw) if is_qat else MinMaxObserver.with_args(**kw)
    return QConfig(activation=qconfig.activation, weight=weight)


def get_openvino_qconfig_mapping(
    preset: str = "performance",
    *,
    is_qat: bool = False,
    overflow_fix: bool | None = None,
    statistics: str = "mean_minmax",
) -> QConfigMapping:
    """The ``openvino`` backend's default QConfigMapping for ``preset`` (PTQ, or QAT when ``is_qat``).

    Transposed convolutions get per-tensor weights (OpenVINO's low-precision
    deconvolution takes a per-tensor weight scale); LayerNorm, softmax,
    sigmoid / tanh / hardsigmoid and PReLU get no qconfig: OpenVINO runs them
    in float, so they stay float in the reference model too. ``statistics``:
    see ``get_openvino_qconfig``.
    """
    qconfig = get_openvino_qconfig(preset, is_qat=is_qat, overflow_fix=overflow_fix, statistics=statistics)
    mapping = build_default_qconfig_mapping(
        qconfig, is_qat=is_qat, transpose_qconfig=_per_tensor_weight(qconfig, is_qat, overflow_fix)
    )
    for op in _FLOAT_OPS:
        mapping.set_object_type(op, None)
    if preset == "transformer":
        symmetric = get_openvino_qconfig("performance", is_qat=is_qat, overflow_fix=overflow_fix, statistics=statistics)
        return _transformer_mapping(mapping, qconfig, symmetric)
    return mapping


def _transformer_mapping(default: QConfigMapping, qconfig: QConfig, symmetric: QConfig) -> QConfigMapping:
    """Float by default; matmul-like ops get ``qconfig``, embeddings keep the default's weight-only qconfig.

    A matmul of two activations (attention's Q x K^T) gets ``symmetric``
    activations, as NNCF's transformer model type forces: OpenVINO's fused
    attention kernel takes int8 Q / K only without a zero point; with one it
    runs a separate dequantize per input first.
    """
    mapping = QConfigMapping().set_global(None)
    for op in _TRANSFORMER_QUANTIZED_OPS:
        mapping.set_object_type(op, symmetric if op in _ACTIVATION_MATMULS else qconfig)
    for op in (torch.nn.Embedding, torch.nn.EmbeddingBag):
        mapping.set_object_type(op, default.object_type_qconfigs.get(op))
    return mapping
