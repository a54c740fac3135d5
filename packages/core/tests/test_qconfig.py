"""QConfig: construction checks, equality, dtype helpers, and the defaults against torch.ao's."""

from __future__ import annotations

import pytest
import torch

import quantfx.qconfig as qc
from quantfx.dtypes import normalize_dtype
from quantfx.errors import ValidationError
from quantfx.fake_quantize import FakeQuantize, default_fake_quant
from quantfx.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
    default_observer,
)
from quantfx.qconfig import QConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning"),
]

DEFAULT_NAMES = [
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


# ----------------------------------------------------------------------------- construction


def test_qconfig_is_a_namedtuple_of_constructors():
    q = QConfig(activation=MinMaxObserver, weight=None)
    act, weight = q
    assert act is MinMaxObserver and weight is None
    assert q._fields == ("activation", "weight")
    assert q == QConfig(MinMaxObserver, None)


@pytest.mark.parametrize("field", ["activation", "weight"])
def test_qconfig_rejects_observer_instances(field):
    kwargs = {"activation": MinMaxObserver, "weight": MinMaxObserver, field: MinMaxObserver()}
    with pytest.raises(ValidationError) as ei:
        QConfig(**kwargs)
    msg = str(ei.value)
    assert f"observer instance (MinMaxObserver(...)) for {field}" in msg
    assert "pass the class (MinMaxObserver) or MinMaxObserver.with_args(...)" in msg
    assert isinstance(ei.value, ValueError)  # torch.ao raised ValueError: old except clauses still work


def test_qconfig_rejects_non_callables():
    with pytest.raises(ValidationError, match="must be an observer / fake-quantize class"):
        QConfig(activation=torch.quint8, weight=None)
    # with_args partials and fake-quant classes are fine
    QConfig(activation=MinMaxObserver.with_args(quant_max=100), weight=FakeQuantize)


# ----------------------------------------------------------------------------- equality


def test_qconfig_equals_compares_partials_by_value():
    a = QConfig(MinMaxObserver.with_args(quant_min=0, quant_max=127), PerChannelMinMaxObserver.with_args(ch_axis=1))
    b = QConfig(MinMaxObserver.with_args(quant_min=0, quant_max=127), PerChannelMinMaxObserver.with_args(ch_axis=1))
    c = QConfig(MinMaxObserver.with_args(quant_min=0, quant_max=255), PerChannelMinMaxObserver.with_args(ch_axis=1))
    assert qc.qconfig_equals(a, b)
    assert not qc.qconfig_equals(a, c)
    assert not qc.qconfig_equals(a, QConfig(MinMaxObserver, a.weight))
    assert not qc.qconfig_equals(a, QConfig(HistogramObserver.with_args(quant_min=0, quant_max=127), a.weight))
    assert qc.qconfig_equals(None, None) and not qc.qconfig_equals(a, None) and not qc.qconfig_equals(None, a)
    assert qc.qconfig_equals(QConfig(MinMaxObserver, None), QConfig(MinMaxObserver, None))
    assert qc.qconfig_equals(a, a)


def test_qconfig_equals_looks_into_fake_quant_observer_args():
    def fq(qmax):
        return FakeQuantize.with_args(observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.1),
                                      quant_min=0, quant_max=qmax)

    assert qc.qconfig_equals(QConfig(fq(255), None), QConfig(fq(255), None))
    assert not qc.qconfig_equals(QConfig(fq(255), None), QConfig(fq(127), None))
    inner_differs = FakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver.with_args(averaging_constant=0.5), quant_min=0, quant_max=255
    )
    assert not qc.qconfig_equals(QConfig(fq(255), None), QConfig(inner_differs, None))
    assert qc.qconfig_equals(qc.default_qat_qconfig, QConfig(default_fake_quant, qc.default_qat_qconfig.weight))


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    "name, act, weight, dynamic, has_weight, per_channel",
    [
        ("default_qconfig", torch.uint8, torch.int8, False, True, False),
        ("default_per_channel_qconfig", torch.uint8, torch.int8, False, True, True),
        ("default_dynamic_qconfig", torch.uint8, torch.int8, True, True, False),
        ("per_channel_dynamic_qconfig", torch.uint8, torch.int8, True, True, True),
        ("float16_dynamic_qconfig", torch.float16, torch.float16, True, True, False),
        ("float16_static_qconfig", torch.float16, torch.float16, False, True, False),
        ("float_qparams_weight_only_qconfig", torch.float32, torch.uint8, False, True, True),
        ("default_qat_qconfig", torch.uint8, torch.int8, False, True, False),
        ("default_dynamic_qat_qconfig", torch.uint8, torch.int8, True, True, False),
        ("default_weight_only_qconfig", torch.float32, torch.int8, False, True, False),
        ("default_activation_only_qconfig", torch.uint8, torch.float32, False, False, False),
        # NoopObserver's nominal dtype is float16 (as in torch.ao) but it observes nothing
        ("default_reuse_input_qconfig", torch.uint8, torch.float16, False, False, False),
        ("default_symmetric_qnnpack_qconfig", torch.int8, torch.int8, False, True, False),
        ("default_per_channel_symmetric_qnnpack_qat_qconfig", torch.int8, torch.int8, False, True, True),
        ("default_embedding_qat_qconfig", torch.float32, torch.uint8, False, True, True),
    ],
)
def test_dtype_helpers(name, act, weight, dynamic, has_weight, per_channel):
    q = getattr(qc, name)
    assert qc.activation_dtype(q) == act
    assert qc.weight_dtype(q) == weight
    assert qc.activation_is_dynamic(q) is dynamic
    assert qc.qconfig_has_weight(q) is has_weight
    assert qc.weight_is_per_channel(q) is per_channel


def test_helpers_on_missing_parts():
    no_weight = QConfig(activation=default_observer, weight=None)
    assert qc.weight_dtype(no_weight) == torch.float32
    assert not qc.qconfig_has_weight(no_weight) and not qc.qconfig_has_weight(None)
    assert not qc.weight_is_per_channel(None)
    assert qc.activation_dtype(QConfig(activation=None, weight=None)) == torch.float32
    with pytest.raises(ValidationError, match="needs a qconfig, got None"):
        qc.activation_dtype(None)  # type: ignore[arg-type]
    # quantized dtypes given to observers come back plain
    assert qc.activation_dtype(QConfig(PlaceholderObserver.with_args(dtype=torch.quint8), None)) is torch.uint8


def test_is_reuse_input_qconfig():
    assert qc.is_reuse_input_qconfig(qc.default_reuse_input_qconfig)
    assert not qc.is_reuse_input_qconfig(qc.default_qconfig)
    assert not qc.is_reuse_input_qconfig(None)


def test_probe_instantiates_each_constructor_once():
    calls = []

    def ctor():
        calls.append(1)
        return MinMaxObserver(dtype=torch.int8)

    q = QConfig(activation=ctor, weight=ctor)
    for _ in range(5):
        assert qc.activation_dtype(q) is torch.int8
        assert qc.weight_dtype(q) is torch.int8
        assert not qc.activation_is_dynamic(q)
    assert len(calls) == 1
    # a different constructor object is probed on its own
    q2 = QConfig(activation=lambda: MinMaxObserver(dtype=torch.uint8), weight=None)
    assert qc.activation_dtype(q2) is torch.uint8


def test_symmetric_qnnpack_qconfigs_carry_the_minimum_scale():
    for q in (qc.default_symmetric_qnnpack_qconfig, qc.default_per_channel_symmetric_qnnpack_qconfig):
        act = q.activation()
        assert act.eps == 2**-12 and normalize_dtype(act.dtype) is torch.int8
        w = q.weight()
        assert (w.quant_min, w.quant_max) == (-127, 127)
    fq = qc.default_symmetric_qnnpack_qat_qconfig.activation()
    assert fq.activation_post_process.eps == 2**-12
    assert (fq.quant_min, fq.quant_max) == (-128, 127)


def test_qconfig_short():
    assert qc.qconfig_short(None) == "None (float)"
    s = qc.qconfig_short(qc.default_per_channel_qconfig)
    assert s == (
        "act=MinMaxObserver(quant_min=0, quant_max=127), "
        "weight=PerChannelMinMaxObserver(dtype=int8, qscheme=per_channel_symmetric)"
    )


# ----------------------------------------------------------------------------- torch.ao parity


def _describe(ctor):
    if ctor is None:
        return None
    obj = ctor()
    d = {"type": type(obj).__name__}
    for a in ("dtype", "qscheme", "quant_min", "quant_max", "eps", "is_dynamic", "ch_axis", "averaging_constant",
              "scale", "zero_point"):
        if hasattr(obj, a):
            v = getattr(obj, a)
            if isinstance(v, torch.dtype):
                v = normalize_dtype(v)
            if isinstance(v, torch.Tensor):
                v = v.flatten().tolist()
            d[a] = v
    inner = getattr(obj, "activation_post_process", None)
    if inner is not None:
        d["inner"] = _describe(lambda: inner)
    return d


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_defaults_build_the_same_observers_as_torch_ao(name):
    import torch.ao.quantization.qconfig as tq

    ours, theirs = getattr(qc, name), getattr(tq, name)
    assert isinstance(ours, QConfig)
    for field in ("activation", "weight"):
        assert _describe(getattr(ours, field)) == _describe(getattr(theirs, field)), field


def test_all_names_exported():
    for name in DEFAULT_NAMES + ["QConfig", "QConfigAny", "qconfig_equals", "qconfig_has_weight",
                                 "activation_dtype", "weight_dtype", "activation_is_dynamic"]:
        assert name in qc.__all__ and hasattr(qc, name)
