"""Float model outputs (quantfx.fx.float_outputs): the last op's result reaches the user unrounded.

Oracle: the untouched reference model. Rounding the rewritten model's output
with the removed quantize parameters must give the original reference output
bit for bit, and everything upstream (inputs and weights of the last op) must
stay quantized.
"""

from __future__ import annotations

import copy

import quantfx
import torch
from quantfx.fx.float_outputs import keep_outputs_float
from quantfx.plugins import get_plugin_manager
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from torch import nn

_Q = torch.ops.quantfx.quantize_per_tensor.default
_DQ = torch.ops.quantfx.dequantize_per_tensor.default


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


class TwoHeads(nn.Module):
    """Returns a tuple; ``a`` also feeds ``b``, so its quantize must survive for that reader."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.a(x)
        return a, self.b(a)


def _reference(model: nn.Module, example: torch.Tensor, qconfig_mapping=None) -> torch.fx.GraphModule:
    qmap = qconfig_mapping or quantfx.get_default_qconfig_mapping("reference")
    prepared = prepare_fx(model.eval(), qmap, (example,), backend="reference")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn(example.shape, generator=gen))
    return convert_to_reference_fx(prepared)


def _output_qparams(reference: torch.fx.GraphModule) -> list[tuple]:
    out = next(n for n in reference.graph.nodes if n.op == "output")
    args = out.args[0] if isinstance(out.args[0], (tuple, list)) else (out.args[0],)
    return [tuple(a.args[1:]) for a in args]


def test_output_is_the_unrounded_result_of_the_last_op() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    reference = _reference(Classifier(), x)
    (qparams,) = _output_qparams(reference)
    rewritten = copy.deepcopy(reference)
    n_quantize = sum(n.target == _Q for n in reference.graph.nodes)

    kept = keep_outputs_float(rewritten)

    out = next(n for n in rewritten.graph.nodes if n.op == "output")
    assert kept == [out.args[0].name] and out.args[0].op == "call_module" and out.args[0].target == "fc"
    # only the output's pair is gone: the fc's input is still quantize -> dequantize
    assert sum(n.target == _Q for n in rewritten.graph.nodes) == n_quantize - 1
    assert out.args[0].args[0].target == _DQ
    with torch.no_grad():
        expected, actual = reference(x), rewritten(x)
    scale, zero_point, qmin, qmax, dtype = qparams
    assert not torch.equal(actual, expected), "the output should no longer sit on the 8-bit grid"
    torch.testing.assert_close(torch.ops.quantfx.dequantize_per_tensor(_Q(actual, *qparams), *qparams), expected,
                               rtol=0, atol=0)
    in_range = (actual >= (qmin - zero_point) * scale) & (actual <= (qmax - zero_point) * scale)
    assert in_range.float().mean() > 0.5
    assert (actual - expected)[in_range].abs().max() <= scale / 2 + 1e-6


def test_tuple_outputs_and_a_shared_quantize() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 16)
    reference = _reference(TwoHeads(), x)
    rewritten = copy.deepcopy(reference)

    kept = keep_outputs_float(rewritten)

    assert sorted(kept) == ["a", "b"]
    out = next(n for n in rewritten.graph.nodes if n.op == "output")
    assert [a.target for a in out.args[0]] == ["a", "b"]
    # b still reads a quantized a
    b = out.args[0][1]
    assert b.args[0].target == _DQ and b.args[0].args[0].target == _Q and b.args[0].args[0].args[0].target == "a"
    with torch.no_grad():
        (ra, rb), (fa, fb) = reference(x), rewritten(x)
    assert torch.equal(ra, torch.ops.quantfx.dequantize_per_tensor(_Q(fa, *_output_qparams(reference)[0]),
                                                                   *_output_qparams(reference)[0]))
    assert (fb - rb).abs().max() > 0


class FloatNormBetween(nn.Module):
    """``a`` is read by a float LayerNorm and by the quantized ``c``; the norm feeds the quantized ``b``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16)
        self.b = nn.Linear(16, 4)
        self.c = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.a(x)
        return self.b(self.norm(a)), self.c(a)


def _reader_input(reference: torch.fx.GraphModule, target: str) -> torch.fx.Node:
    return next(n for n in reference.graph.nodes if n.op == "call_module" and n.target == target).args[0]


def test_float_readers_get_the_unrounded_value_quantized_readers_the_rounded_one() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 16)
    qmap = quantfx.get_default_qconfig_mapping("reference").set_object_type(nn.LayerNorm, None)
    reference = _reference(FloatNormBetween(), x, qmap)
    assert _reader_input(reference, "norm").target == _DQ

    kept = keep_outputs_float(reference)

    assert set(kept) == {"a", "b", "c"}
    assert _reader_input(reference, "norm").target == "a"  # float LayerNorm reads the linear directly
    for quantized_reader in ("b", "c"):  # still int8 inputs: b reads the norm's output quantized, c reads a's
        dq = _reader_input(reference, quantized_reader)
        assert dq.target == _DQ and dq.args[0].target == _Q
    assert _reader_input(reference, "c").args[0].args[0].target == "a"
    with torch.no_grad():
        reference(x)


def test_unquantized_graph_is_left_alone() -> None:
    """Nothing quantized (global qconfig None): no rewrite, no recompile."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Softmax(dim=-1))
    reference = _reference(model, torch.randn(2, 8), quantfx.QConfigMapping())
    code = reference.code

    assert keep_outputs_float(reference) == []
    assert reference.code == code


def test_quantize_applies_it_by_backend_default_or_on_request() -> None:
    torch.manual_seed(0)
    model = Classifier().eval()
    calib = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    x = torch.randn(4, 3, 8, 8)
    assert get_plugin_manager().get_backend("reference").float_outputs is False
    kwargs = dict(backend="reference", calibration_data=calib, example_inputs=(calib[0],), progress=False)
    rounded = quantfx.quantize(model, **kwargs)
    unrounded = quantfx.quantize(model, float_outputs=True, **kwargs)
    with torch.no_grad():
        r, f = rounded(x), unrounded(x)
    # same int8 computation up to the last rounding: r is f rounded to the output grid
    step = r.unique().diff().min().item()
    inside = (f > r.min()) & (f < r.max())
    assert (f - r)[inside].abs().max().item() <= step / 2 + 1e-5
    assert (f != r).float().mean() > 0.9, "float_outputs=True should not round the output"
