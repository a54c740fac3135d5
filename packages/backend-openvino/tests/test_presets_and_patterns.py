"""What the openvino defaults add on top of core: the conv -> add pattern, the transformer preset, bias correction.

Each is checked where it matters: the reference IR's graph (where a quantize
sits or not), OpenVINO's output against the reference, and the bias values.
"""

from __future__ import annotations

import operator

import pytest
import torch
from quantfx import api
from quantfx.fx.bias_correction import BIAS_CORRECTION_KEY
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import calibration_data
from quantfx_openvino.qconfig import get_openvino_qconfig_mapping
from torch import nn

Q = torch.ops.quantfx


class Residual(nn.Module):
    """conv -> relu -> conv, plus the block input: the add OpenVINO fuses into the second conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 16, 3, padding=1)
        self.c1 = nn.Conv2d(16, 16, 1)
        self.c2 = nn.Conv2d(16, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c0(x)
        return self.c2(torch.relu(self.c1(x))) + x


def _reference(model: nn.Module, example: tuple[torch.Tensor, ...], mapping=None) -> torch.fx.GraphModule:
    mapping = mapping if mapping is not None else api.get_default_qconfig_mapping("openvino")
    prepared = prepare_fx(model.eval(), mapping, example, backend="openvino")
    with torch.no_grad():
        for batch in calibration_data(example, n=6, seed=0):
            prepared(*batch)
    return convert_to_reference_fx(prepared)


def test_conv_feeding_a_residual_add_is_not_rounded_and_openvino_follows_the_reference() -> None:
    torch.manual_seed(0)
    example = (torch.randn(1, 3, 24, 24),)
    ref = _reference(Residual(), example)
    add = next(n for n in ref.graph.nodes if n.target in (operator.add, torch.add))
    conv_in = add.args[0]
    assert conv_in.op == "call_module" and conv_in.target == "c2", "the conv output must reach the add unquantized"
    assert [u.target for u in add.users] == [Q.quantize_per_tensor.default]
    lowered = api.lower(ref, "openvino", example)
    x = torch.randn(4, 3, 24, 24)
    with torch.no_grad():
        # a quantize between c2 and the add (which OpenVINO skips in its conv + sum fusion) gave 40 dB here
        assert sqnr(ref(x), lowered(x)) >= 60


class Encoder(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.q, self.k, self.ff = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = torch.softmax(torch.matmul(self.q(x), self.k(x).transpose(-2, -1)), dim=-1)
        x = self.ln(x + torch.matmul(att, x))
        return x + torch.nn.functional.gelu(self.ff(x))


def test_transformer_preset_quantizes_only_matmul_like_ops() -> None:
    torch.manual_seed(0)
    example = (torch.randn(1, 8, 32),)
    ref = _reference(Encoder(), example, get_openvino_qconfig_mapping("transformer"))
    quantized_inputs = {
        u.name for n in ref.graph.nodes if n.target == Q.dequantize_per_tensor.default for u in n.users
    }
    ops = {n.name: n for n in ref.graph.nodes}
    assert {"q", "k", "ff"} <= quantized_inputs and any(ops[u].target is torch.matmul for u in quantized_inputs)
    # residual adds and GELU stay float: no quantize after them (their inputs may be the dequantized
    # output of a linear / matmul; a LayerNorm output is quantized only as the input of the linear it feeds)
    float_ops = [n for n in ref.graph.nodes if n.target in (operator.add, torch.add, torch.nn.functional.gelu)]
    assert len(float_ops) == 3
    rounded = [n.name for n in float_ops if any(u.target == Q.quantize_per_tensor.default for u in n.users)]
    assert not rounded, f"residual add / GELU must stay float, got a quantize after {rounded}"
    # mixed: affine activations (a zero point that is neither 0 nor 128 somewhere)
    zps = {n.args[2] for n in ref.graph.nodes if n.target == Q.quantize_per_tensor.default}
    assert zps - {0, 128}
    lowered = api.lower(ref, "openvino", example)
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        assert sqnr(ref(x), lowered(x)) >= 30


def test_quantize_applies_bias_correction_by_default_for_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    import quantfx.fx.bias_correction as bc_module

    torch.manual_seed(0)
    model = Residual().eval()
    example = (torch.randn(1, 3, 24, 24),)
    batches = [b[0] for b in calibration_data(example, n=4, seed=0)]
    reports: list[object] = []
    real = bc_module.apply_bias_correction

    def spy(prepared, data, **kwargs):
        out = real(prepared, data, **kwargs)
        reports.append(out.meta[BIAS_CORRECTION_KEY])
        return out

    monkeypatch.setattr(bc_module, "apply_bias_correction", spy)
    assert api.get_backend("openvino").bias_correction is True
    api.quantize(model, backend="openvino", calibration_data=batches, example_inputs=example, progress=False)
    assert len(reports) == 1 and set(reports[0].corrected) == {"c0", "c1", "c2"}
    api.quantize(model, backend="openvino", calibration_data=batches, example_inputs=example, progress=False,
                 bias_correction=False)
    assert len(reports) == 1


class PadThenConv(nn.Module):
    """TF-"SAME" padding at stride 2 (asymmetric, so core cannot fold it into the conv): ZeroPad2d -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.c1 = nn.Conv2d(8, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c1(self.pad(torch.relu(self.c0(x))))


def test_pad_is_not_requantized_so_openvino_folds_it_into_the_conv():
    """The reference requantizes a pad's output on its input's grid (a no-op); left in, it blocks OpenVINO's
    Pad -> Convolution fusion (EfficientNet-Lite0 ran 5 extra Pad + Reorder nodes NNCF's model does not)."""
    from quantfx_openvino.lowering import _drop_requantize_after_pad

    model, example = PadThenConv().eval(), (torch.randn(1, 3, 16, 16),)
    ref = _reference(model, example)
    lowered = api.lower(ref, "openvino", example)
    ops = {op.get_friendly_name(): op for op in lowered.ov_model.get_ordered_ops()}
    pads = [op for op in ops.values() if op.get_type_name() == "Pad"]
    assert len(pads) == 1
    assert all(t.get_node().get_type_name() != "FakeQuantize" for t in pads[0].output(0).get_target_inputs())
    assert _drop_requantize_after_pad(lowered.ov_model) == 0  # already applied by the lowering
    runtime = lowered.compiled_model.get_runtime_model()
    assert not [op for op in runtime.get_ordered_ops() if op.get_rt_info()["layerType"].astype(str) == "Pad"]
    with torch.no_grad():
        assert sqnr(ref(*example), lowered(*example)) >= 35.0


def test_attention_matmuls_follow_nncf_transformer_placement() -> None:
    """Q x K^T: symmetric int8 inputs (no zero point, so OpenVINO's fused attention takes them);
    softmax x V: float, inputs and all, in every preset (with quantize's float_outputs, the openvino default)."""
    from quantfx.fx.float_outputs import keep_outputs_float
    from quantfx.testing.models import MODEL_SUITE

    model, example = MODEL_SUITE["transformer_block"]()
    for preset in ("transformer", "performance"):
        prepared = prepare_fx(model, get_openvino_qconfig_mapping(preset), example, backend="openvino")
        state = prepared.meta["quantfx"]
        matmuls = [n for n in prepared.graph.nodes if n.target in (torch.matmul, operator.matmul)]
        assert len(matmuls) == 2
        qk, pv = matmuls
        assert qk.name in state.quantized_patterns and state.float_reasons.get(pv.name) == "qconfig is None", preset
        with torch.no_grad():
            for batch in calibration_data(example, n=2):
                prepared(*batch)
        reference = convert_to_reference_fx(prepared)
        keep_outputs_float(reference)
        qk_ref = next(n for n in reference.graph.nodes if n.name == qk.name)
        zero_points = {a.args[2] for a in qk_ref.args if isinstance(a, torch.fx.Node)}
        assert zero_points == {128}, (preset, zero_points)  # signed symmetric, written as uint8 around 128
        pv_ref = next(n for n in reference.graph.nodes if n.name == pv.name)
        assert not any(isinstance(a, torch.fx.Node) and "dequantize" in str(a.target) for a in pv_ref.args), preset
