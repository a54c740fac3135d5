"""Bias correction (quantfx.fx.bias_correction): the mean output shift of quantization moves into the bias.

Oracle: the float model. A coarse weight grid (7 levels) on inputs with a
non-zero mean shifts each output channel by a constant; after correction the
reference IR's per-channel mean error must (nearly) vanish and its total
error drop. Weights already on the grid must come out unchanged.
"""

from __future__ import annotations

import copy

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


# --------------------------------------------------------------------------- cost: one pass, no convolutions


class Geometry(nn.Module):
    """Every conv geometry the mean-patch arithmetic handles, a reflect-padded conv (the two-layer path),
    Conv1d and a Linear on 3-d input."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.c3 = nn.Conv2d(8, 6, (3, 5), stride=(2, 1), padding="valid")
        self.c4 = nn.Conv2d(6, 6, 4, padding="same")
        self.c5 = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect")
        self.c1d = nn.Conv1d(6, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c5(self.c4(torch.relu(self.c3(self.c2(self.c1(x))))))
        x = self.c1d(x.mean(-1))
        return self.fc(x.transpose(1, 2))


def _oracle_shifts(prepared: torch.fx.GraphModule, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The definition, in float64: per call, mean over all but the channel dim of f(x; W) - f(q(x); W_q)."""
    from quantfx.fx.bias_correction import _input_fake_quant
    from quantfx.fx.state import get_state
    from quantfx.nn.reference.modules import dequantize_weight, quantize_weight
    from quantfx.nn.reference.qparams import WeightQParams

    state = get_state(prepared)
    modules = dict(prepared.named_modules())
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.target in state.weighted_module_qconfigs:
            hooks.append(modules[node.target].register_forward_pre_hook(
                lambda _m, args, t=node.target: inputs.setdefault(t, []).append(args[0].clone())))
    with torch.no_grad():
        for x in batches:
            prepared(x)
    for h in hooks:
        h.remove()
    shifts = {}
    for node in prepared.graph.nodes:
        target = node.target
        if node.op != "call_module" or target not in inputs:
            continue
        layer = modules[target][0] if isinstance(modules[target], nn.Sequential) else modules[target]
        observer = state.weighted_module_qconfigs[target].weight()
        observer(layer.weight.detach())
        qp = WeightQParams.from_observer(observer)
        float64, quantized = copy.deepcopy(layer).double(), copy.deepcopy(layer).double()
        with torch.no_grad():
            quantized.weight.copy_(dequantize_weight(quantize_weight(layer.weight, qp), qp).double())
        fq = _input_fake_quant(prepared, node, modules)
        total = 0
        for x in inputs[target]:
            with torch.no_grad():
                diff = float64(x.double()) - quantized(fq(x).double())
            channel = diff.dim() - 1 if isinstance(layer, nn.Linear) else 1
            total = total + diff.mean(dim=[d for d in range(diff.dim()) if d != channel])
        shifts[target] = total / len(inputs[target])
    return shifts


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_shift_matches_the_float64_definition_for_every_conv_geometry() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 33, 30, generator=gen) + 0.5 for _ in range(3)]
    prepared = prepare_fx(Geometry().eval(), quantfx.get_default_qconfig_mapping("reference"), (batches[0],),
                          backend="reference")
    with torch.no_grad():
        for x in batches:
            prepared(x)
    expected = _oracle_shifts(prepared, batches)

    corrected = apply_bias_correction(prepared, batches)

    assert set(corrected.meta[BIAS_CORRECTION_KEY].corrected) == set(expected) == {
        "c1", "c2", "c3", "c4", "c5", "c1d", "fc"}
    for target, shift in expected.items():
        got = (_bias(corrected, target) - _bias(prepared, target)).double()
        # what is left is the float32 rounding of bias + shift
        torch.testing.assert_close(got, shift, rtol=1e-4, atol=2e-7 * float(_bias(prepared, target).abs().max()),
                                   msg=lambda m, t=target: f"{t}: {m}")


class _CountingBatches:
    """A re-iterable calibration set that counts how many passes were made over it."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def test_quantize_corrects_from_one_pass_and_matches_the_two_pass_function() -> None:
    torch.manual_seed(0)
    model = ConvNet().eval()
    batches = _batches((4, 4, 12, 12), 4, seed=0)
    mapping = quantfx.QConfigMapping().set_global(_qconfig(per_channel=True))
    data = _CountingBatches(batches)

    one_pass = quantfx.quantize(model, backend="reference", calibration_data=data, example_inputs=(batches[0],),
                                qconfig_mapping=mapping, progress=False, bias_correction=True)
    two_pass = convert_to_reference_fx(apply_bias_correction(_prepared(model, _qconfig(per_channel=True), batches),
                                                             batches))

    assert data.passes == 1
    for name in ("conv", "dw"):
        assert torch.equal(one_pass.get_submodule(name).bias, two_pass.get_submodule(name).bias), name


def test_recorder_falls_back_to_a_second_pass_when_it_cannot_keep_the_inputs() -> None:
    from quantfx.fx.bias_correction import BiasCorrectionRecorder

    torch.manual_seed(0)
    model = ConvNet().eval()
    batches = _batches((4, 4, 12, 12), 3, seed=0)
    qconfig = _qconfig(per_channel=True)
    expected = apply_bias_correction(_prepared(model, qconfig, batches), batches)

    def recorded(max_bytes: int, touch: bool) -> tuple[torch.fx.GraphModule, int]:
        prepared = prepare_fx(model, quantfx.QConfigMapping().set_global(qconfig), (batches[0],), backend="reference")
        recorder = BiasCorrectionRecorder(prepared, max_bytes=max_bytes)
        with torch.no_grad():
            for x in batches:
                prepared(x)
        if touch:  # an input changed in place after the layer read it: the kept copy is no longer what it saw
            recorder.kept["dw"][0][0].add_(0.0)
        data = _CountingBatches(batches)
        return recorder.apply(data), data.passes

    for max_bytes, touch, passes in ((512 * 2**20, False, 0), (0, False, 1), (512 * 2**20, True, 1)):
        corrected, made = recorded(max_bytes, touch)
        assert made == passes, (max_bytes, touch)
        for name in ("conv", "dw"):
            assert torch.equal(_bias(corrected, name), _bias(expected, name)), (name, max_bytes, touch)


def test_model_with_nothing_to_correct_is_not_run_again() -> None:
    linear = LinearNet().eval()
    batches = _batches((8, 16), 3, seed=0)
    dynamic = quantfx.QConfig(activation=quantfx.PlaceholderObserver.with_args(dtype=torch.uint8, is_dynamic=True),
                              weight=quantfx.MinMaxObserver.with_args(dtype=torch.int8,
                                                                      qscheme=torch.per_tensor_symmetric))
    prepared = prepare_fx(linear, quantfx.QConfigMapping().set_global(dynamic), (batches[0],), backend="reference")
    prepared(batches[0])
    data = _CountingBatches(batches)

    corrected = apply_bias_correction(prepared, data)

    report = corrected.meta[BIAS_CORRECTION_KEY]
    assert data.passes == 0 and report.batches == 0 and not report.corrected
    assert set(report.skipped) == {"fc1", "fc2"} and "dynamic" in report.skipped["fc1"]


@pytest.mark.parametrize(
    "weight_observer",
    [
        quantfx.PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_symmetric),
        quantfx.PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_affine),
        quantfx.PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_symmetric,
                                                   quant_min=-63, quant_max=63),
        quantfx.MinMaxObserver.with_args(dtype=torch.uint8, qscheme=torch.per_tensor_affine),
        quantfx.MinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_tensor_symmetric, quant_min=-3, quant_max=3),
    ],
    ids=["per-channel-sym", "per-channel-affine", "per-channel-7bit", "per-tensor-u8", "per-tensor-3-levels"],
)
def test_in_place_quantization_arithmetic_is_the_ops_bit_for_bit(weight_observer) -> None:
    """The pass re-does the quantize ops' arithmetic in place (for speed); it must give the very same numbers."""
    from quantfx.fx.bias_correction import _fake_quantized_weight, _InputQuant
    from quantfx.nn.reference.modules import dequantize_weight, quantize_weight
    from quantfx.nn.reference.qparams import WeightQParams

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=gen) * 0.1 + 0.01
    observer = weight_observer()
    observer(w)
    qp = WeightQParams.from_observer(observer)
    assert torch.equal(_fake_quantized_weight(w, qp), dequantize_weight(quantize_weight(w, qp), qp))

    fq = _InputQuant(scale=0.0371, zero_point=97, quant_min=0, quant_max=127, dtype=torch.uint8)
    x = torch.randn(4, 8, 5, 5, generator=gen) * 3
    x.view(-1)[:50] = (torch.arange(50) - 25 + 0.5) * 0.0371  # ties: round half to even
    assert torch.equal(fq.integers(x), fq.quantize(x).float())
