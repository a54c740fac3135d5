"""fuse -> prepare (PTQ / QAT) -> calibrate / train -> convert-to-reference, end to end.

Graph structure after each pass, numerics against float, the errors users
hit, and the guarantees (no mutation, deepcopy / save / load).
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import quantfx
from quantfx.errors import CalibrationError, ExampleInputsError, UncalibratedObserverError, UnsupportedQConfigWarning
from quantfx.fx.custom_config import PrepareCustomConfig
from quantfx.observers import is_observer_or_fake_quant
from quantfx.quantize_fx import convert_fx, convert_to_reference_fx, fuse_fx, prepare_fx, prepare_qat_fx
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data

Q = torch.ops.quantfx

MINMAX_PER_CHANNEL = quantfx.QConfig(
    activation=quantfx.MinMaxObserver.with_args(dtype=torch.uint8),
    weight=quantfx.PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_symmetric),
)


def _mapping():
    return quantfx.QConfigMapping().set_global(MINMAX_PER_CHANNEL)


def _observer_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_module" and is_observer_or_fake_quant(gm.get_submodule(n.target))]


def _calibrated(name, mapping=None):
    model, example = MODEL_SUITE[name]()
    prepared = prepare_fx(model, mapping or _mapping(), example, backend="reference")
    with torch.no_grad():
        for batch in calibration_data(example, n=8):
            prepared(*batch)
    return model, example, prepared


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("name", ["conv_bn_relu", "residual_block", "linear_relu_mlp", "depthwise_separable", "cat_pool_flatten", "nested_custom_modules"])
def test_reference_model_sqnr_against_float(name):
    model, example, prepared = _calibrated(name)
    ref = convert_to_reference_fx(prepared)
    x = next(iter(calibration_data(example, n=1, seed=123)))
    with torch.no_grad():
        assert sqnr(model(*x), ref(*x)) >= 30


# --------------------------------------------------------------------------- graph structure


class ConvBnReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def test_fuse_fx_folds_bn_and_keeps_relu_in_one_module():
    model = ConvBnReLU().eval()
    fused = fuse_fx(model, backend="reference")
    modules = [n for n in fused.graph.nodes if n.op == "call_module"]
    assert len(modules) == 1
    fused_module = fused.get_submodule(modules[0].target)
    assert type(fused_module).__name__ == "ConvReLU2d"
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)


def test_prepare_observes_input_and_output_of_the_fused_conv_only():
    model = ConvBnReLU().eval()
    prepared = prepare_fx(model, _mapping(), (torch.randn(1, 3, 8, 8),), backend="reference")
    observed = [n.args[0].name for n in _observer_nodes(prepared)]
    assert observed == ["x", "conv"]  # no observer between conv and relu: they are one fused op


def test_convert_gives_dq_op_q_with_integer_weights():
    model = ConvBnReLU().eval()
    prepared = prepare_fx(model, _mapping(), (torch.randn(1, 3, 8, 8),), backend="reference")
    prepared(torch.randn(4, 3, 8, 8))
    ref = convert_to_reference_fx(prepared)
    targets = [n.target for n in ref.graph.nodes if n.op == "call_function"]
    assert targets.count(Q.quantize_per_tensor.default) == 2
    assert targets.count(Q.dequantize_per_tensor.default) == 2
    conv = ref.get_submodule("conv")
    assert type(conv).__module__.startswith("quantfx.nn.reference")
    assert conv.weight_int.dtype == torch.int8
    assert not _observer_nodes(ref)


def test_shared_qparams_ops_reuse_one_observer():
    model, example, prepared = _calibrated("cat_pool_flatten")
    observers = _observer_nodes(prepared)
    cat = next(n for n in prepared.graph.nodes if n.target is torch.cat)
    cat_inputs = cat.args[0]
    # both branches of the cat are observed by the same module: one scale, no requantize
    assert len({a.target for a in cat_inputs}) == 1
    cat_out = next(iter(cat.users))
    assert cat_out.target == cat_inputs[0].target
    assert len(observers) >= 3


def test_fixed_qparams_for_sigmoid_with_default_mapping():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))

    mapping = quantfx.build_default_qconfig_mapping(MINMAX_PER_CHANNEL)
    prepared = prepare_fx(M().eval(), mapping, (torch.randn(2, 4),), backend="reference")
    prepared(torch.randn(8, 4) * 5)
    ref = convert_to_reference_fx(prepared)
    q_after_sigmoid = [
        n for n in ref.graph.nodes
        if n.target == Q.quantize_per_tensor.default and getattr(n.args[0], "target", None) is torch.sigmoid
    ]
    assert len(q_after_sigmoid) == 1
    assert q_after_sigmoid[0].args[1:3] == (1.0 / 256.0, 0)


def test_dynamic_linear_quantizes_activations_at_run_time():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(x)

    mapping = quantfx.QConfigMapping().set_object_type(nn.Linear, quantfx.default_dynamic_qconfig)
    model = M().eval()
    prepared = prepare_fx(model, mapping, (torch.randn(2, 8),), backend="reference")
    ref = convert_to_reference_fx(prepared)  # no calibration needed
    targets = [n.target for n in ref.graph.nodes if n.op == "call_function"]
    assert Q.choose_qparams_per_tensor.default in targets
    x = torch.randn(4, 8)
    assert sqnr(model(x), ref(x)) >= 30


def test_none_qconfig_keeps_that_module_float():
    model, example = MODEL_SUITE["conv_bn_relu"]()
    first_conv = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    mapping = _mapping().set_module_name(first_conv, None)
    prepared = prepare_fx(model, mapping, example, backend="reference")
    for batch in calibration_data(example, n=2):
        prepared(*batch)
    ref = convert_to_reference_fx(prepared)
    assert not type(ref.get_submodule(first_conv)).__module__.startswith("quantfx.nn.reference")


def test_convert_time_mapping_can_skip_parts():
    model, example, prepared = _calibrated("linear_relu_mlp")
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    skip = _mapping().set_module_name(linears[-1], None)
    ref = convert_to_reference_fx(prepared, qconfig_mapping=skip)
    assert isinstance(ref.get_submodule(linears[-1]), nn.Linear)
    assert type(ref.get_submodule(linears[0])).__module__.startswith("quantfx.nn.reference")


def test_unsupported_qconfig_warns_with_node_name_and_stays_float():
    int8_activations = quantfx.QConfig(
        activation=quantfx.MinMaxObserver.with_args(dtype=torch.int8),
        weight=quantfx.PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_symmetric),
    )
    model = ConvBnReLU().eval()
    with pytest.warns(UnsupportedQConfigWarning, match="node 'conv'"):
        prepared = prepare_fx(model, quantfx.QConfigMapping().set_global(int8_activations), (torch.randn(1, 3, 8, 8),), backend="reference")
    assert not _observer_nodes(prepared)


def test_minimum_scale_constraint_is_enforced_not_rejected():
    from dataclasses import replace

    from quantfx.backend_config import DTypeConfig, DTypeWithConstraints

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x)

    backend_config = quantfx.get_backend_config("reference")
    act = DTypeWithConstraints(dtype=torch.uint8, scale_min_lower_bound=2 ** -12)
    for config in backend_config.configs:
        if config.pattern is nn.Linear:
            config.set_dtype_configs([DTypeConfig(input_dtype=act, output_dtype=act, weight_dtype=torch.int8, bias_dtype=torch.float)])
    model = Tiny().eval()
    with torch.no_grad():
        model.fc.weight.mul_(1e-4)
        model.fc.bias.zero_()
    prepared = prepare_fx(model, _mapping(), (torch.randn(1, 4) * 1e-4,), backend_config=backend_config)
    prepared(torch.randn(8, 4) * 1e-4)  # calibration alone would give scales ~1e-7
    for node in _observer_nodes(prepared):
        scale, _ = prepared.get_submodule(node.target).calculate_qparams()
        assert float(scale.min()) >= 2 ** -12 - 1e-12
    del replace


# --------------------------------------------------------------------------- QAT


def test_qat_swaps_modules_inserts_fake_quants_trains_and_converts():
    model, example = MODEL_SUITE["conv_bn_relu"]()
    model.train()
    qat_mapping = quantfx.QConfigMapping().set_global(quantfx.default_qat_qconfig)
    prepared = prepare_qat_fx(model, qat_mapping, example, backend="reference")
    kinds = {type(m).__module__ for m in prepared.modules()}
    assert "quantfx.nn.intrinsic.qat.modules" in kinds  # ConvBn(ReLU) QAT module: weight fake-quant + BN folding
    fq = [m for m in prepared.modules() if isinstance(m, quantfx.FakeQuantizeBase)]
    assert fq, "activation fake-quants are inserted in the graph"

    opt = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    for batch in calibration_data(example, n=4):
        opt.zero_grad()
        prepared(*batch).pow(2).mean().backward()
        opt.step()
    prepared.apply(quantfx.disable_observer)
    prepared.apply(quantfx.freeze_bn_stats)
    prepared.eval()
    x = next(iter(calibration_data(example, n=1, seed=7)))
    with torch.no_grad():
        fake_out = prepared(*x)
        ref = convert_to_reference_fx(prepared)
        ref_out = ref(*x)
    # the reference model computes what fake-quant training simulated
    assert sqnr(fake_out, ref_out) >= 30


# --------------------------------------------------------------------------- errors


def test_convert_before_calibration_names_the_observer():
    model, example = MODEL_SUITE["conv_bn_relu"]()
    prepared = prepare_fx(model, _mapping(), example, backend="reference")
    with pytest.raises(UncalibratedObserverError, match="activation_post_process_0|'x'"):
        convert_to_reference_fx(prepared)


def test_nan_in_calibration_names_the_node():
    model = ConvBnReLU().eval()
    prepared = prepare_fx(model, _mapping(), (torch.randn(1, 3, 8, 8),), backend="reference")
    bad = torch.randn(1, 3, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match="'x'"):
        prepared(bad)


def test_example_inputs_that_do_not_run_the_model():
    with pytest.raises(ExampleInputsError, match="ConvBnReLU"):
        prepare_fx(ConvBnReLU().eval(), _mapping(), (torch.randn(1, 5, 8, 8),), backend="reference")


class _CountingLeaf(nn.Module):
    """A non-traceable leaf: its forward really runs whenever the prepared graph (or the model) runs."""

    calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return x * 2


class _WithLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.leaf = _CountingLeaf()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.leaf(self.conv(x))


def test_prepare_runs_the_model_once_on_the_example_inputs():
    config = PrepareCustomConfig().set_non_traceable_module_classes([_CountingLeaf])
    _CountingLeaf.calls = 0
    prepare_fx(_WithLeaf().eval(), _mapping(), (torch.randn(1, 3, 8, 8),), config, backend="reference")
    assert _CountingLeaf.calls == 1  # shape propagation doubles as the example-inputs check


def test_example_inputs_error_shows_what_the_model_was_called_with():
    with pytest.raises(ExampleInputsError, match=r"example_inputs passed: \(Tensor\(shape=\[1, 5, 8, 8\]") as info:
        prepare_fx(ConvBnReLU().eval(), _mapping(), (torch.randn(1, 5, 8, 8),), backend="reference")
    assert "ConvBnReLU.forward(" in str(info.value)


def test_weight_qparams_are_shared_only_for_the_same_unchanged_weight():
    from quantfx.fx.convert import weight_qparams_for

    conv = nn.Conv2d(3, 4, 3)
    qconfig = _mapping().global_qconfig
    first = weight_qparams_for(conv, qconfig, "conv")
    assert weight_qparams_for(conv, qconfig, "conv") is first  # bias correction and convert ask for the same
    with torch.no_grad():
        conv.weight.mul_(3)  # changed in place: computed again
    tripled = weight_qparams_for(conv, qconfig, "conv")
    assert tripled is not first
    torch.testing.assert_close(tripled.scale, first.scale * 3)
    other = quantfx.QConfig(activation=qconfig.activation,
                            weight=quantfx.MinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_tensor_symmetric))
    assert weight_qparams_for(conv, other, "conv").scale.numel() == 1  # another weight observer: its own qparams


def test_quantize_converts_its_own_prepared_model_to_the_same_reference():
    model, example = MODEL_SUITE["residual_block"]()
    data = list(calibration_data(example, n=3))
    prepared = prepare_fx(model, _mapping(), example, backend="reference")
    with torch.no_grad():
        for x in data:
            prepared(*x)
    expected = convert_to_reference_fx(prepared)
    int8 = quantfx.quantize(model, backend="reference", calibration_data=data, example_inputs=example,
                            qconfig_mapping=_mapping(), progress=False, bias_correction=False)
    assert int8.code == expected.code
    torch.testing.assert_close(int8(*example), expected(*example), rtol=0, atol=0)


def test_convert_of_a_float_model_is_a_clear_error():
    with pytest.raises(quantfx.QuantfxError, match="prepare_fx"):
        convert_to_reference_fx(torch.fx.symbolic_trace(ConvBnReLU()))


# --------------------------------------------------------------------------- guarantees


@pytest.mark.parametrize("name", ["conv_bn_relu", "shared_module", "nested_custom_modules"])
def test_no_api_mutates_the_float_model(name):
    model, example = MODEL_SUITE[name]()
    before = copy.deepcopy(model.state_dict())
    modules_before = [(n, type(m)) for n, m in model.named_modules()]
    fuse_fx(model, backend="reference")
    prepared = prepare_fx(model, _mapping(), example, backend="reference")
    for batch in calibration_data(example, n=2):
        prepared(*batch)
    convert_fx(prepared)
    model.train()
    prepare_qat_fx(model, quantfx.QConfigMapping().set_global(quantfx.default_qat_qconfig), example, backend="reference")
    model.eval()
    assert [(n, type(m)) for n, m in model.named_modules()] == modules_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_deepcopy_and_save_load_of_prepared_and_reference_models():
    model, example, prepared = _calibrated("residual_block")
    x = next(iter(calibration_data(example, n=1, seed=5)))

    clone = copy.deepcopy(prepared)
    ref_a = convert_to_reference_fx(prepared)
    ref_b = convert_to_reference_fx(clone)
    torch.testing.assert_close(ref_a(*x), ref_b(*x))

    buf = io.BytesIO()
    torch.save(prepared, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(convert_to_reference_fx(loaded)(*x), ref_a(*x))

    buf = io.BytesIO()
    torch.save(ref_a, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(*x), ref_a(*x))


def test_non_traceable_module_stays_float_and_is_called():
    class Dynamic(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: not symbolically traceable
                return x * 2
            return x

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.dyn = Dynamic()

        def forward(self, x):
            return self.dyn(self.conv(x))

    config = PrepareCustomConfig().set_non_traceable_module_names(["dyn"])
    model = M().eval()
    prepared = prepare_fx(model, _mapping(), (torch.randn(1, 3, 4, 4),), prepare_custom_config=config, backend="reference")
    prepared(torch.randn(64, 3, 4, 4))
    ref = convert_to_reference_fx(prepared)
    assert any(n.op == "call_module" and n.target == "dyn" for n in ref.graph.nodes)
    x = torch.randn(2, 3, 4, 4) * 0.5  # inside the calibrated range
    assert sqnr(model(x), ref(x)) >= 30


def test_input_and_output_quantized_indexes():
    model = ConvBnReLU().eval()
    config = PrepareCustomConfig().set_input_quantized_indexes([0]).set_output_quantized_indexes([0])
    prepared = prepare_fx(model, _mapping(), (torch.randn(1, 3, 8, 8),), prepare_custom_config=config, backend="reference")
    prepared(torch.randn(4, 3, 8, 8))
    ref = convert_to_reference_fx(prepared)
    first = next(n for n in ref.graph.nodes if n.op == "placeholder")
    assert all(u.target == Q.dequantize_per_tensor.default for u in first.users)
    out = next(n for n in ref.graph.nodes if n.op == "output")
    assert out.args[0].target == Q.quantize_per_tensor.default
    q_in = Q.quantize_per_tensor(torch.rand(1, 3, 8, 8), 0.01, 0, 0, 255, torch.uint8)
    assert ref(q_in).dtype == torch.uint8


def test_preserved_attributes_survive_prepare_and_convert():
    model = ConvBnReLU().eval()
    model.version = "v3"
    config = PrepareCustomConfig().set_preserved_attributes(["version"])
    prepared = prepare_fx(model, _mapping(), (torch.randn(1, 3, 8, 8),), prepare_custom_config=config, backend="reference")
    assert prepared.version == "v3"
    prepared(torch.randn(2, 3, 8, 8))
    assert convert_to_reference_fx(prepared).version == "v3"


def test_standalone_module_is_prepared_on_its_own():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return F.relu(self.fc(x))

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.inner(x))

    example = (torch.randn(2, 4),)
    config = PrepareCustomConfig().set_standalone_module_name("inner", _mapping(), example, PrepareCustomConfig(), None)
    model = Outer().eval()
    prepared = prepare_fx(model, _mapping(), example, prepare_custom_config=config, backend="reference")
    assert isinstance(prepared.inner, torch.fx.GraphModule)
    assert _observer_nodes(prepared.inner)
    prepared(torch.randn(256, 4))
    ref = convert_to_reference_fx(prepared)
    assert type(ref.inner.get_submodule("fc")).__module__.startswith("quantfx.nn.reference")
    assert type(ref.get_submodule("fc")).__module__.startswith("quantfx.nn.reference")
    x = torch.randn(16, 4) * 0.5  # inside the calibrated range
    assert sqnr(model(x), ref(x)) >= 30


def test_legacy_quantized_dtypes_are_accepted():
    legacy = quantfx.QConfig(
        activation=quantfx.MinMaxObserver.with_args(dtype=torch.quint8),
        weight=quantfx.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedQConfigWarning)
        prepared = prepare_fx(ConvBnReLU().eval(), quantfx.QConfigMapping().set_global(legacy), (torch.randn(1, 3, 8, 8),), backend="reference")
    assert len(_observer_nodes(prepared)) == 2
