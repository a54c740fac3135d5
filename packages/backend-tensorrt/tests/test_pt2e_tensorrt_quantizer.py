"""The tensorrt PT2E Quantizer: symmetric int8 with zero point 0, Q/DQ where TensorRT wants them, ONNX in ONNX Runtime.

The conformance kit (test_conformance.py) compares PT2E with FX on the model
suite through the ONNX Runtime route (test_pt2e_matches_fx); these tests
check the scheme against the FX QConfig's observers, the Q/DQ placement, and
that a PT2E model exports to TensorRT-ready Q/DQ ONNX.
"""

from __future__ import annotations

from typing import Any

import onnx
import pytest
import torch

import quantfx
from quantfx.onnx import OnnxRuntimeModule, check_qdq
from quantfx.pt2e.normalize import as_fx_reference
from quantfx.quantize_pt2e import convert_pt2e, prepare_pt2e
from quantfx.quantizer import Q_ANNOTATION_KEY
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data
from quantfx_tensorrt.lowering import tensorrt_problems
from quantfx_tensorrt.qconfig import get_tensorrt_qconfig
from quantfx_tensorrt.quantizer import TensorRTQuantizer, get_tensorrt_quantization_config, get_tensorrt_quantizer

aten = torch.ops.aten
Q = torch.ops.quantfx


def _converted(name: str, quantizer: Any = "tensorrt") -> tuple[Any, tuple[Any, ...]]:
    model, example_inputs = MODEL_SUITE[name]()
    prepared = prepare_pt2e(torch.export.export(model, example_inputs).module(), quantizer)
    with torch.no_grad():
        for x in [example_inputs, *calibration_data(example_inputs, n=4, seed=0)]:
            prepared(*x)
    return convert_pt2e(prepared), example_inputs


def _onnx_lowered(converted: Any, example_inputs: tuple[Any, ...]) -> OnnxRuntimeModule:
    """The backend's lowering up to the engine (ONNX Runtime), on convert_pt2e output normalized as api.lower does."""
    backend = quantfx.get_backend("tensorrt")
    return backend.lower(as_fx_reference(converted, example_inputs), example_inputs, engine=False)


def test_backend_returns_its_quantizer() -> None:
    quantizer = quantfx.get_backend("tensorrt").get_quantizer()
    assert isinstance(quantizer, TensorRTQuantizer)
    assert quantizer.global_config is get_tensorrt_quantization_config()
    assert quantfx.get_backend("tensorrt").get_quantizer(is_qat=True).global_config.is_qat


@pytest.mark.parametrize("is_qat", [False, True])
def test_specs_compute_the_same_qparams_as_the_fx_qconfig(is_qat: bool) -> None:
    """Independent reference: the FX default QConfig's observers, fed the same tensors."""
    qconfig = get_tensorrt_qconfig(is_qat)
    config = get_tensorrt_quantization_config(is_qat=is_qat)
    gen = torch.Generator().manual_seed(0)
    for spec, fx_ctr, shape in ((config.input_activation, qconfig.activation, (4, 8, 5, 5)), (config.weight, qconfig.weight, (6, 8, 3, 3))):
        kwargs = {"dtype": spec.dtype, "quant_min": spec.quant_min, "quant_max": spec.quant_max, "qscheme": spec.qscheme}
        if spec.ch_axis is not None:
            kwargs["ch_axis"] = spec.ch_axis
        ours, theirs = spec.observer_or_fake_quant_ctr.with_args(**kwargs)(), fx_ctr()
        for _ in range(3):
            x = torch.randn(shape, generator=gen) * 2 + 0.5
            ours(x)
            theirs(x)
        (s1, z1), (s2, z2) = ours.calculate_qparams(), theirs.calculate_qparams()
        torch.testing.assert_close(s1, s2)
        assert torch.equal(z1, z2) and not z1.any(), "TensorRT takes zero point 0 only"


def test_every_quantize_is_int8_with_zero_point_zero() -> None:
    converted, _ = _converted("residual_block")
    qs = [n for n in converted.graph.nodes if n.target in (Q.quantize_per_tensor.default, Q.dequantize_per_tensor.default,
                                                            Q.dequantize_per_channel.default)]
    assert qs
    for node in qs:
        dtype = node.args[-1]
        assert dtype == torch.int8, f"{node.name}: {dtype}"
        if node.target is not Q.dequantize_per_channel.default:
            assert int(node.args[2]) == 0, f"{node.name}: zero point {node.args[2]}"


def test_mul_softmax_and_layer_norm_stay_float_matmul_and_add_are_quantized() -> None:
    model, example_inputs = MODEL_SUITE["transformer_block"]()
    gm = torch.export.export(model, example_inputs).module()
    get_tensorrt_quantizer().annotate(gm)
    annotated = {n.target for n in gm.graph.nodes if n.op == "call_function" and n.meta.get(Q_ANNOTATION_KEY) is not None}
    assert {aten.linear.default, aten.matmul.default, aten.add.Tensor} <= annotated
    assert not annotated & {aten.mul.Tensor, aten.layer_norm.default, aten.softmax.int, aten._softmax.default}


def test_pt2e_model_exports_tensorrt_ready_qdq_onnx_and_matches_fx() -> None:
    """Q/DQ in front of every conv / gemm input, int8 weights, nothing TensorRT rejects; ORT output ~ FX flow's."""
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

    converted, example_inputs = _converted("residual_block")
    lowered = _onnx_lowered(converted, example_inputs)
    assert isinstance(lowered, OnnxRuntimeModule)
    model: onnx.ModelProto = lowered.onnx_model
    report = check_qdq(model)
    assert report.ok, report.summary()
    assert report.quantized_compute_nodes
    assert tensorrt_problems(model) == []
    assert set(report.weight_types.values()) == {onnx.TensorProto.INT8}

    float_model, _ = MODEL_SUITE["residual_block"]()
    prepared = prepare_fx(float_model, quantfx.get_default_qconfig_mapping("tensorrt"), example_inputs, backend="tensorrt")
    with torch.no_grad():
        for x in [example_inputs, *calibration_data(example_inputs, n=4, seed=0)]:
            prepared(*x)
    fx = quantfx.get_backend("tensorrt").lower(convert_to_reference_fx(prepared), example_inputs, engine=False)
    x = next(iter(calibration_data(example_inputs, n=1, seed=7)))
    assert sqnr(fx(*x), lowered(*x)) >= 30.0


def test_operator_type_region() -> None:
    """set_operator_type("linear", None): linears float, convs still quantized."""
    model, example_inputs = MODEL_SUITE["conv_bn_relu"]()
    gm = torch.export.export(model, example_inputs).module()
    get_tensorrt_quantizer().set_operator_type("linear", None).annotate(gm)
    assert all(Q_ANNOTATION_KEY not in n.meta for n in gm.graph.nodes if n.target == aten.linear.default)
    assert all(n.meta[Q_ANNOTATION_KEY].input_qspec_map for n in gm.graph.nodes if n.target == aten.conv2d.default)
