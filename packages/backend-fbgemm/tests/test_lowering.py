"""Structure of the lowered graph: what runs in int8, what stays float, where the region starts and ends."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantfx
import quantfx.api
import quantfx.nn.reference as nnqr
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data

from quantfx_fbgemm import int_ops, kernels
from quantfx_fbgemm.lowering import FloatFallbackWarning, lower_to_onednn
from quantfx_fbgemm.qconfig import get_dynamic_qconfig_mapping

FLOAT_COMPUTE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nnqr.Conv1d, nnqr.Conv2d, nnqr.Conv3d, nnqr.Linear)
FLOAT_COMPUTE_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, F.linear}
# conv_transpose_net: oneDNN's int8 deconvolution is not wrapped by quantfx_fbgemm.kernels yet (documented)
NO_FLOAT_CONV = [n for n in MODEL_SUITE if n != "conv_transpose_net"]


def _reference(name: str, backend: str = "x86", qmap=None):
    model, example_inputs = MODEL_SUITE[name]()
    qmap = qmap or quantfx.api.get_default_qconfig_mapping(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, qmap, example_inputs, backend=backend)
    with torch.no_grad():
        for x in [example_inputs, *calibration_data(example_inputs, n=4)]:
            prepared(*x)
    return model, example_inputs, convert_to_reference_fx(prepared)


def _lower(ref, example_inputs, backend: str = "x86", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantfx.api.lower(ref, backend, example_inputs, **kw)


@pytest.mark.parametrize("name", NO_FLOAT_CONV)
def test_no_float_conv_or_linear_left(name: str) -> None:
    """Every conv / linear of the quantized region runs a oneDNN int8 kernel."""
    _, example_inputs, ref = _reference(name)
    low = _lower(ref, example_inputs)
    modules = dict(low.named_modules())
    for node in low.graph.nodes:
        if node.op == "call_module":
            assert not isinstance(modules[node.target], FLOAT_COMPUTE_MODULES), f"{name}: {node.name} runs in float"
        if node.op == "call_function":
            assert node.target not in FLOAT_COMPUTE_FUNCTIONS, f"{name}: {node.name} runs in float"
    kinds = {type(m) for m in modules.values()}
    assert kinds & {kernels.PackedConv, kernels.PackedLinear}, f"{name}: no int8 kernel at all"


def test_region_entered_and_left_once() -> None:
    """conv-bn-relu stack: one quantize at the input, one dequantize at the output, integers in between."""
    _, example_inputs, ref = _reference("conv_bn_relu")
    low = _lower(ref, example_inputs)
    targets = [n.target for n in low.graph.nodes if n.op == "call_function"]
    assert targets.count(int_ops.quantize_in) == 1
    assert targets.count(int_ops.dequantize_out) == 1
    assert not any(str(t).startswith("quantfx.") for t in targets if isinstance(t, torch._ops.OpOverload))
    convs = [m for m in low.modules() if isinstance(m, kernels.PackedConv)]
    assert [c.post_op.name for c in convs] == ["relu", "relu"]  # BN folded, ReLU fused


def test_residual_add_fused_into_conv() -> None:
    """ResNet block: conv2 + identity add + relu is one conv kernel with a residual post-op."""
    _, example_inputs, ref = _reference("residual_block")
    low = _lower(ref, example_inputs)
    fused = [m for m in low.modules() if isinstance(m, kernels.PackedConv) and m.residual is not None]
    assert len(fused) == 1 and fused[0].post_op.name == "relu"
    assert not any(n.target in (int_ops.add_int, "add") for n in low.graph.nodes)
    x = example_inputs[0]
    assert sqnr(ref(x), low(x)) > 35.0


def test_residual_fusion_reads_shapes_from_prepare_without_running_the_model(monkeypatch) -> None:
    """prepare recorded every node's shape; lowering reuses them and fuses the same as with its own run."""
    import quantfx_fbgemm.lowering as lowering

    runs = []
    real = lowering._propagate_shapes
    monkeypatch.setattr(lowering, "_propagate_shapes", lambda gm, ex: (runs.append(1), real(gm, ex)))
    _, example_inputs, ref = _reference("residual_block")
    low = _lower(ref, example_inputs)
    assert runs == []
    for node in ref.graph.nodes:  # a reference without prepare's shapes (e.g. from elsewhere): lowering runs it
        node.meta.pop("tensor_meta", None)
    low_run = _lower(ref, example_inputs)
    assert runs == [1]
    assert low.code == low_run.code
    assert torch.equal(low(example_inputs[0]), low_run(example_inputs[0]))
    assert [m for m in low.modules() if isinstance(m, kernels.PackedConv) and m.residual is not None]


def test_fuse_residual_option_off_uses_integer_add() -> None:
    _, example_inputs, ref = _reference("residual_block")
    low = _lower(ref, example_inputs, fuse_residual=False)
    assert any(n.target is int_ops.add_int for n in low.graph.nodes)
    assert torch.equal(low(example_inputs[0]), ref(example_inputs[0]))  # unfused: bit-exact with the reference


def test_elementwise_ops_become_exact_lookup_tables() -> None:
    """sigmoid / tanh / hardsigmoid heads: 256-entry tables, bit-exact with the reference IR."""
    _, example_inputs, ref = _reference("activation_heads")
    low = _lower(ref, example_inputs)
    assert sum(isinstance(m, int_ops.Lookup) for m in low.modules()) == 3
    for x in [example_inputs, *calibration_data(example_inputs, n=3, seed=7)]:
        for a, b in zip(ref(*x), low(*x)):
            assert torch.equal(a, b)


def test_dynamic_linear_runs_the_int8_kernel() -> None:
    model, example_inputs = MODEL_SUITE["linear_relu_mlp"]()
    prepared = prepare_fx(model, get_dynamic_qconfig_mapping("x86"), example_inputs, backend="x86")
    ref = convert_to_reference_fx(prepared)
    low = _lower(ref, example_inputs)
    dyn = [m for m in low.modules() if isinstance(m, int_ops.DynamicLinear)]
    assert len(dyn) == 3
    assert not any(isinstance(m, nnqr.Linear) for m in low.modules())
    assert sqnr(model(*example_inputs), low(*example_inputs)) > 30.0


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 8), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x).view(-1) + self.b(x).view(-1)  # .view needs a contiguous tensor, not a narrow slice


def test_sibling_dynamic_linears_read_with_view_are_not_merged() -> None:
    model, x = _TwoHeads().eval(), (torch.randn(4, 16),)
    ref = convert_to_reference_fx(prepare_fx(model, get_dynamic_qconfig_mapping("x86"), x, backend="x86"))
    low = _lower(ref, x)
    assert not any(n.target is torch.narrow for n in low.graph.nodes)
    assert sum(isinstance(m, int_ops.DynamicLinear) for m in low.modules()) == 2
    with torch.no_grad():
        assert sqnr(model(*x), low(*x)) > 30.0


def test_float_fallbacks_are_reported_and_listed() -> None:
    """LayerNorm / softmax / matmul have no int8 kernel: they stay dq -> op -> q, named in one warning."""
    _, example_inputs, ref = _reference("transformer_block")
    with pytest.warns(FloatFallbackWarning) as record:
        low = quantfx.api.lower(ref, "x86", example_inputs)
    assert len(record) == 1
    message = str(record[0].message)
    for name in ("norm1", "norm2", "matmul", "softmax"):
        assert name in message
        assert name in low.quantfx_float_ops
    assert all(isinstance(m, (kernels.PackedLinear,)) or not isinstance(m, nnqr.Linear) for m in low.modules())


def test_lowering_rules_run_before_the_builtin_passes() -> None:
    seen = []
    _, example_inputs, ref = _reference("conv_bn_relu")
    lower_to_onednn(ref, example_inputs, lowering_rules=[lambda gm: seen.append(type(gm).__name__)])
    assert len(seen) == 1
    with pytest.raises(quantfx.errors.LoweringError, match="not callable"):
        lower_to_onednn(ref, example_inputs, lowering_rules=["nope"])


def test_x86_and_fbgemm_share_the_lowering_but_not_the_range() -> None:
    x86 = quantfx.api.get_default_qconfig_mapping("x86").global_qconfig.activation()
    fb = quantfx.api.get_default_qconfig_mapping("fbgemm").global_qconfig.activation()
    assert fb.quant_max == 127  # torch.ao's fbgemm default, exact on any x86
    assert x86.quant_max == (127 if kernels.needs_reduce_range() else 255)
    assert type(quantfx.api.get_backend("x86")).lower is type(quantfx.api.get_backend("fbgemm")).lower
