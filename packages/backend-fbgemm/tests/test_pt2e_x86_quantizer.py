"""The x86 / fbgemm PT2E Quantizer: the FX defaults' scheme, lowered to the oneDNN kernels.

The conformance kit (tests/test_conformance.py) checks PT2E against FX on the
whole model suite (test_pt2e_matches_fx); these tests check the scheme
itself against the FX QConfigMapping's observers, the lowering's structure,
QAT, dynamic linear and per-region configuration.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import quantfx
import quantfx.api
from quantfx.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from quantfx.quantizer import Q_ANNOTATION_KEY
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data

from quantfx_fbgemm import kernels
from quantfx_fbgemm.qconfig import default_reduce_range, get_default_qat_qconfig, get_default_qconfig
from quantfx_fbgemm.quantizer import X86Quantizer, get_x86_quantization_config, get_x86_quantizer

aten = torch.ops.aten


def _pt2e(name: str, quantizer, *, qat: bool = False):
    model, example_inputs = MODEL_SUITE[name]()
    exported = torch.export.export(model, example_inputs).module()
    prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(exported, quantizer)
    with torch.no_grad():
        for x in [example_inputs, *calibration_data(example_inputs, n=4, seed=0)]:
            prepared(*x)
    return model, example_inputs, convert_pt2e(prepared)


def _lower(converted, example_inputs, backend: str = "x86"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantfx.api.lower(converted, backend, example_inputs)


@pytest.mark.parametrize("backend", ["x86", "fbgemm"])
def test_backend_returns_its_quantizer(backend: str) -> None:
    quantizer = quantfx.get_backend(backend).get_quantizer()
    assert isinstance(quantizer, X86Quantizer)
    assert quantizer.global_config is get_x86_quantization_config(backend)
    qat = quantfx.get_backend(backend).get_quantizer(is_qat=True)
    assert qat.global_config.is_qat and qat.global_config is get_x86_quantization_config(backend, is_qat=True)


@pytest.mark.parametrize("backend", ["x86", "fbgemm"])
def test_activation_range_follows_the_fx_defaults_reduce_range(backend: str) -> None:
    """7-bit activations exactly where the FX mapping uses reduce_range (always for fbgemm)."""
    config = get_x86_quantization_config(backend)
    act = config.input_activation
    assert (act.dtype, act.qscheme, act.quant_min) == (torch.uint8, torch.per_tensor_affine, 0)
    assert act.quant_max == (127 if default_reduce_range(backend) else 255)
    assert get_x86_quantization_config("fbgemm").input_activation.quant_max == 127
    assert get_x86_quantization_config(backend, reduce_range=False).input_activation.quant_max == 255
    weight = config.weight
    assert (weight.dtype, weight.qscheme, weight.ch_axis) == (torch.int8, torch.per_channel_symmetric, 0)


def _observer_from_spec(spec):
    return spec.observer_or_fake_quant_ctr.with_args(
        dtype=spec.dtype, quant_min=spec.quant_min, quant_max=spec.quant_max, qscheme=spec.qscheme,
        **({"ch_axis": spec.ch_axis} if spec.ch_axis is not None else {}),
    )()


@pytest.mark.parametrize("backend", ["x86", "fbgemm"])
@pytest.mark.parametrize("is_qat", [False, True])
def test_specs_compute_the_same_qparams_as_the_fx_qconfig(backend: str, is_qat: bool) -> None:
    """Independent reference: the FX default QConfig's observers, fed the same tensors."""
    qconfig = get_default_qat_qconfig(backend) if is_qat else get_default_qconfig(backend)
    config = get_x86_quantization_config(backend, is_qat=is_qat)
    gen = torch.Generator().manual_seed(0)
    for spec, fx_ctr, shape in ((config.input_activation, qconfig.activation, (4, 8, 5, 5)), (config.weight, qconfig.weight, (6, 8, 3, 3))):
        ours, theirs = _observer_from_spec(spec), fx_ctr()
        for _ in range(3):
            x = torch.randn(shape, generator=gen) * 2 + 0.5
            ours(x)
            theirs(x)
        (s1, z1), (s2, z2) = ours.calculate_qparams(), theirs.calculate_qparams()
        torch.testing.assert_close(s1, s2)
        assert torch.equal(z1, z2)
        assert (ours.quant_min, ours.quant_max) == (theirs.quant_min, theirs.quant_max)


def test_pt2e_lowers_to_onednn_kernels_and_matches_fx() -> None:
    """A PT2E model lowers to PackedConv / PackedLinear with no float conv / linear left, like the FX model."""
    from quantfx.quantize_fx import convert_fx, prepare_fx

    model, example_inputs, converted = _pt2e("residual_block", "x86")
    low = _lower(converted, example_inputs)
    modules = dict(low.named_modules())
    kinds = {type(m) for m in modules.values()}
    assert kernels.PackedConv in kinds
    for node in low.graph.nodes:
        assert node.target not in (aten.conv2d.default, aten.linear.default), f"{node.name} runs in float"
        if node.op == "call_module":
            assert not isinstance(modules[node.target], (nn.Conv2d, nn.Linear)), f"{node.name} runs in float"
    prepared = prepare_fx(model, quantfx.get_default_qconfig_mapping("x86"), example_inputs, backend="x86")
    with torch.no_grad():
        for x in [example_inputs, *calibration_data(example_inputs, n=4, seed=0)]:
            prepared(*x)
        fx = convert_fx(prepared)
        x = next(iter(calibration_data(example_inputs, n=1, seed=7)))
        assert sqnr(fx(*x), low(*x)) >= 30.0


def test_qat_conv_bn_folds_and_lowers() -> None:
    """prepare_qat_pt2e with the QAT quantizer: fused fake-quants in training, BN folded, int8 kernels after convert."""
    from quantfx.fake_quantize import FusedMovingAvgObsFakeQuantize

    model, example_inputs = MODEL_SUITE["conv_bn_relu"]()
    exported = torch.export.export(model.train(), example_inputs).module()
    prepared = prepare_qat_pt2e(exported, quantfx.get_backend("x86").get_quantizer(is_qat=True))
    fqs = [m for m in prepared.modules() if isinstance(m, FusedMovingAvgObsFakeQuantize)]
    assert fqs, "QAT config must insert fused moving-average fake-quants"
    assert {fq.activation_post_process.quant_max for fq in fqs if fq.dtype == torch.uint8} == {
        127 if default_reduce_range("x86") else 255
    }
    for x in calibration_data(example_inputs, n=3, seed=0):
        prepared(*x)
    from quantfx.quantize_pt2e import move_exported_model_to_eval

    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    assert not any(n.target in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
                   for n in converted.graph.nodes), "BN must be folded at convert"
    low = _lower(converted, example_inputs)
    assert kernels.PackedConv in {type(m) for m in low.modules()}
    out = low(*example_inputs)
    assert torch.isfinite(out).all()


def test_dynamic_config_annotates_linear_inputs_as_dynamic() -> None:
    model, example_inputs = MODEL_SUITE["linear_relu_mlp"]()
    gm = torch.export.export(model, example_inputs).module()
    X86Quantizer(get_x86_quantization_config("x86", is_dynamic=True)).annotate(gm)
    linears = [n for n in gm.graph.nodes if n.target == aten.linear.default]
    assert linears
    for node in linears:
        annotation = node.meta[Q_ANNOTATION_KEY]
        act = annotation.input_qspec_map[node.args[0]]
        assert act.is_dynamic and act.dtype == torch.uint8
        assert annotation.output_qspec is None  # dynamic: output stays float


def test_operator_type_and_module_name_regions() -> None:
    """set_operator_type(aten.linear, None) keeps linears float; set_module_name overrides a region."""
    model, example_inputs = MODEL_SUITE["conv_bn_relu"]()
    gm = torch.export.export(model, example_inputs).module()
    quantizer = get_x86_quantizer("x86").set_operator_type(aten.linear, None)
    quantizer.annotate(gm)
    linears = [n for n in gm.graph.nodes if n.target == aten.linear.default]
    convs = [n for n in gm.graph.nodes if n.target == aten.conv2d.default]
    assert linears and convs
    assert all(Q_ANNOTATION_KEY not in n.meta for n in linears)
    assert all(n.meta[Q_ANNOTATION_KEY].input_qspec_map for n in convs)


def test_prepare_qat_pt2e_by_backend_name_gets_the_qat_quantizer() -> None:
    """prepare_qat_pt2e(model, "x86") must train with fake-quants, not PTQ observers."""
    from quantfx.fake_quantize import FusedMovingAvgObsFakeQuantize
    from quantfx.observers import HistogramObserver

    model, example_inputs = MODEL_SUITE["conv_bn_relu"]()
    prepared = prepare_qat_pt2e(torch.export.export(model.train(), example_inputs).module(), "x86")
    kinds = {type(m) for m in prepared.modules()}
    assert FusedMovingAvgObsFakeQuantize in kinds and HistogramObserver not in kinds


def test_dynamic_linear_lowers_to_the_same_kernels_as_fx_dynamic() -> None:
    """PT2E dynamic linear == FX get_dynamic_qconfig_mapping after lowering (DynamicLinear kernels)."""
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

    from quantfx_fbgemm.qconfig import get_dynamic_qconfig_mapping

    model, example_inputs = MODEL_SUITE["linear_relu_mlp"]()
    prepared = prepare_fx(model, get_dynamic_qconfig_mapping("x86"), example_inputs, backend="x86")
    p2 = prepare_pt2e(torch.export.export(model, example_inputs).module(),
                      X86Quantizer(get_x86_quantization_config("x86", is_dynamic=True)))
    with torch.no_grad():
        prepared(*example_inputs)
        p2(*example_inputs)  # weight observers see the weights
    fx = _lower(convert_to_reference_fx(prepared), example_inputs)
    low = _lower(convert_pt2e(p2), example_inputs)
    assert any(type(m).__name__ == "DynamicLinear" for m in low.modules())
    x = next(iter(calibration_data(example_inputs, n=1, seed=3)))
    with torch.no_grad():
        torch.testing.assert_close(low(*x), fx(*x), rtol=0, atol=0)
