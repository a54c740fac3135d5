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
