"""quantfx.onnx: the reference IR exported to ONNX Q/DQ, checked against the reference model in ONNX Runtime.

Independent reference: the reference model's own outputs (torch), compared with
ONNX Runtime running the exported file. Structure: onnx.checker, a Q/DQ pair in
front of every conv / gemm / matmul input, int8 weight initializers, no
dangling Q or DQ.
"""

from __future__ import annotations

import copy
import operator
import pickle

import pytest
import torch
from torch import nn

pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'quantfx-core[onnx]'")
pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'quantfx-core[onnx]'")
pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install 'quantfx-core[onnx]'")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import quantfx.ops  # noqa: E402,F401
from quantfx.errors import LoweringError  # noqa: E402
from quantfx.onnx import OnnxRuntimeModule, check_qdq, export_onnx  # noqa: E402
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx  # noqa: E402
from quantfx.testing.metrics import sqnr  # noqa: E402
from quantfx.testing.models import MODEL_SUITE, calibration_data  # noqa: E402

_REFERENCES: dict[str, tuple] = {}


def _reference(name: str) -> tuple[torch.fx.GraphModule, tuple, list[tuple]]:
    """Reference-backend reference model of a suite model (cached across tests)."""
    if name not in _REFERENCES:
        model, example = MODEL_SUITE[name]()
        prepared = prepare_fx(model, None, example, backend="reference")
        with torch.no_grad():
            prepared(*example)
            for batch in calibration_data(example, n=4):
                prepared(*batch)
        ref = convert_to_reference_fx(prepared)
        evals = [example, *calibration_data(example, n=2, seed=123)]
        _REFERENCES[name] = (ref, example, evals)
    return _REFERENCES[name]


class _QDQ(nn.Module):
    """x -> quantize -> dequantize with the given qparams (a one-op reference graph)."""

    def __init__(self, scale: float, zp: int, qmin: int, qmax: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.args = (scale, zp, qmin, qmax, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.ops.quantfx.quantize_per_tensor(x, *self.args)
        return torch.ops.quantfx.dequantize_per_tensor(q, *self.args)


@pytest.mark.parametrize(
    "qparams",
    [
        (0.05, 128, 0, 255, torch.uint8),
        (0.05, 0, -128, 127, torch.int8),
        (0.05, 3, 0, 127, torch.uint8),  # reduce_range: narrower than the dtype
        (0.05, 0, -127, 127, torch.int8),  # narrow symmetric range
    ],
    ids=["uint8", "int8", "uint8-reduce-range", "int8-narrow"],
)
def test_quantize_dequantize_match_reference_ops(qparams: tuple) -> None:
    """QuantizeLinear/DequantizeLinear (+ Clip for narrow ranges) compute what torch.ops.quantfx do."""
    module = _QDQ(*qparams)
    x = torch.linspace(-12.0, 12.0, 4001).reshape(1, -1) + 0.0123  # spans past both ends of every range
    proto = export_onnx(module, (x,))
    got = OnnxRuntimeModule(proto)(x)
    want = module(x)
    scale = qparams[0]
    assert torch.allclose(got, want, atol=scale * 1.001, rtol=0), "a value is off by more than one step"
    # rounding x / s vs x * (1 / s) may flip exact ties; anything else must agree bit for bit
    assert (got != want).float().mean().item() < 1e-3
    lo = (qparams[2] - qparams[1]) * scale
    hi = (qparams[3] - qparams[1]) * scale
    assert got.min().item() == pytest.approx(lo, abs=1e-6) and got.max().item() == pytest.approx(hi, abs=1e-6), (
        "values outside the quant range must clamp to quant_min / quant_max, not to the dtype's range"
    )


# one model per kind of graph; backend packages run the whole suite through their conformance class
_SUITE_SAMPLE = ("conv_bn_relu", "residual_block", "transformer_block", "embedding_bag_linear", "activation_heads")


@pytest.mark.parametrize("name", _SUITE_SAMPLE)
def test_suite_model_runs_in_onnxruntime_like_the_reference(name: str) -> None:
    ref, example, evals = _reference(name)
    proto = export_onnx(ref, example)
    onnx.checker.check_model(proto, full_check=True)
    ort_model = OnnxRuntimeModule(proto)
    with torch.no_grad():
        value = sqnr([ref(*x) for x in evals], [ort_model(*x) for x in evals])
    assert value >= 35.0, f"{name}: SQNR(reference, ONNX Runtime) = {value:.1f} dB"
    report = check_qdq(proto)
    assert report.ok, report.summary()
    assert report.quantized_compute_nodes, f"{name}: no conv / gemm / matmul was quantized"


def test_weights_are_int8_initializers_with_per_axis_dequantize() -> None:
    ref, example, _ = _reference("conv_bn_relu")
    proto = export_onnx(ref, example)
    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    computes = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [n.op_type for n in computes] == ["Conv", "Conv", "Gemm"]
    assert not any(t.data_type == TensorProto.FLOAT and len(t.dims) >= 2 for t in inits.values()), (
        "a float weight matrix is left in the model"
    )
    for node, module in zip(computes, (ref.conv1, ref.conv2, ref.fc)):
        dq = producer[node.input[1]]
        assert dq.op_type == "DequantizeLinear"
        weight = inits[dq.input[0]]
        assert weight.data_type == TensorProto.INT8
        assert np.array_equal(onnx.numpy_helper.to_array(weight), module.weight_int.numpy())
        scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
        assert scale.shape == (module.weight_int.shape[0],)
        assert np.allclose(scale, module.weight_scale.numpy())
        assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 0


def test_linear_on_3d_input_reads_a_pretransposed_int8_weight() -> None:
    """torch exports Linear on 3-d inputs as MatMul(x, Transpose(W)); the pass folds the Transpose into the int8 weight."""
    ref, example, evals = _reference("transformer_block")
    proto = export_onnx(ref, example)
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    assert not any(
        n.op_type == "Transpose" and producer.get(n.input[0]) is not None and producer[n.input[0]].op_type == "DequantizeLinear"
        and producer[n.input[0]].input[0] in inits
        for n in proto.graph.node
    )
    weight_matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and producer[n.input[1]].input[0] in inits]
    assert len(weight_matmuls) == 6  # q, k, v, out, ff1, ff2
    for node in weight_matmuls:
        dq = producer[node.input[1]]
        w = inits[dq.input[0]]
        assert w.data_type == TensorProto.INT8 and w.dims[1] == onnx.numpy_helper.to_array(inits[dq.input[1]]).shape[0]
        assert helper.get_attribute_value(next(a for a in dq.attribute if a.name == "axis")) == 1


def test_dynamic_batch_runs_other_batch_sizes() -> None:
    ref, example, _ = _reference("linear_relu_mlp")
    proto = export_onnx(ref, example, dynamic_batch=True)
    ort_model = OnnxRuntimeModule(proto)
    for batch in (1, 7):
        x = torch.randn(batch, example[0].shape[1], generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            assert sqnr(ref(x), ort_model(x)) >= 35.0


def test_dynamic_quantization_exports() -> None:
    """choose_qparams / runtime-scale Q/DQ (dynamic Linear) run in ONNX Runtime as in the reference."""
    from quantfx.qconfig import default_dynamic_qconfig
    from quantfx.qconfig_mapping import QConfigMapping

    model, example = MODEL_SUITE["linear_relu_mlp"]()
    mapping = QConfigMapping().set_object_type(nn.Linear, default_dynamic_qconfig)
    prepared = prepare_fx(model, mapping, example, backend="reference")
    ref = convert_to_reference_fx(prepared)
    assert any("choose_qparams" in str(n.target) for n in ref.graph.nodes)
    proto = export_onnx(ref, example)
    assert {"ReduceMin", "ReduceMax", "QuantizeLinear"} <= {n.op_type for n in proto.graph.node}
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(5)) * 3
    with torch.no_grad():
        assert sqnr(ref(x), OnnxRuntimeModule(proto)(x)) >= 35.0


def test_tuple_outputs_keep_their_structure() -> None:
    ref, example, _ = _reference("activation_heads")
    got = OnnxRuntimeModule(export_onnx(ref, example))(*example)
    want = ref(*example)
    assert isinstance(got, tuple) and len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert g.shape == w.shape


def test_save_load_pickle_and_deepcopy(tmp_path) -> None:
    ref, example, _ = _reference("residual_block")
    path = tmp_path / "residual.onnx"
    proto = export_onnx(ref, example, path)
    assert onnx.load(str(path)).graph.node == proto.graph.node
    module = OnnxRuntimeModule(proto)
    want = module(*example)
    for other in (OnnxRuntimeModule.load(path), pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        assert torch.equal(other(*example), want)
    module.save(tmp_path / "again.onnx")
    assert torch.equal(OnnxRuntimeModule(tmp_path / "again.onnx")(*example), want)


def test_export_leaves_the_reference_model_alone() -> None:
    ref, example, _ = _reference("depthwise_separable")
    def tensors() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in ref.state_dict().items() if isinstance(v, torch.Tensor)}

    code, state = ref.code, tensors()
    before = ref(*example)
    export_onnx(ref, example)
    assert ref.code == code
    after = tensors()
    assert after.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in after.items())
    assert torch.equal(ref(*example), before)


def test_float_model_exports_without_qdq() -> None:
    model, example = MODEL_SUITE["conv_bn_relu"]()
    proto = export_onnx(model, example)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    report = check_qdq(proto)
    assert len(report.float_weights) == 3 and not report.quantized_compute_nodes
    with torch.no_grad():
        assert sqnr(model(*example), OnnxRuntimeModule(proto)(*example)) > 80


def test_unsupported_dtype_is_named() -> None:
    class Int32Quant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = torch.ops.quantfx.quantize_per_tensor(x, 0.1, 0, -(2**31), 2**31 - 1, torch.int32)
            return torch.ops.quantfx.dequantize_per_tensor(q, 0.1, 0, -(2**31), 2**31 - 1, torch.int32)

    gm = torch.fx.symbolic_trace(Int32Quant())
    with pytest.raises(LoweringError, match=r"node 'quantize_per_tensor'.*torch.int32.*uint8 / int8"):
        export_onnx(gm, (torch.randn(2, 3),))


def test_missing_extra_names_the_install_command(monkeypatch) -> None:
    import importlib.util

    from quantfx.onnx import _deps

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxscript" else real(n, *a))
    with pytest.raises(ImportError, match=r"'onnxscript'.*pip install 'quantfx-core\[onnx\]'"):
        _deps.require_onnx()


# ------------------------------------------------------------------ check_qdq on hand-made graphs


def _tensor(name: str, dtype: int, dims: list[int], vals: list) -> onnx.TensorProto:
    return helper.make_tensor(name, dtype, dims, vals)


def _model(nodes: list, inits: list, out: str = "y") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _qparams() -> list:
    return [_tensor("s", TensorProto.FLOAT, [], [0.1]), _tensor("zp", TensorProto.INT8, [], [0])]


def test_check_qdq_accepts_a_proper_pair() -> None:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["wdq"], name="dq_w"),
        helper.make_node("Conv", ["xdq", "wdq"], ["y"], name="conv"),
    ]
    report = check_qdq(_model(nodes, [*_qparams(), _tensor("w", TensorProto.INT8, [1, 1, 1, 1], [3])]))
    assert report.ok and report.quantized_compute_nodes == ["Conv 'conv'"]
    assert report.weight_types == {"w": TensorProto.INT8}


def test_check_qdq_names_every_problem() -> None:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_dangling"),
        helper.make_node("Cast", ["xq"], ["xc"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("DequantizeLinear", ["x", "s"], ["xdq_bad"], name="dq_of_float"),
        helper.make_node("Conv", ["xc", "wf"], ["c1"], name="conv_float_weight"),
        helper.make_node("Conv", ["x", "wf"], ["c2"], name="conv_float_input"),
        helper.make_node("Add", ["c1", "c2"], ["y0"]),
        helper.make_node("Add", ["y0", "xdq_bad"], ["y"]),
    ]
    report = check_qdq(_model(nodes, [*_qparams(), _tensor("wf", TensorProto.FLOAT, [1, 1, 1, 1], [0.5])]))
    assert not report.ok
    text = report.summary()
    assert "QuantizeLinear 'q_dangling': read by Cast 'cast'" in text
    assert "DequantizeLinear 'dq_of_float'" in text
    assert "Conv 'conv_float_weight' input 1 ('wf') is a float constant" in text
    assert "Conv 'conv_float_input' input 0 ('x') comes from a graph input" in text
    assert not report.quantized_compute_nodes


def test_fold_weight_transposes_moves_the_axis() -> None:
    from quantfx.onnx import fold_weight_transposes

    w = np.arange(6, dtype=np.int8).reshape(2, 3)
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wdq"], name="dq_w", axis=0),
        helper.make_node("Transpose", ["wdq"], ["wt"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
    ]
    inits = [
        onnx.numpy_helper.from_array(w, "w"),
        _tensor("ws", TensorProto.FLOAT, [2], [0.5, 0.25]),
        _tensor("wzp", TensorProto.INT8, [2], [0, 0]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    folded = fold_weight_transposes(model)
    assert [n.op_type for n in folded.graph.node] == ["DequantizeLinear", "MatMul"]
    dq = folded.graph.node[0]
    assert helper.get_attribute_value(dq.attribute[0]) == 1
    new_w = {t.name: t for t in folded.graph.initializer}[dq.input[0]]
    assert new_w.data_type == TensorProto.INT8 and list(new_w.dims) == [3, 2]
    assert "w" not in {t.name for t in folded.graph.initializer}
    got = ort.InferenceSession(folded.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_operator_add_between_quantized_branches_keeps_pairs() -> None:
    """Both inputs of a quantized residual add come through DequantizeLinear."""
    ref, example, _ = _reference("residual_block")
    proto = export_onnx(ref, example)
    producer = {o: n for n in proto.graph.node for o in n.output}
    adds = [n for n in proto.graph.node if n.op_type == "Add" and all(i in producer for i in n.input)]
    assert adds and all(producer[i].op_type == "DequantizeLinear" for n in adds for i in n.input)
    assert operator.add in {n.target for n in ref.graph.nodes}


# ------------------------------------------------------------------ compare_quantize_points


def _downstream_quantize(proto: onnx.ModelProto, tensor: str) -> str:
    """The output name of the first QuantizeLinear reached from ``tensor`` (breadth first)."""
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    frontier = [tensor]
    while frontier:
        nxt = []
        for t in frontier:
            for n in consumers.get(t, []):
                if n.op_type == "QuantizeLinear":
                    return n.output[0]
                nxt.extend(n.output)
        frontier = nxt
    raise AssertionError(f"no QuantizeLinear after {tensor}")


@pytest.mark.parametrize("name", ["conv_bn_relu", "residual_block", "transformer_block"])
def test_compare_quantize_points_pairs_every_point_and_finds_them_exact(name: str) -> None:
    from quantfx.onnx import compare_quantize_points
    from quantfx.ops import is_quantize_node

    ref, example, _ = _reference(name)
    proto = export_onnx(ref, example)
    report = compare_quantize_points(ref, proto, example)
    assert [r.reference_node for r in report.rows] == [n.name for n in ref.graph.nodes if is_quantize_node(n)]
    # each segment, fed the reference's integers, rounds like the reference up to float last-bit ties
    assert report.first_divergence() is None, report.summary()
    assert report.min_sqnr() >= 40.0, report.summary()


def test_compare_quantize_points_names_the_segment_that_is_wrong() -> None:
    """A corrupted conv bias shows at the quantize point after that conv, and only there when teacher-forced."""
    from quantfx.onnx import compare_quantize_points

    ref, example, _ = _reference("conv_bn_relu")
    proto = export_onnx(ref, example)
    conv = [n for n in proto.graph.node if n.op_type == "Conv"][1]
    bias = next(t for t in proto.graph.initializer if t.name == conv.input[2])
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 1.0, bias.name))
    wrong = _downstream_quantize(proto, conv.output[0])

    forced = compare_quantize_points(ref, proto, example)
    bad = [r.onnx_tensor for r in forced.rows if r.max_steps > 1]
    assert bad == [wrong], forced.summary()
    assert forced.first_divergence().onnx_tensor == wrong
    propagated = compare_quantize_points(ref, proto, example, teacher_forced=False)
    assert len([r for r in propagated.rows if r.max_steps > 1]) > 1, propagated.summary()


def test_compare_quantize_points_refuses_an_unrelated_model() -> None:
    from quantfx.onnx import compare_quantize_points

    ref, example, _ = _reference("conv_bn_relu")
    other, other_example, _ = _reference("residual_block")
    with pytest.raises(LoweringError, match="compare a model with the reference it was exported from|do not line up"):
        compare_quantize_points(ref, export_onnx(other, other_example), example)


# ------------------------------------------------------------------ ONNX Runtime CPU friendly mapping


def test_onnxruntime_mapping_is_fused_into_int8_kernels_by_onnxruntime(tmp_path) -> None:
    """Conv + ReLU and Linear run as QLinearConv / QGemm in ONNX Runtime, and still match the reference."""
    import onnxruntime as ort

    from quantfx.onnx import get_onnxruntime_qconfig_mapping

    model, example = MODEL_SUITE["conv_bn_relu"]()
    prepared = prepare_fx(model, get_onnxruntime_qconfig_mapping(), example, backend="reference")
    with torch.no_grad():
        for batch in calibration_data(example, n=4):
            prepared(*batch)
    ref = convert_to_reference_fx(prepared)
    proto = export_onnx(ref, example)
    assert any(n.op_type in ("Relu", "Clip") for n in proto.graph.node)  # exported float; ONNX Runtime drops it
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") == 2 and "Conv" not in fused and "Relu" not in fused, fused
    assert "QGemm" in fused or "QLinearMatMul" in fused, fused
    with torch.no_grad():
        assert sqnr(ref(*example), OnnxRuntimeModule(proto)(*example)) >= 35.0


class _DeadChannelConv(nn.Module):
    """A conv (+ReLU) whose channel 1 has weights of 1e-9 and a bias of 5, like a dead channel after BN folding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight[1].fill_(1e-9)
            self.conv.bias.copy_(torch.tensor([0.1, 5.0, -0.2, 0.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def test_fit_bias_in_int32_keeps_a_dead_channel_from_overflowing_onnxruntime(monkeypatch) -> None:
    """ONNX Runtime's QLinearConv stores bias / (s_x * s_w) in int32; the pass keeps that from overflowing."""
    import quantfx.onnx.export as export_module
    from quantfx.onnx import fit_bias_in_int32, get_onnxruntime_qconfig_mapping
    from quantfx.onnx.passes import INT32_BIAS_LIMIT

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # input scale 2/255
    prepared = prepare_fx(_DeadChannelConv().eval(), get_onnxruntime_qconfig_mapping(), (x,), backend="reference")
    with torch.no_grad():
        prepared(x)
    ref = convert_to_reference_fx(prepared)
    with torch.no_grad():
        want = ref(x)
    s_x = 2.0 / 255
    assert 5.0 / (s_x * float(ref.conv.weight_scale[1])) > 2**31  # the case: int32 bias overflows

    fixed = export_onnx(ref, (x,))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in fixed.graph.initializer}
    assert len([n for n in inits if n.endswith("_int32_bias_safe")]) == 2  # a new weight and scale, nothing else
    scale = next(v for n, v in inits.items() if n.endswith("_int32_bias_safe") and v.dtype == np.float32)
    assert np.flatnonzero(scale != ref.conv.weight_scale.numpy()).tolist() == [1]  # only the dead channel moves
    assert 5.0 / (s_x * scale[1]) <= INT32_BIAS_LIMIT * 1.001
    with torch.no_grad():
        got = OnnxRuntimeModule(fixed)(x)
    assert torch.allclose(got, want, atol=0.05), (got - want).abs().amax(dim=(0, 2, 3))

    # without the pass ONNX Runtime's fused kernel gets that channel wrong: the failure the pass is for
    monkeypatch.setattr(export_module, "DEFAULT_PASSES", tuple(p for p in export_module.DEFAULT_PASSES if p is not fit_bias_in_int32))
    with torch.no_grad():
        bad = OnnxRuntimeModule(export_onnx(ref, (x,)))(x)
    assert not torch.allclose(bad[:, 1], want[:, 1], atol=0.05)
