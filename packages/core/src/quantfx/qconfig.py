"""QConfig: which observer (or fake-quant) constructors to use for a layer's activation and weight.

Mirrors ``torch/ao/quantization/qconfig`` (same names, same defaults) with
quantfx's observers and plain integer dtypes. Backend-specific defaults
(fbgemm's reduce_range, qnnpack's symmetric ranges ...) live in the backend
packages; the generic ones here are what they are built from.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from typing import Any, Optional

import torch
import torch.nn as nn

from quantfx.dtypes import QUANT_INT_DTYPES, normalize_dtype
from quantfx.errors import ValidationError
from quantfx.fake_quantize import (
    FusedMovingAvgObsFakeQuantize,
    default_dynamic_fake_quant,
    default_embedding_fake_quant,
    default_fake_quant,
    default_fused_act_fake_quant,
    default_fused_wt_fake_quant,
    default_weight_fake_quant,
    fused_per_channel_wt_fake_quant_range_neg_127_to_127,
    fused_wt_fake_quant_range_neg_127_to_127,
)
from quantfx.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    NoopObserver,
    PlaceholderObserver,
    ReuseInputObserver,
    default_debug_observer,
    default_dynamic_quant_observer,
    default_float_qparams_observer,
    default_observer,
    default_per_channel_weight_observer,
    default_placeholder_observer,
    default_reuse_input_observer,
    default_weight_observer,
    per_channel_weight_observer_range_neg_127_to_127,
    weight_observer_range_neg_127_to_127,
)

__all__ = [
    "QConfig",
    "QConfigAny",
    "qconfig_equals",
    "qconfig_short",
    "qconfig_has_weight",
    "activation_dtype",
    "weight_dtype",
    "activation_is_dynamic",
    "weight_is_per_channel",
    "is_reuse_input_qconfig",
    "default_qconfig",
    "default_debug_qconfig",
    "default_per_channel_qconfig",
    "default_dynamic_qconfig",
    "float16_dynamic_qconfig",
    "float16_static_qconfig",
    "per_channel_dynamic_qconfig",
    "float_qparams_weight_only_qconfig",
    "default_quint8_weight_qconfig",
    "default_qat_qconfig",
    "default_dynamic_qat_qconfig",
    "default_weight_only_qconfig",
    "default_activation_only_qconfig",
    "default_qat_qconfig_v2",
    "default_reuse_input_qconfig",
    "default_symmetric_qnnpack_qconfig",
    "default_per_channel_symmetric_qnnpack_qconfig",
    "default_symmetric_qnnpack_qat_qconfig",
    "default_per_channel_symmetric_qnnpack_qat_qconfig",
    "default_embedding_qat_qconfig",
]


def _check_ctor(ctor: Any, field: str) -> None:
    if ctor is None:
        return
    if isinstance(ctor, nn.Module):
        name = type(ctor).__name__
        raise ValidationError(
            f"QConfig received an observer instance ({name}(...)) for {field}; pass the class ({name}) "
            f"or {name}.with_args(...) instead: prepare creates a fresh observer for every tensor it observes"
        )
    if not callable(ctor):
        raise ValidationError(
            f"QConfig {field} must be an observer / fake-quantize class, a .with_args(...) constructor "
            f"or None, got {ctor!r}"
        )


class QConfig(namedtuple("QConfig", ["activation", "weight"])):
    """Observer constructors for a layer's activations and weights.

    Holds constructors (classes or ``.with_args(...)`` partials), never
    instances: prepare calls them once per observed tensor. ``None`` means
    "not observed" (a weight-less op).
    """

    __slots__ = ()

    def __new__(cls, activation: Any, weight: Any) -> QConfig:
        _check_ctor(activation, "activation")
        _check_ctor(weight, "weight")
        return super().__new__(cls, activation, weight)


QConfigAny = Optional[QConfig]
"""A QConfig, or None: leave the op in float."""


# ----------------------------------------------------------------------------- equality


def _partial_of(ctor: Any) -> functools.partial | None:
    if isinstance(ctor, functools.partial):
        return ctor
    p = getattr(ctor, "p", None)  # the `.with_args` wrapper of quantfx and torch.ao keeps a functools.partial here
    return p if isinstance(p, functools.partial) else None


def _value_equals(a: Any, b: Any) -> bool:
    if _partial_of(a) is not None or _partial_of(b) is not None:
        return _ctr_equals(a, b)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _ctr_equals(a: Any, b: Any) -> bool:
    pa, pb = _partial_of(a), _partial_of(b)
    if pa is None or pb is None:
        return pa is None and pb is None and _plain_equals(a, b)
    if pa.func != pb.func or len(pa.args) != len(pb.args) or set(pa.keywords) != set(pb.keywords):
        return False
    if not all(_value_equals(x, y) for x, y in zip(pa.args, pb.args)):
        return False
    return all(_value_equals(pa.keywords[k], pb.keywords[k]) for k in pa.keywords)


def _plain_equals(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def qconfig_equals(q1: QConfigAny, q2: QConfigAny) -> bool:
    """True if both build the same observers: ``.with_args`` partials compare by class and arguments."""
    if q1 is None or q2 is None:
        return q1 is None and q2 is None
    try:
        return _ctr_equals(q1.activation, q2.activation) and _ctr_equals(q1.weight, q2.weight)
    except AttributeError:
        return q1 == q2


def _ctor_short(ctor: Any) -> str:
    """'MinMaxObserver(quant_min=0, quant_max=127)' for a .with_args partial, the class name for a class."""
    if ctor is None:
        return "None"
    p = _partial_of(ctor)
    if p is None:
        return getattr(ctor, "__name__", None) or repr(ctor)
    kw = []
    for k, v in p.keywords.items():
        if _partial_of(v) is not None or isinstance(v, type):
            v_s = _ctor_short(v)
        elif isinstance(v, torch.dtype):
            v_s = str(v).replace("torch.", "")
        elif isinstance(v, torch.qscheme):
            v_s = str(v).replace("torch.", "")
        else:
            v_s = repr(v)
        kw.append(f"{k}={v_s}")
    return f"{getattr(p.func, '__name__', repr(p.func))}({', '.join(kw)})"


def qconfig_short(qconfig: QConfigAny) -> str:
    """One readable line for a qconfig: 'act=MinMaxObserver(...), weight=PerChannelMinMaxObserver(...)'."""
    if qconfig is None:
        return "None (float)"
    return f"act={_ctor_short(qconfig.activation)}, weight={_ctor_short(qconfig.weight)}"


# ----------------------------------------------------------------------------- probing constructors

_PER_CHANNEL_QSCHEMES = (
    torch.per_channel_affine,
    torch.per_channel_symmetric,
    torch.per_channel_affine_float_qparams,
)


class _Probe:
    """What a constructor builds, read once from one instance."""

    __slots__ = ("dtype", "is_dynamic", "qscheme", "types")

    def __init__(self, obs: Any) -> None:
        inner = getattr(obs, "activation_post_process", None)  # fake quantize wraps an observer
        self.dtype = normalize_dtype(getattr(obs, "dtype", None) or getattr(inner, "dtype", None) or torch.float32)
        self.is_dynamic = bool(getattr(obs, "is_dynamic", False) or getattr(inner, "is_dynamic", False))
        self.qscheme = getattr(obs, "qscheme", None) or getattr(inner, "qscheme", None)
        self.types = (type(obs), type(inner)) if inner is not None else (type(obs),)


_PROBE_CACHE: dict[int, tuple[Any, _Probe]] = {}
_PROBE_CACHE_MAX = 512


def _probe(ctor: Any) -> _Probe:
    """Instantiate ``ctor`` once and cache what it builds (keyed by id; the entry keeps ctor alive)."""
    hit = _PROBE_CACHE.get(id(ctor))
    if hit is not None and hit[0] is ctor:
        return hit[1]
    probe = _Probe(ctor())
    if len(_PROBE_CACHE) >= _PROBE_CACHE_MAX:
        _PROBE_CACHE.clear()
    _PROBE_CACHE[id(ctor)] = (ctor, probe)
    return probe


def _require(qconfig: QConfigAny, what: str) -> QConfig:
    if qconfig is None:
        raise ValidationError(f"{what} needs a qconfig, got None (None means the op stays in float)")
    return qconfig


def activation_dtype(qconfig: QConfig) -> torch.dtype:
    """The activation observer's dtype (plain dtype; float32 when the constructor has none, e.g. nn.Identity)."""
    ctor = _require(qconfig, "activation_dtype").activation
    return torch.float32 if ctor is None else _probe(ctor).dtype


def weight_dtype(qconfig: QConfig) -> torch.dtype:
    """The weight observer's dtype (plain dtype; float32 when there is no weight observer)."""
    ctor = _require(qconfig, "weight_dtype").weight
    return torch.float32 if ctor is None else _probe(ctor).dtype


def activation_is_dynamic(qconfig: QConfig) -> bool:
    """True for dynamic quantization: activation qparams are computed at run time."""
    ctor = _require(qconfig, "activation_is_dynamic").activation
    return False if ctor is None else _probe(ctor).is_dynamic


def qconfig_has_weight(qconfig: QConfigAny) -> bool:
    """True if the qconfig quantizes weights (to an integer dtype or float16).

    A NoopObserver weight (default_reuse_input_qconfig) observes nothing, so it
    does not count even though its nominal dtype is float16.
    """
    if qconfig is None or qconfig.weight is None:
        return False
    probe = _probe(qconfig.weight)
    if NoopObserver in probe.types:
        return False
    return probe.dtype in QUANT_INT_DTYPES or probe.dtype == torch.float16


def weight_is_per_channel(qconfig: QConfigAny) -> bool:
    """True if the weight observer is per channel (ConvTranspose cannot take that)."""
    if qconfig is None or qconfig.weight is None:
        return False
    return _probe(qconfig.weight).qscheme in _PER_CHANNEL_QSCHEMES


def is_reuse_input_qconfig(qconfig: QConfigAny) -> bool:
    """True for qconfigs like default_reuse_input_qconfig: the output reuses the input's qparams (reshape)."""
    if qconfig is None or qconfig.activation is None or qconfig.weight is None:
        return False
    return ReuseInputObserver in _probe(qconfig.activation).types and NoopObserver in _probe(qconfig.weight).types


# ----------------------------------------------------------------------------- generic defaults

default_qconfig = QConfig(activation=default_observer, weight=default_weight_observer)
"""Per-tensor MinMax activations (uint8) and weights (int8, symmetric)."""

default_debug_qconfig = QConfig(activation=default_debug_observer, weight=default_weight_observer)
"""Records every activation tensor (RecordingObserver), for debugging numerics."""

default_per_channel_qconfig = QConfig(activation=default_observer, weight=default_per_channel_weight_observer)
"""Per-channel int8 weights."""

default_dynamic_qconfig = QConfig(activation=default_dynamic_quant_observer, weight=default_weight_observer)
"""Dynamic quantization: activation qparams computed per batch, int8 weights."""

float16_dynamic_qconfig = QConfig(
    activation=PlaceholderObserver.with_args(dtype=torch.float16, is_dynamic=True),
    weight=PlaceholderObserver.with_args(dtype=torch.float16),
)
"""Dynamic quantization with float16 weights."""

float16_static_qconfig = QConfig(
    activation=PlaceholderObserver.with_args(dtype=torch.float16),
    weight=PlaceholderObserver.with_args(dtype=torch.float16),
)
"""Activations and weights cast to float16."""

per_channel_dynamic_qconfig = QConfig(
    activation=default_dynamic_quant_observer, weight=default_per_channel_weight_observer
)
"""Dynamic quantization with per-channel int8 weights."""

float_qparams_weight_only_qconfig = QConfig(
    activation=default_placeholder_observer, weight=default_float_qparams_observer
)
"""Weight-only uint8 with float zero points, per row: the embedding qconfig."""

default_quint8_weight_qconfig = QConfig(activation=HistogramObserver, weight=MinMaxObserver)
"""uint8 weights (torch.ao uses it for PReLU, whose weight kernels take quint8)."""

default_qat_qconfig = QConfig(activation=default_fake_quant, weight=default_weight_fake_quant)
"""QAT with FakeQuantize on activations and weights."""


default_dynamic_qat_qconfig = QConfig(activation=default_dynamic_fake_quant, weight=default_weight_fake_quant)
"""QAT for a model that will be dynamically quantized."""

default_weight_only_qconfig = QConfig(activation=torch.nn.Identity, weight=default_weight_fake_quant)
"""Fake-quantize weights only."""

default_activation_only_qconfig = QConfig(activation=default_fake_quant, weight=torch.nn.Identity)
"""Fake-quantize activations only."""

default_qat_qconfig_v2 = QConfig(activation=default_fused_act_fake_quant, weight=default_fused_wt_fake_quant)
"""QAT with the fused observer + fake-quant module (faster training)."""

default_reuse_input_qconfig = QConfig(activation=default_reuse_input_observer, weight=NoopObserver)
"""Ops that do not change values (reshape) reuse their input's observer."""

# XNNPACK needs requantization scales >= 2**-32; with weight scales <= 1 and inputs
# up to 256, an activation scale floor of 2**-12 (via eps) keeps them in range.
default_symmetric_qnnpack_qconfig = QConfig(
    activation=HistogramObserver.with_args(dtype=torch.int8, reduce_range=False, eps=2**-12),
    weight=weight_observer_range_neg_127_to_127,
)
"""int8 activations with a 2**-12 scale floor, symmetric int8 weights in [-127, 127] (XNNPACK)."""

default_per_channel_symmetric_qnnpack_qconfig = QConfig(
    activation=HistogramObserver.with_args(dtype=torch.int8, reduce_range=False, eps=2**-12),
    weight=per_channel_weight_observer_range_neg_127_to_127,
)
"""As default_symmetric_qnnpack_qconfig, with per-channel weights."""

default_symmetric_qnnpack_qat_qconfig = QConfig(
    activation=FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.int8,
        reduce_range=False,
        eps=2**-12,
    ),
    weight=fused_wt_fake_quant_range_neg_127_to_127,
)
"""QAT version of default_symmetric_qnnpack_qconfig."""

default_per_channel_symmetric_qnnpack_qat_qconfig = QConfig(
    activation=FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.int8,
        reduce_range=False,
        eps=2**-12,
    ),
    weight=fused_per_channel_wt_fake_quant_range_neg_127_to_127,
)
"""QAT version of default_per_channel_symmetric_qnnpack_qconfig."""

default_embedding_qat_qconfig = QConfig(
    activation=NoopObserver.with_args(dtype=torch.float32),
    weight=default_embedding_fake_quant,
)
"""QAT for embeddings: float activations, per-row uint8 fake-quantized weights."""
