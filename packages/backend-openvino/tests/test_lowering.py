"""The lowering's graph structure and numerics, on hand-built reference graphs and suite models.

Expected values come from ``torch.ops.quantfx`` (the reference IR's own ops),
independent of the lowering's plain-torch rewrite and of OpenVINO.
"""

from __future__ import annotations

from typing import Any

import pytest
import quantfx.ops  # noqa: F401
import torch
from quantfx import api
from quantfx.errors import LoweringError, ValidationError
from quantfx.nn.reference import ReferenceQuantizedModule
from quantfx.testing.metrics import sqnr
from quantfx_openvino.fake_quant import check_convertible, to_fake_quant
from quantfx_openvino.lowering import lower_to_openvino
from torch import fx

Q = torch.ops.quantfx


def _ops(gm: fx.GraphModule, target: Any) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]


def test_fake_quant_form_of_a_suite_model(conv_reference: Any) -> None:
    _, ref, example_inputs = conv_reference
    n_pairs = len(_ops(ref, Q.quantize_per_tensor.default))
    fq = to_fake_quant(ref)
    assert len(_ops(fq, torch.fake_quantize_per_tensor_affine)) == n_pairs
    assert not [n for n in fq.graph.nodes if getattr(n.target, "namespace", None) == "quantfx"]
    refs = [m for m in fq.modules() if isinstance(m, ReferenceQuantizedModule)]
    assert refs and all(type(m).__name__.startswith("OpenVINO") for m in refs)
    # the rewrite computes what the reference computes (torch, before OpenVINO)
    with torch.no_grad():
        assert sqnr(ref(*example_inputs), fq(*example_inputs)) > 60
    # and left the reference model alone
    assert all(not type(m).__name__.startswith("OpenVINO") for m in ref.modules())


def _graph_module(build: Any) -> fx.GraphModule:
    graph = fx.Graph()
    build(graph)
    return fx.GraphModule(torch.nn.Module(), graph)


def test_lone_quantize_and_dequantize_are_exact() -> None:
    """A quantized output and a quantized input (no q/dq pair) become plain integer arithmetic."""

    def build(g: fx.Graph) -> None:
        x, q_in = g.placeholder("x"), g.placeholder("q_in")
        q = g.call_function(Q.quantize_per_tensor.default, (x, 0.05, 3, 0, 255, torch.uint8))
        dq = g.call_function(Q.dequantize_per_tensor.default, (q_in, 0.1, -2, -128, 127, torch.int8))
        g.output((q, dq))

    gm = _graph_module(build)
    x = torch.randn(2, 3, 8) * 4
    q_in = torch.randint(-128, 128, (2, 3, 8), dtype=torch.int8)
    lowered = lower_to_openvino(gm, (x, q_in))
    got_q, got_dq = lowered(x, q_in)
    want_q, want_dq = gm(x, q_in)
    assert got_q.dtype == torch.uint8 and torch.equal(got_q, want_q)
    assert torch.equal(got_dq, want_dq)


def test_per_channel_activation_pair_becomes_per_channel_fake_quantize() -> None:
    scales = torch.tensor([0.01, 0.02, 0.05, 0.1])
    zps = torch.tensor([0, 10, 128, 255])

    root = torch.nn.Module()
    root.register_buffer("s", scales)
    root.register_buffer("z", zps)
    graph = fx.Graph()
    x = graph.placeholder("x")
    s, z = graph.get_attr("s"), graph.get_attr("z")
    q = graph.call_function(Q.quantize_per_channel.default, (x, s, z, 1, 0, 255, torch.uint8))
    dq = graph.call_function(Q.dequantize_per_channel.default, (q, s, z, 1, 0, 255, torch.uint8))
    graph.output(dq)
    gm = fx.GraphModule(root, graph)

    fq = to_fake_quant(gm)
    assert len(_ops(fq, torch.fake_quantize_per_channel_affine)) == 1
    x_val = torch.randn(3, 4, 5) * 3
    lowered = lower_to_openvino(gm, (x_val,))
    ops = [op.get_type_name() for op in lowered.ov_model.get_ordered_ops()]
    assert ops.count("FakeQuantize") == 1
    want = gm(x_val)
    got = lowered(x_val)
    step = scales.reshape(1, 4, 1)
    assert torch.all((got - want).abs() <= step * 1.001), "OpenVINO may round ties differently, never more than a step"
    assert sqnr(want, got) > 40


def test_weights_use_the_decompression_pattern(conv_lowered: Any) -> None:
    import openvino as ov

    ops = conv_lowered.ov_model.get_ordered_ops()
    converts = [op for op in ops if op.get_type_name() == "Convert"]
    sources = [c.input_value(0).get_node() for c in converts]
    int8_sources = [s for s in sources if s.get_type_name() == "Constant" and s.get_output_element_type(0) == ov.Type.i8]
    assert len(int8_sources) == 3, "conv1, conv2 and fc weights: i8 Constant -> Convert -> Multiply"
    for convert in converts:
        users = [t.get_node().get_type_name() for t in convert.output(0).get_target_inputs()]
        assert users == ["Multiply"], "symmetric weights need no Subtract"


def test_leftover_quantfx_op_is_named() -> None:
    def build(g: fx.Graph) -> None:
        x = g.placeholder("x")
        q = g.call_function(Q.quantize_per_tensor.default, (x, 0.1, 0, 0, 255, torch.uint8))
        g.output(q)

    gm = _graph_module(build)
    with pytest.raises(LoweringError, match="quantize_per_tensor"):
        check_convertible(gm)


def test_not_a_graph_module() -> None:
    with pytest.raises(LoweringError, match="GraphModule"):
        to_fake_quant(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_unavailable_device_lists_what_exists(conv_reference: Any) -> None:
    _, ref, example_inputs = conv_reference
    with pytest.raises(ValidationError, match=r"device 'NOSUCHDEVICE' is not available here; OpenVINO sees \['CPU'"):
        api.lower(ref, "openvino", example_inputs, device="NOSUCHDEVICE")


def test_dynamic_batch(conv_reference: Any, conv_lowered: Any) -> None:
    """Lowered with a batch of 2, the model runs any batch size and matches the reference."""
    _, ref, _ = conv_reference
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert sqnr(ref(x), conv_lowered(x)) > 30


def test_export_capture_matches_torchscript(conv_reference: Any, conv_lowered: Any) -> None:
    _, ref, example_inputs = conv_reference
    exported = api.lower(ref, "openvino", example_inputs, capture="export")
    assert exported.int8_layers(), "export capture must also run int8"
    assert sqnr(conv_lowered(*example_inputs), exported(*example_inputs)) > 40
    with pytest.raises(ValidationError, match="capture must be one of"):
        api.lower(ref, "openvino", example_inputs, capture="onnx")


def test_non_tensor_inputs_are_refused(conv_reference: Any) -> None:
    _, ref, _ = conv_reference
    with pytest.raises(ValidationError, match="input #0 is list"):
        lower_to_openvino(ref, ([1.0, 2.0],))


def test_lowering_rules_run_on_the_fake_quant_graph(conv_reference: Any) -> None:
    """A plugin's rule sees the plain-torch graph; here it negates the output, which must show."""
    _, ref, example_inputs = conv_reference
    seen = []

    def negate_output(gm: fx.GraphModule) -> None:
        seen.append(len(_ops(gm, torch.fake_quantize_per_tensor_affine)))
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            neg = gm.graph.call_function(torch.neg, (out.args[0],))
        out.args = (neg,)

    lowered = lower_to_openvino(ref, example_inputs, lowering_rules=[negate_output])
    assert seen and seen[0] > 0
    with torch.no_grad():
        assert sqnr(-ref(*example_inputs), lowered(*example_inputs)) > 30
    with pytest.raises(LoweringError, match="not callable"):
        lower_to_openvino(ref, example_inputs, lowering_rules=["nope"])


@pytest.mark.parametrize("clamp", ["relu6_module", "hardtanh_fn", "clamp_method"])
def test_shared_qparams_clamp_matches_reference(clamp: str) -> None:
    """ReLU6 / hardtanh / clamp sharing its input's qparams, with 6.0 off the grid (a ReLU6 not fused
    into its conv): OpenVINO folds the clamp into the quantized domain, so the bound must be snapped."""
    root = torch.nn.Module()
    root.act = torch.nn.ReLU6()
    graph = fx.Graph()
    x = graph.placeholder("x")
    args = (0.34, 128, 0, 255, torch.uint8)  # 6.0 / 0.34 = 17.6: off the grid
    q = graph.call_function(Q.quantize_per_tensor.default, (x, *args))
    dq = graph.call_function(Q.dequantize_per_tensor.default, (q, *args))
    if clamp == "relu6_module":
        y = graph.call_module("act", (dq,))
    elif clamp == "hardtanh_fn":
        y = graph.call_function(torch.nn.functional.hardtanh, (dq, -1.3, 6.0))
    else:
        y = graph.call_method("clamp", (dq,), {"min": 0.0, "max": 6.0})
    q2 = graph.call_function(Q.quantize_per_tensor.default, (y, *args))
    graph.output(graph.call_function(Q.dequantize_per_tensor.default, (q2, *args)))
    gm = fx.GraphModule(root, graph)

    x_val = torch.randn(2, 8, 6, 6) * 10
    lowered = lower_to_openvino(gm, (x_val,))
    got, want = lowered(x_val), gm(x_val)
    assert (want == 6.12).any(), "the case must exercise the off-grid bound"
    assert torch.allclose(got, want, rtol=0, atol=1e-5), (got - want).abs().max()
