"""quantfx.fake_quantize against the torch.ao.quantization oracle, plus node naming and errors."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

import quantfx.fake_quantize as qfq
import quantfx.observers as qobs
from quantfx.errors import CalibrationError, UncalibratedObserverError, ValidationError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.quantization.fake_quantize as tfq
    import torch.ao.quantization.observer as tobs

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning"),
    pytest.mark.filterwarnings("ignore:must run observer before calling calculate_qparams:UserWarning"),
]


def _batches(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * (1.0 + i) + 0.3 * i for i in range(n)]


def _run_both(ours: nn.Module, ref: nn.Module, xs: list[torch.Tensor]) -> None:
    """Same forward outputs, input gradients and qparams buffers on every batch."""
    for x in xs:
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        ya, yb = ours(xa), ref(xb)
        torch.testing.assert_close(ya, yb, atol=0, rtol=0)
        w = torch.linspace(-1, 1, x.numel()).reshape(x.shape)
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, atol=0, rtol=0)
        torch.testing.assert_close(ours.scale, ref.scale, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours.zero_point, ref.zero_point, atol=0, rtol=0)


def _parity_through_toggles(ours: nn.Module, ref: nn.Module, shape: tuple[int, ...]) -> None:
    _run_both(ours, ref, _batches(shape, seed=1))
    # frozen qparams: the observer stops, outputs keep matching
    ours.disable_observer()
    ref.disable_observer()
    frozen = ours.scale.clone()
    frozen_stats = ours.activation_post_process.max_val.clone()
    _run_both(ours, ref, _batches(shape, seed=2))
    torch.testing.assert_close(ours.scale, frozen, atol=0, rtol=0)
    # fake quant off: identity, statistics still update
    ours.enable_observer()
    ref.enable_observer()
    ours.disable_fake_quant()
    ref.disable_fake_quant()
    xs = _batches(shape, seed=3)
    for x in xs:
        torch.testing.assert_close(ours(x), x, atol=0, rtol=0)
        ref(x)
    torch.testing.assert_close(ours.scale, ref.scale, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        ours.activation_post_process.max_val, ref.activation_post_process.max_val, atol=1e-6, rtol=0
    )
    if not isinstance(ours, qfq.FixedQParamsFakeQuantize):
        assert not torch.equal(ours.activation_post_process.max_val, frozen_stats)
    ours.enable_fake_quant()
    ref.enable_fake_quant()
    _run_both(ours, ref, _batches(shape, seed=4))
    s, z = ours.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    torch.testing.assert_close(s, rs, atol=1e-6, rtol=0)
    torch.testing.assert_close(z.to(rz.dtype), rz, atol=0, rtol=0)


FQ_DEFAULTS = [
    ("default_fake_quant", (4, 8)),
    ("default_weight_fake_quant", (4, 8)),
    ("default_per_channel_weight_fake_quant", (6, 3, 2)),
    ("default_embedding_fake_quant", (10, 4)),
    ("default_dynamic_fake_quant", (4, 8)),
    ("default_histogram_fake_quant", (16, 8)),
]


@pytest.mark.parametrize("name, shape", FQ_DEFAULTS, ids=[n for n, _ in FQ_DEFAULTS])
def test_fake_quantize_defaults_match_torch(name, shape):
    ours, ref = getattr(qfq, name)(), getattr(tfq, name)()
    assert ours.dtype in (torch.uint8, torch.int8)
    assert (ours.quant_min, ours.quant_max, ours.qscheme, ours.ch_axis) == (
        ref.quant_min,
        ref.quant_max,
        ref.qscheme,
        ref.ch_axis,
    )
    _parity_through_toggles(ours, ref, shape)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(observer="MinMaxObserver", quant_min=0, quant_max=15, dtype=torch.quint8),
        dict(observer="MovingAverageMinMaxObserver", quant_min=-8, quant_max=7, dtype=torch.qint8,
             qscheme=torch.per_tensor_symmetric, averaging_constant=0.5),
        dict(observer="MovingAveragePerChannelMinMaxObserver", quant_min=-127, quant_max=127, dtype=torch.qint8,
             qscheme=torch.per_channel_symmetric, ch_axis=1),
        dict(observer="PerChannelMinMaxObserver", dtype=torch.quint8, qscheme=torch.per_channel_affine, ch_axis=0),
        dict(observer="MovingAverageMinMaxObserver", dtype=torch.uint8, reduce_range=True),
    ],
    ids=["minmax-4bit", "movavg-sym-4bit", "perchannel-axis1", "perchannel-affine", "plain-uint8-reduce"],
)
def test_custom_fake_quantize_matches_torch(kwargs):
    obs_name = kwargs.pop("observer")
    ours = qfq.FakeQuantize(observer=getattr(qobs, obs_name), **kwargs)
    ref = tfq.FakeQuantize(observer=getattr(tobs, obs_name), **kwargs)
    _parity_through_toggles(ours, ref, (6, 5, 3))


FUSED = [
    ("default_fused_act_fake_quant", (4, 8)),
    ("default_fused_wt_fake_quant", (4, 8)),
    ("default_fused_per_channel_wt_fake_quant", (6, 5)),
    ("fused_wt_fake_quant_range_neg_127_to_127", (4, 8)),
    ("fused_per_channel_wt_fake_quant_range_neg_127_to_127", (6, 5)),
]


@pytest.mark.parametrize("name, shape", FUSED, ids=[n for n, _ in FUSED])
def test_fused_fake_quantize_matches_torch(name, shape):
    ours, ref = getattr(qfq, name)(), getattr(tfq, name)()
    assert isinstance(ours, qfq.FusedMovingAvgObsFakeQuantize)
    assert ours.fake_quant_enabled.dtype == torch.long
    _parity_through_toggles(ours, ref, shape)
    torch.testing.assert_close(ours.activation_post_process.min_val, ref.activation_post_process.min_val)


def test_fused_matches_plain_fake_quantize_for_affine_activations():
    # the fused kernel and observer + fake-quant agree for the usual affine uint8 activation
    fused = qfq.default_fused_act_fake_quant()
    plain = qfq.FakeQuantize(quant_min=0, quant_max=255, dtype=torch.uint8)
    for x in _batches((8, 8), seed=6):
        torch.testing.assert_close(fused(x), plain(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["default_fixed_qparams_range_neg1to1_fake_quant",
                                  "default_fixed_qparams_range_0to1_fake_quant"])
def test_fixed_qparams_fake_quantize_matches_torch(name):
    ours, ref = getattr(qfq, name)(), getattr(tfq, name)()
    xs = [torch.tanh(x) for x in _batches((5, 7), seed=7)] + [torch.linspace(-3, 3, 40)]
    _run_both(ours, ref, xs)
    s, z = ours.calculate_qparams()
    assert float(s) == float(ref.scale) and int(z) == int(ref.zero_point)
    assert ours.scale is ours.activation_post_process.scale
    assert ours.is_calibrated
    ours.disable_fake_quant()
    x = torch.randn(3)
    torch.testing.assert_close(ours(x), x, atol=0, rtol=0)


def test_module_level_toggles_with_apply():
    model = nn.Sequential(nn.Linear(4, 4), qfq.default_fake_quant(), nn.ReLU(), qfq.default_fused_act_fake_quant())
    fqs = [model[1], model[3]]
    model.apply(qfq.disable_observer)
    assert all(int(m.observer_enabled[0]) == 0 for m in fqs)
    model.apply(qfq.disable_fake_quant)
    assert all(int(m.fake_quant_enabled[0]) == 0 for m in fqs)
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x), model[2](model[0](x)))
    assert all(not m.is_calibrated for m in fqs)  # observers were off
    model.apply(qfq.enable_observer)
    model.apply(qfq.enable_fake_quant)
    assert all(int(m.observer_enabled[0]) == 1 and int(m.fake_quant_enabled[0]) == 1 for m in fqs)
    model(x)
    assert all(m.is_calibrated for m in fqs)


# ----------------------------------------------------------------------------- node names and errors


def test_node_name_propagates_to_observer():
    fq = qfq.default_fake_quant()
    assert fq.node_name is None
    fq.node_name = "conv1"
    assert fq.activation_post_process.node_name == "conv1"
    assert fq.node_name == "conv1"
    # and survives copies
    assert copy.deepcopy(fq).activation_post_process.node_name == "conv1"


@pytest.mark.parametrize(
    "factory",
    [qfq.default_fake_quant, qfq.default_per_channel_weight_fake_quant, qfq.default_fused_act_fake_quant,
     qfq.default_fused_per_channel_wt_fake_quant, qfq.default_histogram_fake_quant],
    ids=["fq", "fq-perchannel", "fused", "fused-perchannel", "fq-histogram"],
)
def test_nan_raises_naming_node_and_keeps_state(factory):
    fq = factory()
    fq.node_name = "layer3_add"
    fq(torch.randn(4, 6))
    state = {k: v.clone() for k, v in fq.state_dict().items()}
    bad = torch.randn(4, 6)
    bad[1, 1] = float("nan")
    bad[2, 2] = float("nan")
    with pytest.raises(CalibrationError) as info:
        fq(bad)
    msg = str(info.value)
    assert "node 'layer3_add'" in msg and "2 NaN values" in msg and "calibration data" in msg
    for k, v in fq.state_dict().items():
        torch.testing.assert_close(v, state[k], atol=0, rtol=0)
    fq(torch.randn(4, 6))  # still works afterwards


def test_inf_in_fused_first_batch():
    fq = qfq.default_fused_wt_fake_quant()
    bad = torch.randn(8)
    bad[0] = float("inf")
    with pytest.raises(CalibrationError, match=r"an unnamed observer .*1 \+Inf value"):
        fq(bad)
    assert not fq.is_calibrated


def test_nan_passes_through_when_observer_disabled():
    # with the observer off nothing is observed, so no calibration error (torch.ao behaviour)
    fq = qfq.default_fake_quant()
    fq(torch.randn(4))
    fq.disable_observer()
    out = fq(torch.tensor([float("nan"), 1.0]))
    assert out.shape == (2,)


@pytest.mark.parametrize("factory", [qfq.default_fake_quant, qfq.default_fused_per_channel_wt_fake_quant])
def test_uncalibrated_fake_quant_calculate_qparams(factory):
    fq = factory()
    fq.node_name = "fc_out"
    assert not fq.is_calibrated
    with pytest.raises(UncalibratedObserverError, match="node 'fc_out'.*calibration data"):
        fq.calculate_qparams()
    fq(torch.randn(3, 4))
    assert fq.is_calibrated
    fq.calculate_qparams()


def test_empty_first_batch_keeps_default_qparams():
    fq = qfq.default_fake_quant()
    out = fq(torch.empty(0, 3))
    assert out.shape == (0, 3)
    assert float(fq.scale) == 1.0 and int(fq.zero_point) == 0
    assert not fq.is_calibrated


# ----------------------------------------------------------------------------- validation


def test_invalid_fake_quant_configs():
    with pytest.raises(ValidationError, match="quant_min"):
        qfq.FakeQuantize(quant_min=10, quant_max=0)
    with pytest.raises(ValidationError, match="does not fit"):
        qfq.FakeQuantize(quant_min=-128, quant_max=127, dtype=torch.quint8)
    with pytest.raises(ValidationError, match="does not fit"):
        qfq.FakeQuantize(observer=qobs.MinMaxObserver.with_args(dtype=torch.qint8), quant_min=0, quant_max=255)
    with pytest.raises(ValidationError, match="FixedQParamsObserver"):
        qfq.FixedQParamsFakeQuantize(observer=qobs.MinMaxObserver)
    with pytest.raises(ValidationError, match="MovingAverage"):
        qfq.FusedMovingAvgObsFakeQuantize(observer=qobs.MinMaxObserver)
    with pytest.raises(ValidationError, match="quantfx observer"):
        qfq.FakeQuantize(observer=tobs.MovingAverageMinMaxObserver)


# ----------------------------------------------------------------------------- with_args / serialization


def test_with_args_chaining_and_pickle():
    factory = qfq.FakeQuantize.with_args(observer=qobs.MovingAverageMinMaxObserver, quant_min=0)
    factory = factory.with_args(quant_max=127, dtype=torch.quint8)
    assert factory.p.func is qfq.FakeQuantize and not isinstance(factory, nn.Module)
    fq = pickle.loads(pickle.dumps(factory))()
    assert (fq.quant_min, fq.quant_max, fq.dtype) == (0, 127, torch.uint8)
    assert pickle.loads(pickle.dumps(qfq.default_fused_per_channel_wt_fake_quant)) == (
        qfq.default_fused_per_channel_wt_fake_quant
    )


def _trained(factory, shape=(6, 4)):
    fq = factory()
    fq.node_name = "w"
    for x in _batches(shape, seed=8):
        fq(x)
    return fq


@pytest.mark.parametrize(
    "factory",
    [qfq.default_fake_quant, qfq.default_per_channel_weight_fake_quant, qfq.default_fused_per_channel_wt_fake_quant,
     qfq.default_fixed_qparams_range_0to1_fake_quant, qfq.default_embedding_fake_quant],
    ids=["fq", "fq-perchannel", "fused-perchannel", "fixed", "embedding"],
)
def test_save_load_deepcopy_state_dict(factory):
    fq = _trained(factory)
    x = torch.randn(6, 4)
    expected = fq(x)
    buf = io.BytesIO()
    torch.save(nn.Sequential(fq), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)[0]
    fresh = factory()
    fresh.load_state_dict(fq.state_dict())  # per-channel buffers resize from their initial shape
    for other in (loaded, copy.deepcopy(fq), fresh):
        torch.testing.assert_close(other.scale, fq.scale, atol=0, rtol=0)
        for m in (fq, other):
            m.disable_observer()
        torch.testing.assert_close(other(x), fq(x), atol=0, rtol=0)
        for m in (fq, other):
            m.enable_observer()
    assert loaded.node_name == "w"
    assert expected.shape == x.shape


def test_load_torch_ao_fake_quant_state_dict():
    ref = tfq.default_per_channel_weight_fake_quant()
    for x in _batches((6, 4), seed=9):
        ref(x)
    ours = qfq.default_per_channel_weight_fake_quant()
    ours.load_state_dict(ref.state_dict())
    ours.disable_observer()
    ref.disable_observer()
    x = torch.randn(6, 4)
    torch.testing.assert_close(ours(x), ref(x), atol=0, rtol=0)
    torch.testing.assert_close(ours.calculate_qparams()[0], ref.calculate_qparams()[0], atol=1e-6, rtol=0)


def test_observer_or_fake_quantize_alias():
    assert set(qfq.ObserverOrFakeQuantize.__args__) == {qobs.ObserverBase, qfq.FakeQuantizeBase}
    assert qobs.is_observer_or_fake_quant(qfq.default_fixed_qparams_range_neg1to1_fake_quant())


def test_observer_state_dict_roundtrip_with_fake_quants():
    def make() -> nn.Sequential:
        return nn.Sequential(nn.Linear(4, 4), qfq.default_per_channel_weight_fake_quant(), qfq.default_fake_quant())

    model = make()
    for x in _batches((3, 4), seed=10):
        model(x)
    obs_sd = qobs.get_observer_state_dict(model)
    assert "1.activation_post_process.min_val" in obs_sd and "2.scale" in obs_sd
    assert not any(k.startswith("0.") for k in obs_sd)
    fresh = make()
    qobs.load_observer_state_dict(fresh, obs_sd)
    for a, b in ((model[1], fresh[1]), (model[2], fresh[2])):
        torch.testing.assert_close(a.scale, b.scale, atol=0, rtol=0)
        torch.testing.assert_close(a.calculate_qparams()[0], b.calculate_qparams()[0], atol=0, rtol=0)


def test_fused_fake_quant_rejects_per_channel_axis_other_than_zero():
    from quantfx.errors import ValidationError
    from quantfx.observers import MovingAveragePerChannelMinMaxObserver

    with pytest.raises(ValidationError, match="axis 0 only"):
        qfq.FusedMovingAvgObsFakeQuantize(
            observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
            dtype=torch.int8, qscheme=torch.per_channel_symmetric, ch_axis=1,
        )
