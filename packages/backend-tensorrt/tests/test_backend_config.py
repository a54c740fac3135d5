"""TensorRT's BackendConfig and default qconfigs: symmetric int8, Q/DQ only where TensorRT runs int8."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantfx
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx, prepare_qat_fx
from quantfx.testing.models import MODEL_SUITE, calibration_data
from quantfx_tensorrt.backend_config import get_tensorrt_backend_config
from quantfx_tensorrt.qconfig import get_tensorrt_qconfig_mapping


def test_every_dtype_config_is_signed_int8_within_trt_range() -> None:
    config = get_tensorrt_backend_config()
    assert config.name == "tensorrt"
    for pattern_config in config.configs:
        for dc in pattern_config.dtype_configs:
            for c in (dc.input_dtype_with_constraints, dc.output_dtype_with_constraints):
                assert c.dtype == torch.int8, pattern_config.pattern
                assert (c.quant_min_lower_bound, c.quant_max_upper_bound) == (-128, 127)
            assert not dc.is_dynamic
            if dc.weight_dtype is not None:
                assert dc.weight_dtype == torch.int8 and dc.bias_dtype == torch.float


@pytest.mark.parametrize(
    "pattern",
    [nn.Conv2d, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU), (nn.Conv2d, nn.ReLU6), nn.ConvTranspose2d, nn.Linear,
     F.linear, torch.matmul, operator.add, (operator.add, nn.ReLU), torch.cat, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
     torch.flatten, "reshape"],
)
def test_tensorrt_int8_layers_are_quantized(pattern: object) -> None:
    assert get_tensorrt_backend_config().get_pattern_config(pattern) is not None


@pytest.mark.parametrize("pattern", [operator.mul, torch.mul, F.softmax, nn.LayerNorm, nn.Sigmoid, nn.Hardswish, nn.Embedding])
def test_float_layers_are_left_alone(pattern: object) -> None:
    """TensorRT computes these in float: no Q/DQ around them."""
    assert get_tensorrt_backend_config().get_pattern_config(pattern) is None


def _observers(prepared: torch.nn.Module) -> list[torch.nn.Module]:
    from quantfx.observers import is_observer_or_fake_quant

    return [m for m in prepared.modules() if is_observer_or_fake_quant(m)]


def test_default_ptq_mapping_is_symmetric_int8() -> None:
    mapping = quantfx.get_default_qconfig_mapping("tensorrt")
    qconfig = mapping.global_qconfig
    act, weight = qconfig.activation(), qconfig.weight()
    assert (act.dtype, act.qscheme, act.quant_min, act.quant_max) == (torch.int8, torch.per_tensor_symmetric, -128, 127)
    assert (weight.dtype, weight.qscheme, weight.ch_axis) == (torch.int8, torch.per_channel_symmetric, 0)
    assert (weight.quant_min, weight.quant_max) == (-127, 127)


def test_default_qat_mapping_uses_fake_quant() -> None:
    from quantfx.fake_quantize import FakeQuantizeBase

    model, example = MODEL_SUITE["conv_bn_relu"]()
    prepared = prepare_qat_fx(model.train(), quantfx.get_default_qat_qconfig_mapping("tensorrt"), example, backend="tensorrt")
    fqs = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    assert fqs and all(fq.dtype == torch.int8 for fq in fqs)
    assert {fq.qscheme for fq in fqs} <= {torch.per_tensor_symmetric, torch.per_channel_symmetric}


@pytest.mark.parametrize("name", ["residual_block", "transformer_block", "activation_heads"])
def test_reference_ir_is_int8_zero_point_zero(name: str) -> None:
    import warnings

    model, example = MODEL_SUITE[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no op falls back to float with an UnsupportedQConfigWarning
        prepared = prepare_fx(model, None, example, backend="tensorrt")
    with torch.no_grad():
        for batch in calibration_data(example, n=2):
            prepared(*batch)
    ref = convert_to_reference_fx(prepared)
    qnodes = [n for n in ref.graph.nodes if "quantize_per_tensor" in str(n.target)]
    assert qnodes
    for node in qnodes:
        _, scale, zero_point, qmin, qmax, dtype = node.args
        assert (zero_point, qmin, qmax, dtype) == (0, -128, 127, torch.int8), node.format_node()
    for module in ref.modules():
        if hasattr(module, "weight_qparams"):
            qp = module.weight_qparams
            assert qp.dtype == torch.int8 and torch.all(qp.zero_point == 0)


def test_sigmoid_and_softmax_stay_float_without_warnings() -> None:
    import warnings

    model, example = MODEL_SUITE["activation_heads"]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_fx(model, get_tensorrt_qconfig_mapping(), example, backend="tensorrt")
    assert not [w for w in caught if "stays in float" in str(w.message)]
    prepared(*example)
    ref = convert_to_reference_fx(prepared)
    sig = next(n for n in ref.graph.nodes if n.op == "call_module" and isinstance(ref.get_submodule(n.target), nn.Sigmoid))
    assert not any("quantize" in str(u.target) for u in sig.users), "sigmoid's output should not be quantized"


def test_affine_activation_qconfig_is_refused_at_prepare() -> None:
    """zero_point_exact_match=0: an int8 *affine* activation observer cannot feed TensorRT, so the op stays float."""
    from quantfx.errors import UnsupportedQConfigWarning
    from quantfx.observers import MinMaxObserver, PerChannelMinMaxObserver
    from quantfx.qconfig import QConfig
    from quantfx.qconfig_mapping import QConfigMapping

    affine = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_tensor_affine),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_symmetric),
    )
    model, example = MODEL_SUITE["linear_relu_mlp"]()
    with pytest.warns(UnsupportedQConfigWarning, match="zero point 0"):
        prepared = prepare_fx(model, QConfigMapping().set_global(affine), example, backend="tensorrt")
    prepared(*example)
    ref = convert_to_reference_fx(prepared)
    assert not any("quantize" in str(n.target) for n in ref.graph.nodes)
