"""quantfx.observers against the torch.ao.quantization oracle, plus quantfx's calibration errors."""

from __future__ import annotations

import copy
import io
import pathlib
import pickle
import re
import warnings

import pytest
import torch
from torch import nn

import quantfx.observers as qobs
from quantfx.errors import CalibrationError, UncalibratedObserverError, ValidationError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import torch.ao.quantization.observer as tobs

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning"),
    pytest.mark.filterwarnings("ignore:must run observer before calling calculate_qparams:UserWarning"),
]

PLAIN = {torch.quint8: torch.uint8, torch.qint8: torch.int8, torch.uint8: torch.uint8, torch.int8: torch.int8}
DTYPES = [torch.uint8, torch.quint8, torch.int8, torch.qint8]
CUSTOM = {  # (unsigned range, signed range)
    None: (None, None),
    "4bit": ((0, 15), (-8, 7)),
    "narrow": ((0, 127), (-127, 127)),
}


def _batches(shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    """Batches whose ranges move around: growing, shrinking, one-signed, so running stats really change."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=g) * 2.0 + 0.5,
        torch.rand(shape, generator=g) * 3.0,  # all positive
        -torch.rand(shape, generator=g) * 0.5,  # all negative
        torch.randn(shape, generator=g) * 5.0 - 1.0,
        torch.randn(shape, generator=g) * 0.1,
    ]


def _range_kwargs(custom: str | None, dtype: torch.dtype) -> dict[str, int]:
    unsigned, signed = CUSTOM[custom]
    rng = unsigned if PLAIN[dtype] == torch.uint8 else signed
    return {} if rng is None else {"quant_min": rng[0], "quant_max": rng[1]}


def _assert_same_qparams(ours: nn.Module, ref: nn.Module) -> None:
    s, z = ours.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    assert s.shape == rs.shape and z.shape == rz.shape
    torch.testing.assert_close(s, rs, atol=1e-6, rtol=0)
    torch.testing.assert_close(z.to(rz.dtype), rz, atol=0, rtol=0)
    assert z.dtype == rz.dtype


def _symmetric_unsigned_reduce(dtype: torch.dtype, qscheme: torch.qscheme, reduce_range: bool) -> bool:
    return reduce_range and PLAIN[dtype] == torch.uint8 and qscheme in (
        torch.per_tensor_symmetric,
        torch.per_channel_symmetric,
    )


# ----------------------------------------------------------------------------- parity: per-tensor


@pytest.mark.parametrize("custom", list(CUSTOM))
@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("qscheme", [torch.per_tensor_affine, torch.per_tensor_symmetric])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["MinMaxObserver", "MovingAverageMinMaxObserver"])
def test_per_tensor_parity(name, dtype, qscheme, reduce_range, custom):
    kwargs = dict(dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, **_range_kwargs(custom, dtype))
    if name == "MovingAverageMinMaxObserver":
        kwargs["averaging_constant"] = 0.3
    if _symmetric_unsigned_reduce(dtype, qscheme, reduce_range):
        # the zero point 128 would fall outside the reduced range; torch.ao only catches this for quint8
        with pytest.raises(ValidationError, match="reduce_range"):
            getattr(qobs, name)(**kwargs)
        return
    ours = getattr(qobs, name)(**kwargs)
    ref = getattr(tobs, name)(**kwargs)
    assert ours.dtype == PLAIN[dtype]
    assert (ours.quant_min, ours.quant_max) == (ref.quant_min, ref.quant_max)
    for x in _batches((4, 8, 5)):
        out = ours(x)
        ref(x)
        assert out is x
        torch.testing.assert_close(ours.min_val, ref.min_val, atol=0, rtol=0)
        torch.testing.assert_close(ours.max_val, ref.max_val, atol=0, rtol=0)
        _assert_same_qparams(ours, ref)


# ----------------------------------------------------------------------------- parity: per-channel


@pytest.mark.parametrize("ch_axis", [0, 1])
@pytest.mark.parametrize("custom", list(CUSTOM))
@pytest.mark.parametrize("reduce_range", [False, True])
@pytest.mark.parametrize("qscheme", [torch.per_channel_affine, torch.per_channel_symmetric])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["PerChannelMinMaxObserver", "MovingAveragePerChannelMinMaxObserver"])
def test_per_channel_parity(name, dtype, qscheme, reduce_range, custom, ch_axis):
    kwargs = dict(
        ch_axis=ch_axis, dtype=dtype, qscheme=qscheme, reduce_range=reduce_range, **_range_kwargs(custom, dtype)
    )
    if name == "MovingAveragePerChannelMinMaxObserver":
        kwargs["averaging_constant"] = 0.3
    if _symmetric_unsigned_reduce(dtype, qscheme, reduce_range):
        with pytest.raises(ValidationError, match="reduce_range"):
            getattr(qobs, name)(**kwargs)
        return
    ours = getattr(qobs, name)(**kwargs)
    ref = getattr(tobs, name)(**kwargs)
    xs = _batches((6, 5, 3), seed=1)
    for x in (xs[0], xs[2], xs[3]):  # mixed signs, all negative, wider: enough to move every channel
        ours(x)
        ref(x)
        torch.testing.assert_close(ours.min_val, ref.min_val, atol=0, rtol=0)
        torch.testing.assert_close(ours.max_val, ref.max_val, atol=0, rtol=0)
        _assert_same_qparams(ours, ref)
    assert ours.calculate_qparams()[0].shape == (x.shape[ch_axis],)


@pytest.mark.parametrize("name", ["PerChannelMinMaxObserver", "MovingAveragePerChannelMinMaxObserver"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.quint8])
def test_float_qparams_parity(name, dtype):
    kwargs = dict(ch_axis=0, dtype=dtype, qscheme=torch.per_channel_affine_float_qparams)
    ours, ref = getattr(qobs, name)(**kwargs), getattr(tobs, name)(**kwargs)
    for x in _batches((10, 7), seed=2):
        ours(x)
        ref(x)
    s, z = ours.calculate_qparams()
    assert z.is_floating_point()
    _assert_same_qparams(ours, ref)


def test_negative_ch_axis_matches_positive():
    x = torch.randn(3, 4, 5)
    a = qobs.PerChannelMinMaxObserver(ch_axis=-1, dtype=torch.int8, qscheme=torch.per_channel_symmetric)
    b = qobs.PerChannelMinMaxObserver(ch_axis=2, dtype=torch.int8, qscheme=torch.per_channel_symmetric)
    a(x)
    b(x)
    torch.testing.assert_close(a.calculate_qparams()[0], b.calculate_qparams()[0])
    assert a.min_val.shape == (5,)


def test_eps_clamps_scale_like_torch():
    # a constant-zero tensor has range 0: both clamp the scale to eps
    for kwargs in (dict(), dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, eps=2**-12)):
        ours, ref = qobs.MinMaxObserver(**kwargs), tobs.MinMaxObserver(**kwargs)
        ours(torch.zeros(4))
        ref(torch.zeros(4))
        _assert_same_qparams(ours, ref)
        assert float(ours.calculate_qparams()[0]) == pytest.approx(kwargs.get("eps", torch.finfo(torch.float32).eps))


def test_symmetric_uint8_zero_point():
    default = qobs.MinMaxObserver(dtype=torch.uint8, qscheme=torch.per_tensor_symmetric)
    custom = qobs.MinMaxObserver(dtype=torch.uint8, qscheme=torch.per_tensor_symmetric, quant_min=0, quant_max=15)
    x = torch.linspace(-2, 3, 50)
    default(x)
    custom(x)
    assert int(default.calculate_qparams()[1]) == 128
    assert int(custom.calculate_qparams()[1]) == 7
    # reduce_range halves a custom range like torch.ao does
    assert (qobs.MinMaxObserver(quant_min=0, quant_max=255, reduce_range=True).quant_max) == 127


# ----------------------------------------------------------------------------- histogram


def _hist_batches(kind: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    if kind == "randn":
        return [torch.randn(64, 32, generator=g) for _ in range(3)]
    if kind == "growing":  # each batch widens the range: exercises the upsample / re-bin path
        return [torch.randn(64, 32, generator=g) * s for s in (0.5, 1.0, 3.0, 2.0)]
    if kind == "outliers":
        xs = [torch.randn(64, 32, generator=g) for _ in range(3)]
        xs[1][0, 0] = 40.0
        xs[2][3, 3] = -25.0
        return xs
    if kind == "relu":
        return [torch.relu(torch.randn(64, 32, generator=g)) * s for s in (1.0, 1.5)]
    if kind == "constant_first":  # first histogram is a single value: the spike path
        return [torch.full((16,), 0.5), torch.randn(64, 32, generator=g)]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(quant_min=0, quant_max=127),
        dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
        dict(dtype=torch.int8, reduce_range=True),
        dict(bins=256),
    ],
    ids=["default", "0-127", "int8-sym", "int8-reduce", "256bins"],
)
@pytest.mark.parametrize("kind", ["randn", "growing", "outliers", "relu", "constant_first"])
def test_histogram_parity(kind, kwargs):
    ours, ref = qobs.HistogramObserver(**kwargs), tobs.HistogramObserver(**kwargs)
    for x in _hist_batches(kind):
        ours(x)
        ref(x)
    torch.testing.assert_close(ours.min_val, ref.min_val, atol=0, rtol=0)
    torch.testing.assert_close(ours.max_val, ref.max_val, atol=0, rtol=0)
    torch.testing.assert_close(ours.histogram, ref.histogram, atol=1e-3, rtol=1e-5)
    s, z = ours.calculate_qparams()
    rs, rz = ref.calculate_qparams()
    bin_width = float(ref.max_val - ref.min_val) / ref.bins
    assert abs(float(s) - float(rs)) <= bin_width
    assert abs(int(z) - int(rz)) <= 1


def test_histogram_qparams_are_reused_only_while_nothing_they_depend_on_changed(monkeypatch):
    obs = qobs.HistogramObserver(dtype=torch.uint8)
    obs(torch.randn(4096) * 2)
    searches = []
    real = qobs.HistogramObserver._non_linear_param_search
    monkeypatch.setattr(qobs.HistogramObserver, "_non_linear_param_search",
                        lambda self: (searches.append(1), real(self))[1])

    def fresh(o):  # the oracle: a new observer with the same state and settings
        clone = copy.deepcopy(o)
        return qobs.HistogramObserver.calculate_qparams(clone)

    first = obs.calculate_qparams()
    again = obs.calculate_qparams()
    assert len(searches) == 1 and all(torch.equal(a, b) for a, b in zip(first, again))
    again[0].mul_(2)  # callers get copies: mutating one does not poison the cache
    assert torch.equal(obs.calculate_qparams()[0], first[0])

    obs(torch.randn(4096) * 5)  # more data: new histogram, new range
    wider = obs.calculate_qparams()
    assert not torch.equal(wider[0], first[0])
    obs.quant_max = 127  # a setting
    narrower = obs.calculate_qparams()
    assert torch.equal(narrower[0], fresh(obs)[0]) and not torch.equal(narrower[0], wider[0])
    obs.load_state_dict({k: v * 0.5 if k != "histogram" else v for k, v in obs.state_dict().items()})
    assert torch.equal(obs.calculate_qparams()[0], fresh(obs)[0]) and not torch.equal(obs.calculate_qparams()[0],
                                                                                       narrower[0])


# ----------------------------------------------------------------------------- calibration errors

STAT_OBSERVERS = [
    lambda: qobs.MinMaxObserver(),
    lambda: qobs.MovingAverageMinMaxObserver(),
    lambda: qobs.PerChannelMinMaxObserver(ch_axis=1),
    lambda: qobs.MovingAveragePerChannelMinMaxObserver(ch_axis=1),
    lambda: qobs.HistogramObserver(),
]
STAT_IDS = ["minmax", "movavg", "perchannel", "movavg_perchannel", "histogram"]


@pytest.mark.parametrize("make", STAT_OBSERVERS, ids=STAT_IDS)
def test_nan_raises_calibration_error_naming_node(make):
    obs = make()
    obs.node_name = "conv1_relu"
    good = torch.randn(4, 6)
    obs(good)
    before = {k: v.clone() for k, v in obs.state_dict().items()}
    bad = torch.randn(4, 6)
    bad[0, 0] = bad[1, 2] = bad[3, 5] = float("nan")
    with pytest.raises(CalibrationError) as info:
        obs(bad)
    msg = str(info.value)
    assert "node 'conv1_relu'" in msg
    assert type(obs).__name__ in msg
    assert "3 NaN values" in msg
    assert "calibration data" in msg
    # the bad batch did not poison the statistics
    for k, v in obs.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0, equal_nan=False)
    obs.calculate_qparams()  # still usable


@pytest.mark.parametrize("make", STAT_OBSERVERS, ids=STAT_IDS)
def test_inf_raises_on_first_batch_unnamed(make):
    obs = make()
    bad = torch.randn(4, 6)
    bad[0, 1] = float("inf")
    bad[2, 2] = float("-inf")
    bad[2, 3] = float("-inf")
    with pytest.raises(CalibrationError) as info:
        obs(bad)
    msg = str(info.value)
    assert "an unnamed observer" in msg
    assert "1 +Inf value" in msg and "2 -Inf values" in msg
    assert not obs.is_calibrated


def test_nan_in_half_input_is_caught():
    obs = qobs.MinMaxObserver()
    with pytest.raises(CalibrationError, match="1 NaN value"):
        obs(torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float16))


@pytest.mark.parametrize("make", STAT_OBSERVERS, ids=STAT_IDS)
def test_uncalibrated_calculate_qparams_raises(make):
    obs = make()
    obs.node_name = "linear_2"
    assert not obs.is_calibrated
    obs(torch.empty(0, 6))  # an empty batch does not count
    assert not obs.is_calibrated
    with pytest.raises(UncalibratedObserverError) as info:
        obs.calculate_qparams()
    msg = str(info.value)
    assert "node 'linear_2'" in msg and type(obs).__name__ in msg
    assert "calibration data" in msg and "before convert" in msg
    assert isinstance(info.value, CalibrationError)
    obs(torch.randn(3, 6))
    assert obs.is_calibrated
    scale, _ = obs.calculate_qparams()
    assert float(scale.min()) > 0 and float(scale.max()) != 1.0


def test_reset_min_max_vals_uncalibrates():
    for obs in (qobs.MinMaxObserver(), qobs.PerChannelMinMaxObserver()):
        obs(torch.randn(3, 4))
        assert obs.is_calibrated
        obs.reset_min_max_vals()
        assert not obs.is_calibrated
        with pytest.raises(UncalibratedObserverError):
            obs.calculate_qparams()


def test_stateless_observers_are_calibrated_and_have_no_qparams():
    for obs in (qobs.PlaceholderObserver(), qobs.NoopObserver(), qobs.ReuseInputObserver()):
        assert obs.is_calibrated
        obs.node_name = "n"
        with pytest.raises(ValidationError, match="node 'n'"):
            obs.calculate_qparams()
        x = torch.randn(3)
        assert obs(x) is x
    fixed = qobs.default_fixed_qparams_range_0to1_observer()
    assert fixed.is_calibrated
    s, z = fixed.calculate_qparams()
    assert float(s) == 1.0 / 256.0 and int(z) == 0 and fixed.dtype == torch.uint8
    rec = qobs.RecordingObserver()
    assert not rec.is_calibrated
    rec(torch.ones(2))
    assert rec.is_calibrated and len(rec.get_tensor_value()) == 1


def test_node_name_defaults_to_none():
    for cls in (qobs.MinMaxObserver, qobs.HistogramObserver, qobs.PlaceholderObserver, qobs.ReuseInputObserver):
        assert cls().node_name is None


def test_placeholder_compute_dtype_marks_dynamic():
    assert qobs.PlaceholderObserver(dtype=torch.quint8, compute_dtype=torch.quint8).is_dynamic
    dyn = qobs.default_dynamic_quant_observer()
    assert dyn.is_dynamic and dyn.dtype == torch.uint8 and (dyn.quant_min, dyn.quant_max) == (0, 255)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: qobs.MinMaxObserver(qscheme=torch.per_channel_affine), "per_tensor"),
        (lambda: qobs.PerChannelMinMaxObserver(qscheme=torch.per_tensor_affine), "per_channel"),
        (lambda: qobs.HistogramObserver(qscheme=torch.per_channel_symmetric), "per_tensor"),
        (lambda: qobs.MinMaxObserver(dtype=torch.float32), "dtype"),
        (lambda: qobs.MinMaxObserver(quant_min=5, quant_max=10), "include 0"),
        (lambda: qobs.MinMaxObserver(quant_min=0, quant_max=0), "smaller"),
        (lambda: qobs.MinMaxObserver(quant_min=0), "both or neither"),
        (lambda: qobs.MinMaxObserver(dtype=torch.int8, quant_min=0, quant_max=255), "does not fit"),
        (lambda: qobs.MovingAverageMinMaxObserver(is_dynamic=True), "averaging_constant"),
        (lambda: qobs.PerChannelMinMaxObserver(is_dynamic=True), "dynamic"),
        (lambda: qobs.FixedQParamsObserver(0.1, 0, quant_min=10, quant_max=0), "quant_min"),
    ],
)
def test_invalid_configs_raise_validation_error(make, match):
    with pytest.raises(ValidationError, match=match):
        make()


def test_unknown_kwarg_is_rejected():
    with pytest.raises(TypeError):
        qobs.MinMaxObserver(averaging_constant=0.1)


def test_per_channel_shape_errors():
    obs = qobs.PerChannelMinMaxObserver(ch_axis=2)
    obs.node_name = "w"
    with pytest.raises(ValidationError, match="ch_axis=2"):
        obs(torch.randn(3, 4))
    obs = qobs.PerChannelMinMaxObserver(ch_axis=0)
    obs(torch.randn(3, 4))
    with pytest.raises(ValidationError, match="channels"):
        obs(torch.randn(5, 4))


# ----------------------------------------------------------------------------- with_args


def test_with_args_chaining_and_fresh_instances():
    factory = qobs.MinMaxObserver.with_args(dtype=torch.qint8).with_args(qscheme=torch.per_tensor_symmetric)
    factory = factory.with_args(dtype=torch.int8, quant_min=-127, quant_max=127)
    assert not isinstance(factory, nn.Module)
    assert factory.p.func is qobs.MinMaxObserver
    assert factory.keywords == dict(dtype=torch.int8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127)
    a, b = factory(), factory()
    assert a is not b and a.min_val is not b.min_val
    assert (a.dtype, a.qscheme, a.quant_min, a.quant_max) == (torch.int8, torch.per_tensor_symmetric, -127, 127)
    # call-time keywords win
    assert factory(quant_min=-8, quant_max=7).quant_max == 7


def test_with_callable_args():
    calls = []

    def make_eps() -> float:
        calls.append(1)
        return 0.5

    factory = qobs.MinMaxObserver.with_callable_args(eps=make_eps).with_args(dtype=torch.qint8)
    obs1, obs2 = factory(), factory()
    assert len(calls) == 2 and float(obs1.eps) == 0.5 and obs2.dtype == torch.int8
    # a later static value replaces the callable, and vice versa
    assert float(factory.with_args(eps=0.25)().eps) == 0.25
    assert len(calls) == 2
    assert float(qobs.MinMaxObserver.with_args(eps=0.25).with_callable_args(eps=make_eps)().eps) == 0.5


def test_with_args_pickle_and_equality():
    factory = qobs.default_per_channel_weight_observer.with_args(ch_axis=1)
    clone = pickle.loads(pickle.dumps(factory))
    assert clone == factory and hash(clone) == hash(factory)
    assert clone != qobs.default_per_channel_weight_observer
    obs = clone()
    assert isinstance(obs, qobs.PerChannelMinMaxObserver) and obs.ch_axis == 1 and obs.dtype == torch.int8
    assert qobs.MinMaxObserver.with_args(eps=1e-3) == qobs.MinMaxObserver.with_args(eps=1e-3)
    assert qobs.MinMaxObserver.with_args(eps=1e-3) != qobs.HistogramObserver.with_args(eps=1e-3)


DEFAULT_PAIRS = [
    "default_observer",
    "default_weight_observer",
    "weight_observer_range_neg_127_to_127",
    "default_histogram_observer",
    "default_per_channel_weight_observer",
    "per_channel_weight_observer_range_neg_127_to_127",
    "default_float_qparams_observer",
    "default_fixed_qparams_range_neg1to1_observer",
    "default_fixed_qparams_range_0to1_observer",
]


@pytest.mark.parametrize("name", DEFAULT_PAIRS)
def test_defaults_match_torch(name):
    ours, ref = getattr(qobs, name)(), getattr(tobs, name)()
    assert type(ours).__name__ == type(ref).__name__
    assert ours.dtype == PLAIN[ref.dtype]
    assert (ours.quant_min, ours.quant_max, ours.qscheme) == (ref.quant_min, ref.quant_max, ref.qscheme)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(4))
    ours(x)
    ref(x)
    _assert_same_qparams(ours, ref)


def test_stateless_defaults():
    assert qobs.default_placeholder_observer is qobs.PlaceholderObserver
    assert qobs.default_reuse_input_observer is qobs.ReuseInputObserver
    assert qobs.default_debug_observer is qobs.RecordingObserver
    four = qobs.default_float_qparams_observer_4bit()
    assert (four.quant_min, four.quant_max, four.dtype) == (0, 15, torch.uint8)


# ----------------------------------------------------------------------------- serialization


def _fresh_model() -> nn.Sequential:
    return nn.Sequential(
        qobs.MinMaxObserver(),
        qobs.MovingAverageMinMaxObserver(averaging_constant=0.5),
        qobs.PerChannelMinMaxObserver(ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
        qobs.HistogramObserver(bins=128),
        nn.Linear(6, 6),
    )


def _calibrated_model() -> nn.Sequential:
    model = _fresh_model()
    for i, m in enumerate(model[:4]):
        m.node_name = f"node_{i}"
    for x in _batches((5, 6), seed=5):
        model(x)
    return model


def _qparams(model: nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [m.calculate_qparams() for m in model[:4]]


def _assert_models_equal(a: nn.Sequential, b: nn.Sequential) -> None:
    for (s1, z1), (s2, z2) in zip(_qparams(a), _qparams(b)):
        torch.testing.assert_close(s1, s2, atol=0, rtol=0)
        torch.testing.assert_close(z1, z2, atol=0, rtol=0)


def test_torch_save_load_and_deepcopy_keep_state_and_node_names():
    model = _calibrated_model()
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for other in (loaded, copy.deepcopy(model)):
        _assert_models_equal(model, other)
        assert [m.node_name for m in other[:4]] == ["node_0", "node_1", "node_2", "node_3"]
        assert all(m.is_calibrated for m in other[:4])
    # the copy is independent
    copied = copy.deepcopy(model)
    copied[0](torch.full((3,), 100.0))
    assert float(model[0].max_val) < 100.0


def test_state_dict_into_fresh_observers():
    model = _calibrated_model()
    fresh = _fresh_model()
    assert fresh[2].min_val.shape == (0,)
    fresh.load_state_dict(model.state_dict())
    assert fresh[2].min_val.shape == (6,)
    _assert_models_equal(model, fresh)


def test_load_torch_ao_state_dict():
    x = torch.randn(7, 4)
    pairs = [
        (tobs.PerChannelMinMaxObserver(ch_axis=1), qobs.PerChannelMinMaxObserver(ch_axis=1)),
        (tobs.HistogramObserver(), qobs.HistogramObserver()),
        (tobs.MinMaxObserver(), qobs.MinMaxObserver()),
    ]
    for ref, ours in pairs:
        ref(x)
        ours.load_state_dict(ref.state_dict())
        _assert_same_qparams(ours, ref)


def test_get_and_load_observer_state_dict():
    model = _calibrated_model()
    obs_sd = qobs.get_observer_state_dict(model)
    assert not any(k.startswith("4.") for k in obs_sd)  # the Linear's weights are not observer state
    assert "2.min_val" in obs_sd
    fresh = _fresh_model()
    qobs.load_observer_state_dict(fresh, obs_sd)
    _assert_models_equal(model, fresh)
    del obs_sd["0.min_val"]
    with pytest.raises(ValidationError, match="0.min_val"):
        qobs.load_observer_state_dict(fresh, obs_sd)


def test_is_observer_or_fake_quant():
    from quantfx.fake_quantize import FakeQuantize

    assert qobs.is_observer_or_fake_quant(qobs.MinMaxObserver())
    assert qobs.is_observer_or_fake_quant(qobs.ReuseInputObserver())
    assert qobs.is_observer_or_fake_quant(FakeQuantize())
    assert not qobs.is_observer_or_fake_quant(nn.ReLU())
    assert not qobs.is_observer_or_fake_quant(qobs.MinMaxObserver)  # a class is not an instance
    assert not qobs.is_observer_or_fake_quant(tobs.MinMaxObserver())  # torch.ao's are foreign
    from quantfx.observers import ObserverOrFakeQuantize

    assert qobs.ObserverBase in ObserverOrFakeQuantize.__args__


def test_core_modules_do_not_import_torch_ao():
    src = pathlib.Path(qobs.__file__).parent
    for name in ("observers.py", "fake_quantize.py"):
        text = (src / name).read_text()
        assert not re.search(r"^\s*(from|import)\s+torch\.ao\b", text, re.M), name
        assert "import_module" not in text and "__import__" not in text, name
