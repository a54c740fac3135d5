"""``layerwise_divergence``: OpenVINO vs the reference, one quantization point at a time.

An end-to-end SQNR cannot tell a lowering bug from rounding noise on a deep
model (see test_efficientnet_lite0.py); comparing each FakeQuantize with the
reference op run on OpenVINO's own inputs can: float rounding order flips a
few elements in 10^5 by one step, a skipped rounding or a shifted range flips
a large share. The conv -> add case is the one found on EfficientNet-Lite0
(OpenVINO fuses the add into the conv and does not round the conv output).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from quantfx import api
from quantfx.backend_config import BackendConfig
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.models import (
    calibration_data,
    cat_pool_flatten,
    conv_bn_relu,
    depthwise_separable,
    residual_block,
)
from quantfx_openvino.backend_config import (
    conv_add_configs,
    get_openvino_backend_config,
)
from quantfx_openvino.fake_quant import to_fake_quant
from quantfx_openvino.lowering import LayerDivergence, layerwise_divergence
from torch import nn

# float rounding order (oneDNN's int32 accumulation + fused requantize vs torch's float32 conv) flips
# a few elements in 10^5 by one step; a real divergence flips percents (conv -> add: 8 to 18 %)
NOISE = 1e-3


def _reference(factory: Any, backend_config: BackendConfig | None = None) -> tuple[Any, tuple[Any, ...], torch.Tensor]:
    model, example_inputs = factory()
    prepared = prepare_fx(
        model, api.get_default_qconfig_mapping("openvino"), example_inputs, backend_config=backend_config,
        backend="openvino",
    )
    with torch.no_grad():
        for batch in calibration_data(example_inputs, n=4, seed=0):
            prepared(*batch)
    evals = torch.cat([b[0] for b in calibration_data(example_inputs, n=4, seed=1)])
    return convert_to_reference_fx(prepared), example_inputs, evals


def _fake_quantizes(reference: Any) -> int:
    gm = to_fake_quant(reference)
    return sum(1 for n in gm.graph.nodes if n.target is torch.fake_quantize_per_tensor_affine)


def _diverging(rows: list[LayerDivergence]) -> list[LayerDivergence]:
    return [r for r in rows if r.local_mismatch > NOISE or r.local_max_steps > 1]


#: Known divergences, one step at most (anything else diverging fails the test):
#: - average pooling over an even window lands exactly on ties (2x2: a quarter of the outputs);
#:   OpenVINO averages the integers exactly and rounds half to even every time, the float32
#:   reference (mean of dequantized values, times 1 / scale) lands a hair off the tie and rounds
#:   the wrong way for about 1 tie in 5 -- the reference's arithmetic, not OpenVINO's;
#: (``x + conv(y)``, the conv as the add's *second* operand as in InvertedResidual, diverged
#: until core's matcher learned that an add is commutative; see the test below.)
_KNOWN = {
    "conv_bn_relu": {"pool"},
    "residual_block": set(),
    "depthwise_separable": set(),
    "cat_pool_flatten": {"avgpool"},
}


@pytest.mark.parametrize("factory", [conv_bn_relu, residual_block, depthwise_separable, cat_pool_flatten])
def test_every_quantization_point_follows_the_reference(factory: Any) -> None:
    reference, example_inputs, evals = _reference(factory)
    rows = layerwise_divergence(reference, example_inputs, (evals,))
    assert len(rows) == _fake_quantizes(reference) > 0
    assert rows[0].source == "x"  # graph order, starting at the model input
    unexpected = [r for r in _diverging(rows) if r.source not in _KNOWN[factory.__name__]]
    assert not unexpected, unexpected
    assert all(r.local_max_steps <= 1 for r in rows), rows


def test_conv_as_second_operand_of_a_fused_add() -> None:
    """``x + conv(y)`` (InvertedResidual, torchvision's MobileNetV2): OpenVINO fuses the add into the
    conv either way; the reference must not round the conv output either (5-8% of the add's
    outputs were one step off when the matcher followed the first operand only)."""
    reference, example_inputs, evals = _reference(depthwise_separable)
    rows = layerwise_divergence(reference, example_inputs, (evals,))
    assert not [r for r in _diverging(rows) if r.source.startswith("add")]


def _without_conv_add() -> BackendConfig:
    config = get_openvino_backend_config()
    fused = {c.pattern for c in conv_add_configs([])}
    return BackendConfig("openvino").set_backend_pattern_configs([c for c in config.configs if c.pattern not in fused])


def test_conv_output_rounded_before_a_fused_add_is_found() -> None:
    """Without the ``conv -> add`` pattern the reference rounds conv2's output; OpenVINO fuses the add and does not."""
    reference, example_inputs, evals = _reference(residual_block, _without_conv_add())
    rows = layerwise_divergence(reference, example_inputs, (evals,))
    assert [r.source for r in rows] == ["x", "stem", "conv1_relu", "conv2", "relu_out"]
    assert not _diverging(rows[:-1])  # conv2's own output (probed alone) is rounded as the reference rounds it
    assert rows[-1].local_mismatch > 0.02, rows[-1]  # ... but not when the add is fused into it
    assert rows[-1].accumulated_sqnr_db < 60


class _PadThenStride2(nn.Module):
    """TF-style "same" padding as EfficientNet-Lite writes it: an asymmetric ZeroPad2d before a stride-2 depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu6 = nn.ReLU6()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dw = nn.Conv2d(8, 8, 3, stride=2, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.pad(self.relu6(self.conv(x))))


def test_requantize_after_a_pad_is_not_probed() -> None:
    """The lowering drops the pad's requantize (so OpenVINO folds the pad into the conv); no row for it, no divergence."""
    reference, example_inputs, evals = _reference(lambda: (_PadThenStride2().eval(), (torch.randn(2, 3, 16, 16),)))
    rows = layerwise_divergence(reference, example_inputs, (evals,))
    assert len(rows) == _fake_quantizes(reference) - 1
    assert [r.source for r in rows] == ["x", "conv_relu6", "dw"]
    assert not _diverging(rows), rows
