"""Bias correction (quantfx.fx.bias_correction): the mean output shift of quantization moves into the bias.

Oracle: the float model. A coarse weight grid (7 levels) on inputs with a
non-zero mean shifts each output channel by a constant; after correction the
reference IR's per-channel mean error must (nearly) vanish and its total
error drop. Weights already on the grid must come out unchanged.
"""

from __future__ import annotations

import pytest
import quantfx
import torch
from quantfx.api import get_default_qat_qconfig_mapping
from quantfx.errors import CalibrationError, QuantfxError
from quantfx.fx.bias_correction import BIAS_CORRECTION_KEY, apply_bias_correction
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx, prepare_qat_fx
from torch import nn


def _qconfig(wmin: int = -3, wmax: int = 3, per_channel: bool = False) -> quantfx.QConfig:
    """uint8 activations; int8 weights on a (by default very coarse) symmetric grid."""
    if per_channel:
        weight = quantfx.PerChannelMinMaxObserver.with_args(
            dtype=torch.int8, qscheme=torch.per_channel_symmetric, quant_min=wmin, quant_max=wmax
        )
    else:
        weight = quantfx.MinMaxObserver.with_args(
            dtype=torch.int8, qscheme=torch.per_tensor_symmetric, quant_min=wmin, quant_max=wmax
        )
    return quantfx.QConfig(activation=quantfx.MinMaxObserver.with_args(dtype=torch.uint8), weight=weight)


class LinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.relu(self.conv(x)))


def _batches(shape: tuple[int, ...], n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) + 1.5 for _ in range(n)]  # mean 1.5: weight rounding shifts outputs


def _prepared(model: nn.Module, qconfig: quantfx.QConfig, batches: list[torch.Tensor]) -> torch.fx.GraphModule:
    prepared = prepare_fx(model.eval(), quantfx.QConfigMapping().set_global(qconfig), (batches[0],), backend="reference")
    with torch.no_grad():
        for x in batches:
            prepared(x)
    return prepared


def _bias(gm: torch.nn.Module, name: str) -> torch.Tensor:
    module = gm.get_submodule(name)
    return module[0].bias if isinstance(module, nn.Sequential) else module.bias  # fused LinearReLU holds the Linear


def _errors(model: nn.Module, ref: torch.nn.Module, x: torch.Tensor, channel_dim: int) -> tuple[float, float]:
    """(largest per-channel |mean error|, RMS error) of ``ref`` against the float ``model``."""
    with torch.no_grad():
        diff = ref(x) - model(x)
    reduce = [d for d in range(diff.dim()) if d != channel_dim % diff.dim()]
    return float(diff.mean(dim=reduce).abs().max()), float(diff.pow(2).mean().sqrt())


@pytest.mark.parametrize(
    ("factory", "shape", "channel_dim", "per_channel"),
    [(LinearNet, (64, 16), -1, False), (ConvNet, (4, 4, 12, 12), 1, True)],
    ids=["linear", "conv+relu+depthwise"],
)
def test_correction_removes_the_mean_shift_of_coarse_weights(factory, shape, channel_dim, per_channel) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    calib = _batches(shape, 8, seed=0)
    prepared = _prepared(model, _qconfig(per_channel=per_channel), calib)
    held_out = torch.cat(_batches(shape, 4, seed=1))

    before = _errors(model, convert_to_reference_fx(prepared), held_out, channel_dim)
    corrected = apply_bias_correction(prepared, calib)
    after = _errors(model, convert_to_reference_fx(corrected), held_out, channel_dim)

    assert after[0] < 0.25 * before[0], f"per-channel mean error {before[0]:.4f} -> {after[0]:.4f}"
    assert after[1] < 0.8 * before[1], f"RMS error {before[1]:.4f} -> {after[1]:.4f}"
    report = corrected.meta[BIAS_CORRECTION_KEY]
    assert report.batches == len(calib) and set(report.corrected) >= {n for n, _ in model.named_children() if n != "relu"}


def test_prepared_model_and_its_observers_are_left_alone() -> None:
    torch.manual_seed(0)
    calib = _batches((32, 16), 4, seed=0)
    prepared = _prepared(LinearNet(), _qconfig(), calib)
    bias = _bias(prepared, "fc1").clone()
    observed = {k: v.clone() for k, v in prepared.state_dict().items() if "activation_post_process" in k}

    corrected = apply_bias_correction(prepared, [b * 10 for b in calib])  # would widen every range if observed

    assert torch.equal(_bias(prepared, "fc1"), bias)
    assert not torch.equal(_bias(corrected, "fc1"), bias)
    after = {k: v for k, v in corrected.state_dict().items() if "activation_post_process" in k}
    assert observed.keys() == after.keys() and all(torch.equal(observed[k], after[k]) for k in observed)


def test_weights_on_the_grid_are_not_corrected() -> None:
    model = LinearNet().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for fc in (model.fc1, model.fc2):
            k = torch.randint(-127, 128, fc.weight.shape, generator=gen).float()
            k.view(-1)[0] = 127  # max |w| = 127 * 2**-7: scale is exactly 2**-7, every weight is on the grid
            fc.weight.copy_(k * 2.0**-7)
    calib = _batches((32, 16), 4, seed=0)
    prepared = _prepared(model, _qconfig(-127, 127), calib)

    corrected = apply_bias_correction(prepared, calib, quantize_inputs=False)

    for name in ("fc1", "fc2"):
        torch.testing.assert_close(_bias(corrected, name), _bias(prepared, name), rtol=0, atol=1e-6)


def test_layer_without_bias_is_skipped_with_a_reason() -> None:
    model = LinearNet().eval()
    model.fc2 = nn.Linear(32, 8, bias=False)
    calib = _batches((32, 16), 2, seed=0)
    corrected = apply_bias_correction(_prepared(model, _qconfig(), calib), calib)
    report = corrected.meta[BIAS_CORRECTION_KEY]
    assert "fc1" in report.corrected and report.skipped["fc2"] == "no bias to correct"


def test_errors_name_what_was_expected() -> None:
    with pytest.raises(QuantfxError, match="prepare_fx"):
        apply_bias_correction(LinearNet(), [torch.randn(2, 16)])
    calib = _batches((8, 16), 2, seed=0)
    prepared = _prepared(LinearNet(), _qconfig(), calib)
    with pytest.raises(CalibrationError, match="no batches"):
        apply_bias_correction(prepared, [])
    qat_mapping = get_default_qat_qconfig_mapping("reference")
    qat = prepare_qat_fx(LinearNet().train(), qat_mapping, (calib[0],), backend="reference")
    with pytest.raises(QuantfxError, match="post-training"):
        apply_bias_correction(qat, calib)


def test_quantize_applies_it_on_request_even_from_a_one_shot_iterator() -> None:
    torch.manual_seed(0)
    model = LinearNet().eval()
    calib = _batches((32, 16), 4, seed=0)
    mapping = quantfx.QConfigMapping().set_global(_qconfig())
    x = torch.cat(_batches((32, 16), 2, seed=1))

    manual = convert_to_reference_fx(apply_bias_correction(_prepared(model, _qconfig(), calib), calib))
    on = quantfx.quantize(model, backend="reference", calibration_data=iter(calib), example_inputs=(calib[0],),
                          qconfig_mapping=mapping, progress=False, bias_correction=True)
    off = quantfx.quantize(model, backend="reference", calibration_data=calib, example_inputs=(calib[0],),
                           qconfig_mapping=mapping, progress=False)

    with torch.no_grad():
        torch.testing.assert_close(on(x), manual(x))
        assert not torch.allclose(off(x), manual(x))
