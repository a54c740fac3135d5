"""The openvino PT2E Quantizer: NNCF's presets as specs, only OpenVINO's int8 ops, compiled by OpenVINO.

The conformance kit (test_conformance_openvino.py) compares PT2E with FX on
the model suite (test_pt2e_matches_fx); these tests check the scheme against
the FX QConfig's observers, what is (not) annotated, and that a PT2E model
compiles into an OpenVINO model whose convs / matmuls run in int8.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from quantfx import api
from quantfx.errors import ValidationError
from quantfx.quantize_pt2e import convert_pt2e, prepare_pt2e
from quantfx.quantizer import Q_ANNOTATION_KEY
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data
from quantfx_openvino.qconfig import get_openvino_qconfig
from quantfx_openvino.quantizer import OpenVINOQuantizer, get_openvino_quantization_config, get_openvino_quantizer
from torch import nn

aten = torch.ops.aten


def _exported(name: str) -> tuple[torch.fx.GraphModule, tuple[Any, ...]]:
    model, example_inputs = MODEL_SUITE[name]()
    return torch.export.export(model, example_inputs).module(), example_inputs


def _converted(name: str, quantizer: Any = "openvino") -> tuple[Any, tuple[Any, ...]]:
    gm, example_inputs = _exported(name)
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for x in [example_inputs, *calibration_data(example_inputs, n=4, seed=0)]:
            prepared(*x)
    return convert_pt2e(prepared), example_inputs


def test_backend_returns_its_quantizer() -> None:
    quantizer = api.get_backend("openvino").get_quantizer()
    assert isinstance(quantizer, OpenVINOQuantizer)
    assert quantizer.global_config is get_openvino_quantization_config("performance")
    mixed = api.get_backend("openvino").get_quantizer(preset="mixed")
    assert mixed.global_config.input_activation.qscheme == torch.per_tensor_affine


def test_unknown_preset_is_refused_with_the_choices() -> None:
    with pytest.raises(ValidationError, match="performance, mixed"):
        get_openvino_quantizer("accuracy")


@pytest.mark.parametrize("preset", ["performance", "mixed"])
@pytest.mark.parametrize("overflow_fix", [True, False])
def test_specs_compute_the_same_qparams_as_the_fx_qconfig(preset: str, overflow_fix: bool) -> None:
    """Independent reference: the FX preset's observers (sign-aware for performance), fed the same tensors."""
    qconfig = get_openvino_qconfig(preset, overflow_fix=overflow_fix)
    config = get_openvino_quantization_config(preset, overflow_fix=overflow_fix)
    gen = torch.Generator().manual_seed(0)
    cases = [
        (config.input_activation, qconfig.activation, lambda: torch.randn(4, 8, 5, 5, generator=gen) * 2 + 0.5),
        (config.input_activation, qconfig.activation, lambda: torch.rand(4, 8, 5, 5, generator=gen) * 3),  # ReLU-like
        (config.weight, qconfig.weight, lambda: torch.randn(6, 8, 3, 3, generator=gen)),
    ]
    for spec, fx_ctr, sample in cases:
        kwargs = {"dtype": spec.dtype, "quant_min": spec.quant_min, "quant_max": spec.quant_max, "qscheme": spec.qscheme}
        if spec.ch_axis is not None:
            kwargs["ch_axis"] = spec.ch_axis
        ours, theirs = spec.observer_or_fake_quant_ctr.with_args(**kwargs)(), fx_ctr()
        for _ in range(3):
            x = sample()
            ours(x)
            theirs(x)
        (s1, z1), (s2, z2) = ours.calculate_qparams(), theirs.calculate_qparams()
        torch.testing.assert_close(s1, s2)
        assert torch.equal(z1, z2)
    assert config.weight.quant_max == (63 if overflow_fix else 127)


def test_only_openvino_int8_ops_are_annotated() -> None:
    """Linear / matmul / add are annotated; LayerNorm and softmax stay float (OpenVINO runs them in float)."""
    gm, _ = _exported("transformer_block")
    get_openvino_quantizer().annotate(gm)
    annotated = {n.target for n in gm.graph.nodes if n.meta.get(Q_ANNOTATION_KEY) is not None and n.op == "call_function"}
    assert {aten.linear.default, aten.matmul.default, aten.add.Tensor} <= annotated
    float_ops = [n for n in gm.graph.nodes if n.target in (aten.layer_norm.default, aten.softmax.int, aten._softmax.default)]
    assert float_ops
    assert all(n.meta.get(Q_ANNOTATION_KEY) is None for n in float_ops)


def test_transposed_conv_weights_are_per_tensor_others_per_channel() -> None:
    gm, _ = _exported("conv_transpose_net")
    get_openvino_quantizer(overflow_fix=False).annotate(gm)
    deconv = [n for n in gm.graph.nodes if n.target == aten.conv_transpose2d.input]
    conv = [n for n in gm.graph.nodes if n.target == aten.conv2d.default]
    assert deconv and conv
    for node in deconv:
        assert node.meta[Q_ANNOTATION_KEY].input_qspec_map[node.args[1]].qscheme == torch.per_tensor_symmetric
    for node in conv:
        assert node.meta[Q_ANNOTATION_KEY].input_qspec_map[node.args[1]].qscheme == torch.per_channel_symmetric


def test_signed_and_unsigned_activations_after_convert() -> None:
    """performance preset: the ReLU output is u8 with zero point 0, a signed tensor i8-symmetric (zero point 128)."""
    converted, _ = _converted("conv_bn_relu")
    zps = {int(n.args[2]) for n in converted.graph.nodes if n.target == torch.ops.quantfx.quantize_per_tensor.default}
    assert zps <= {0, 128} and 0 in zps and 128 in zps, zps


def test_pt2e_model_compiles_to_int8_openvino_and_matches_fx() -> None:
    from quantfx.quantize_fx import convert_fx, prepare_fx

    converted, example_inputs = _converted("conv_bn_relu")
    lowered = api.lower(converted, "openvino", example_inputs)
    layers = lowered.int8_layers()
    assert len([r for r in layers if r["type"] == "Convolution"]) == 2, lowered.runtime_layers()
    assert len([r for r in layers if r["type"] == "FullyConnected"]) == 1, lowered.runtime_layers()

    model, _ = MODEL_SUITE["conv_bn_relu"]()
    prepared = prepare_fx(model, api.get_default_qconfig_mapping("openvino"), example_inputs, backend="openvino")
    with torch.no_grad():
        for x in [example_inputs, *calibration_data(example_inputs, n=4, seed=0)]:
            prepared(*x)
    fx = convert_fx(prepared)
    x = next(iter(calibration_data(example_inputs, n=1, seed=7)))
    assert sqnr(fx(*x), lowered(*x)) >= 30.0


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.body(x)).mean(dim=(2, 3)))


def test_module_name_region_can_stay_float() -> None:
    gm = torch.export.export(_TwoHeads().eval(), (torch.randn(1, 3, 8, 8),)).module()
    get_openvino_quantizer().set_module_name("head", None).annotate(gm)
    linear = next(n for n in gm.graph.nodes if n.target == aten.linear.default)
    conv = next(n for n in gm.graph.nodes if n.target == aten.conv2d.default)
    assert linear.meta.get(Q_ANNOTATION_KEY) is None
    assert conv.meta[Q_ANNOTATION_KEY].input_qspec_map


def test_transformer_preset_quantizes_only_matmul_like_ops() -> None:
    from quantfx_openvino.qconfig import PRESETS

    if "transformer" not in PRESETS:
        pytest.skip("this quantfx_openvino has no 'transformer' preset")
    gm, _ = _exported("transformer_block")
    quantizer = get_openvino_quantizer("transformer")
    assert quantizer.global_config.input_activation.qscheme == torch.per_tensor_affine
    quantizer.annotate(gm)
    annotated = {n.target for n in gm.graph.nodes if n.op == "call_function" and n.meta.get(Q_ANNOTATION_KEY) is not None}
    assert annotated == {aten.linear.default, aten.matmul.default}
