"""quantfx.lowering: finding dq -> op -> [act] -> q chains in the reference IR and replacing them."""

from __future__ import annotations

import torch
import torch.nn as nn

import quantfx
from quantfx.lowering import QParams, find_quantized_ops, float_ops_report, is_reference_module, replace_quantized_op
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

QC = quantfx.QConfig(
    activation=quantfx.MinMaxObserver.with_args(dtype=torch.uint8),
    weight=quantfx.PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_symmetric),
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.relu(self.conv(x))
        return self.conv2(y) + y


def _reference():
    torch.manual_seed(0)
    model = Net().eval()
    prepared = prepare_fx(model, quantfx.QConfigMapping().set_global(QC), (torch.randn(1, 3, 6, 6),), backend="reference")
    for _ in range(4):
        prepared(torch.randn(2, 3, 6, 6))
    return convert_to_reference_fx(prepared)


def test_finds_conv_with_fused_relu_and_output_quantize():
    ref = _reference()
    ops = find_quantized_ops(ref, select=lambda n, m: n.op == "call_module" and is_reference_module(m.get(n.target)))
    assert [op.node.target for op in ops] == ["conv", "conv2"]
    conv = ops[0]
    assert [a[0] for a in conv.activations] == ["relu"]
    assert conv.output_q is not None and conv.output_qparams.dtype == torch.uint8
    assert conv.int_inputs[0].target == torch.ops.quantfx.quantize_per_tensor.default
    assert isinstance(conv.input_qparams[0], QParams)


def test_finds_add_with_both_inputs_dequantized():
    ref = _reference()
    adds = [op for op in find_quantized_ops(ref) if op.node.op == "call_function" and "add" in str(op.node.target)]
    assert len(adds) == 1
    assert len(adds[0].dq_inputs) == 2


def test_replacing_a_chain_with_an_equivalent_integer_computation_keeps_outputs():
    ref = _reference()
    x = torch.randn(2, 3, 6, 6)
    expected = ref(x)
    (conv,) = [op for op in find_quantized_ops(ref) if op.node.target == "conv"]
    ref.add_submodule("int_conv", _IntConv(ref.get_submodule("conv"), conv))

    def make(graph):
        return graph.call_module("int_conv", (conv.int_inputs[0],))

    replace_quantized_op(ref, conv, make)
    ref.graph.lint()
    ref.recompile()
    assert not any(n.op == "call_module" and n.target == "relu" for n in ref.graph.nodes)
    torch.testing.assert_close(ref(x), expected)
    names = [name for name, _ in float_ops_report(ref)]
    assert "conv" not in names and "conv2" in names


class _IntConv(nn.Module):
    """Integer in, integer out: what a backend kernel would do (here with the reference math)."""

    def __init__(self, ref_conv, qop):
        super().__init__()
        self.ref_conv = ref_conv
        self.i, self.o = qop.input_qparams[0], qop.output_qparams

    def forward(self, q):
        Q = torch.ops.quantfx
        x = Q.dequantize_per_tensor(q, self.i.scale, self.i.zero_point, self.i.quant_min, self.i.quant_max, self.i.dtype)
        y = torch.relu(self.ref_conv(x))
        return Q.quantize_per_tensor(y, self.o.scale, self.o.zero_point, self.o.quant_min, self.o.quant_max, self.o.dtype)
