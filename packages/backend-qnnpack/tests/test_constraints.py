"""XNNPACK's constraints hold after prepare, instead of failing in the kernels at run time.

A crafted layer whose activations and weights span ~1e-5 would get scales far
below 2**-12, and whose weights are all positive would get a non-zero weight
zero point from an affine observer. With the qnnpack BackendConfig the scale
floor is applied by prepare and the zero point is 0 by construction; a user
qconfig with affine weights is refused for that pattern (float, with a
warning), never handed to the kernels.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import quantfx
from quantfx.errors import UnsupportedQConfigWarning
from quantfx.observers import MinMaxObserver
from quantfx.qconfig import QConfig
from quantfx.qconfig_mapping import QConfigMapping
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.testing.metrics import sqnr
from quantfx_qnnpack.backend_config import XNNPACK_MIN_SCALE, get_qnnpack_backend_config


class TinyRange(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        with torch.no_grad():
            self.fc.weight.copy_(torch.rand(8, 8) * 1e-5 + 1e-6)  # all positive, tiny
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _tiny_inputs(n: int = 4) -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.rand(2, 8, generator=gen) * 1e-4,) for _ in range(n)]


def _reference(qmap=None):
    torch.manual_seed(0)
    model = TinyRange().eval()
    inputs = _tiny_inputs()
    qmap = qmap or quantfx.get_default_qconfig_mapping("qnnpack")
    prepared = prepare_fx(copy.deepcopy(model), qmap, inputs[0], backend="qnnpack")
    with torch.no_grad():
        for x in inputs:
            prepared(*x)
    return model, inputs, convert_to_reference_fx(prepared)


def _activation_scales(gm) -> list[float]:
    return [float(n.args[1]) for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.quantfx.quantize_per_tensor.default]


def test_tiny_range_gets_scale_floor_and_zero_weight_zero_point() -> None:
    # control: without qnnpack's constraints the same layer calibrates below the floor
    model, inputs, _ = _reference()
    unconstrained = prepare_fx(copy.deepcopy(model), quantfx.get_default_qconfig_mapping("reference"), inputs[0], backend="reference")
    with torch.no_grad():
        for x in inputs:
            unconstrained(*x)
    assert min(_activation_scales(convert_to_reference_fx(unconstrained))) < XNNPACK_MIN_SCALE
    model, inputs, ref = _reference()
    # the data alone would give scales ~1e-7 (activations) / ~1e-8 (weights)
    scales = _activation_scales(ref)
    assert scales and min(scales) >= XNNPACK_MIN_SCALE * (1 - 1e-6), scales
    fc = ref.fc
    assert float(fc.weight_scale.min()) >= XNNPACK_MIN_SCALE * (1 - 1e-6)
    assert torch.count_nonzero(fc.weight_zero_point) == 0
    assert fc.weight_dtype == torch.int8 and fc.weight_quant_min >= -127


@pytest.mark.parametrize("target", ["inprocess", "executorch"])
def test_tiny_range_runs_on_both_routes(target: str) -> None:
    _, inputs, ref = _reference()
    lowered = quantfx.api.lower(ref, "qnnpack", inputs[0], target=target, warn_unpartitioned=False) if target == "executorch" else quantfx.api.lower(ref, "qnnpack", inputs[0])
    with torch.no_grad():
        want = ref(*inputs[1])
        got = lowered(*inputs[1])
    assert torch.isfinite(got).all()
    assert sqnr(want, got) >= 35.0 or torch.equal(want, got)


def test_affine_weight_qconfig_is_refused_not_run() -> None:
    affine_weight = QConfig(
        activation=MinMaxObserver.with_args(dtype=torch.int8, quant_min=-128, quant_max=127),
        weight=MinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_tensor_affine, quant_min=-127, quant_max=127),
    )
    with pytest.warns(UnsupportedQConfigWarning, match="zero point"):
        _, _, ref = _reference(QConfigMapping().set_global(affine_weight))
    assert not any(type(m).__module__.startswith("quantfx.nn.reference") for m in ref.modules()), (
        "the Linear with an affine (non-zero zero point) weight must stay float, not reach XNNPACK"
    )


def test_backend_config_carries_xnnpack_constraints() -> None:
    config = get_qnnpack_backend_config()
    conv = next(c for c in config.configs if c.pattern is nn.Conv2d)
    int8 = next(dc for dc in conv.dtype_configs if dc.input_dtype == torch.int8)
    assert int8.input_dtype_with_constraints.scale_min_lower_bound == 2**-12
    assert int8.weight_dtype_with_constraints.zero_point_exact_match == 0
    assert (int8.weight_dtype_with_constraints.quant_min_lower_bound, int8.weight_dtype_with_constraints.quant_max_upper_bound) == (-127, 127)


def test_default_qconfig_has_no_reduce_range() -> None:
    qconfig = quantfx.get_default_qconfig_mapping("qnnpack").global_qconfig
    act = qconfig.activation()
    assert (act.dtype, act.quant_min, act.quant_max) == (torch.int8, -128, 127)
    weight = qconfig.weight()
    assert weight.qscheme == torch.per_channel_symmetric and (weight.quant_min, weight.quant_max) == (-127, 127)
