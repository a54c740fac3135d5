"""TensorRT's rules on top of core's Q/DQ export: what is checked, what is rejected, and how plugins extend it."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto

import quantfx
import quantfx.plugins
from quantfx.errors import LoweringError
from quantfx.onnx import OnnxRuntimeModule
from quantfx.plugins import hookimpl
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data
from quantfx_tensorrt import export_onnx
from quantfx_tensorrt.backend import TensorRTBackend
from quantfx_tensorrt.lowering import check_tensorrt_qdq, tensorrt_problems


def _reference(name: str, backend: str = "tensorrt", mapping: object = None) -> tuple:
    model, example = MODEL_SUITE[name]()
    prepared = prepare_fx(model, mapping, example, backend=backend)
    with torch.no_grad():
        for batch in [example, *calibration_data(example, n=3)]:
            prepared(*batch)
    return convert_to_reference_fx(prepared), example


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def test_residual_add_reads_two_dequantized_inputs() -> None:
    """TensorRT fuses the add into int8 only when both of its inputs come through a DequantizeLinear."""
    ref, example = _reference("residual_block")
    model = export_onnx(ref, example)
    producer = _producers(model)
    adds = [n for n in model.graph.node if n.op_type == "Add" and n.input[1] in producer]
    assert len(adds) == 1
    assert [producer[i].op_type for i in adds[0].input] == ["DequantizeLinear", "DequantizeLinear"]
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = onnx.numpy_helper.to_array({t.name: t for t in model.graph.initializer}[node.input[2]])
            assert zp.dtype.name == "int8" and not zp.any()


def test_uint8_model_is_rejected_naming_the_node() -> None:
    """A model prepared for another backend (uint8, non-zero zero points) cannot become a TensorRT engine."""
    ref, example = _reference("conv_bn_relu", backend="reference")
    with pytest.raises(LoweringError) as err:
        export_onnx(ref, example)
    msg = str(err.value)
    assert "QuantizeLinear 'node_quantize_per_tensor'" in msg
    assert "uint8; TensorRT's Q/DQ take int8 only" in msg
    assert "get_default_qconfig_mapping('tensorrt')" in msg
    # the check can be skipped to look at the model anyway, and core's export itself is fine
    unchecked = export_onnx(ref, example, check=False)
    assert tensorrt_problems(unchecked)


def test_per_channel_weight_on_the_wrong_axis_is_rejected() -> None:
    from quantfx.onnx.graph import GraphIndex

    ref, example = _reference("conv_bn_relu")
    model = export_onnx(ref, example)
    index = GraphIndex(model.graph)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    dq = index.producer[conv.input[1]]
    for a in dq.attribute:
        if a.name == "axis":
            a.i = 1
    problems = tensorrt_problems(model)
    assert any(f"quantizes the weight of Conv '{conv.name}' per channel on axis 1" in p for p in problems), problems


def test_dangling_quantize_is_rejected() -> None:
    ref, example = _reference("linear_relu_mlp")
    model = export_onnx(ref, example)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    model.graph.output.append(onnx.helper.make_tensor_value_info(q.output[0], TensorProto.INT8, None))
    with pytest.raises(LoweringError, match=r"QuantizeLinear '.*': its int output is a graph output"):
        check_tensorrt_qdq(model)


def test_plugin_lowering_rule_runs_on_the_onnx_model() -> None:
    """A third-party plugin adds an ONNX pass for 'tensorrt' without forking the backend."""
    seen: list[str] = []

    def tag_model(model: onnx.ModelProto) -> None:
        seen.append(model.graph.name)
        model.metadata_props.add(key="plugin.rule", value="applied")

    class Plugin:
        @hookimpl
        def quantfx_register_lowering_rules(self, backend_name: str, register: object) -> None:
            if backend_name == "tensorrt":
                register(tag_model)

    ref, example = _reference("linear_relu_mlp")
    plugin = Plugin()
    quantfx.plugins.register(plugin)
    try:
        model = TensorRTBackend().export_onnx(ref, example)
        lowered = TensorRTBackend().lower(ref, example, engine=False,
                                          lowering_rules=quantfx.plugins.get_plugin_manager().lowering_rules("tensorrt"))
    finally:
        quantfx.plugins.unregister(plugin)
    assert len(seen) == 2
    assert {p.key: p.value for p in model.metadata_props}["plugin.rule"] == "applied"
    assert {p.key: p.value for p in lowered.onnx_model.metadata_props}["plugin.rule"] == "applied"


def test_non_callable_rule_is_named() -> None:
    ref, example = _reference("linear_relu_mlp")
    with pytest.raises(LoweringError, match=r"lowering rule 'fold' is not callable"):
        export_onnx(ref, example, lowering_rules=["fold"])


def test_onnx_file_and_backend_save_load(tmp_path) -> None:
    ref, example = _reference("cat_pool_flatten")
    path = tmp_path / "model_int8.onnx"
    model = export_onnx(ref, example, path)
    onnx.checker.check_model(str(path), full_check=True)
    backend = TensorRTBackend()
    lowered = backend.lower(ref, example, engine=False)
    assert lowered.qdq_report.ok and len(lowered.qdq_report.quantized_compute_nodes) == 3
    backend.save(lowered, tmp_path / "saved.onnx")
    loaded = backend.load(tmp_path / "saved.onnx")
    assert isinstance(loaded, OnnxRuntimeModule)
    assert torch.equal(loaded(*example), lowered(*example))
    assert onnx.load(str(path)).graph.node == model.graph.node


def test_dynamic_batch_export_runs_any_batch() -> None:
    ref, example = _reference("conv_bn_relu")
    ort_model = OnnxRuntimeModule(export_onnx(ref, example, dynamic_batch=True))
    for batch in (1, 5):
        x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            assert sqnr(ref(x), ort_model(x)) >= 35.0


def test_save_rejects_foreign_modules(tmp_path) -> None:
    from quantfx.errors import ValidationError

    with pytest.raises(ValidationError, match=r"TensorRTModule or quantfx.onnx.OnnxRuntimeModule\), got Linear"):
        TensorRTBackend().save(torch.nn.Linear(2, 2), tmp_path / "x")


def test_qat_model_exports_for_tensorrt() -> None:
    """prepare_qat_fx with the tensorrt QAT defaults -> a few training steps -> the same Q/DQ export."""
    from quantfx.quantize_fx import prepare_qat_fx

    model, example = MODEL_SUITE["conv_bn_relu"]()
    prepared = prepare_qat_fx(model.train(), quantfx.get_default_qat_qconfig_mapping("tensorrt"), example, backend="tensorrt")
    opt = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    for batch in calibration_data(example, n=3):
        opt.zero_grad()
        prepared(*batch).square().mean().backward()
        opt.step()
    ref = convert_to_reference_fx(prepared.eval())
    model = export_onnx(ref, example)
    assert tensorrt_problems(model) == []
    with torch.no_grad():
        assert sqnr(ref(*example), OnnxRuntimeModule(model)(*example)) >= 35.0
