"""Bias correction after calibration (NNCF's FastBiasCorrection), backend-independent and opt-in.

Rounding a layer's weight to the integer grid shifts the *mean* of its
output: per output channel, ``E[W x] != E[W_q x]``. On depthwise convs and
narrow (7-bit, overflow-safe) weight grids that shift is systematic, adds up
layer after layer, and is what a plain PTQ loses most of its accuracy to.
Folding the measured shift into the float bias removes it at no run-time
cost: the bias stays float in the reference IR and every backend gets the
corrected value.

For each statically quantized conv / linear with a bias, this pass runs the
calibration batches through the prepared (float) model once with the
observers switched off, and for each input ``x`` that layer sees compares
the float layer ``f(x; W)`` with the quantized one ``f(q(x); W_q)`` (``q``:
the layer's input quantization, as calibrated; ``W_q``: the weight as
convert will quantize it). The per-channel mean of the difference is added
to the bias. Weights are untouched, so convert computes the same weight
qparams afterwards.

    prepared = prepare_fx(model, qmap, example_inputs, backend="openvino")
    calibrate(prepared, batches)
    prepared = apply_bias_correction(prepared, batches)   # a corrected copy
    reference = convert_to_reference_fx(prepared)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from ..dtypes import normalize_dtype
from ..errors import CalibrationError, QuantfxError
from ..nn.reference.modules import dequantize_weight, quantize_weight
from ..nn.reference.qparams import WeightQParams
from ..observers import is_observer_or_fake_quant
from .qconfig_utils import is_fused_module
from .state import get_state

__all__ = ["BIAS_CORRECTION_KEY", "BiasCorrectionReport", "apply_bias_correction"]

#: ``gm.meta`` key of the :class:`BiasCorrectionReport` of a corrected model
BIAS_CORRECTION_KEY = "quantfx_bias_correction"

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class BiasCorrectionReport:
    """What the pass did: per corrected layer the largest |shift| relative to the bias scale; why others were skipped."""

    corrected: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    batches: int = 0


def _weighted_submodule(module: nn.Module) -> nn.Module:
    return module[0] if is_fused_module(module) else module  # type: ignore[index]


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def _input_fake_quant(gm: GraphModule, node: Node, modules: dict[str, nn.Module]) -> Any:
    """The fake-quantization the layer's input gets (from its calibrated input observer), or None."""
    arg = node.args[0] if node.args else None
    if not (isinstance(arg, Node) and arg.op == "call_module" and is_observer_or_fake_quant(modules.get(arg.target))):
        return None
    obs = modules[arg.target]
    dtype = normalize_dtype(getattr(obs, "dtype", None))
    if dtype not in (torch.uint8, torch.int8):
        return None
    scale, zero_point = obs.calculate_qparams()
    if scale.numel() != 1:
        return None
    s, zp = float(scale), int(zero_point)
    qmin, qmax = int(obs.quant_min), int(obs.quant_max)

    def fake_quant(x: Tensor) -> Tensor:
        q = torch.ops.quantfx.quantize_per_tensor(x.float(), s, zp, qmin, qmax, dtype)
        return torch.ops.quantfx.dequantize_per_tensor(q, s, zp, qmin, qmax, dtype)

    return fake_quant


class _Layer:
    """One layer under correction: its float and quantized-weight twins and the running sum of output shifts."""

    def __init__(self, target: str, weighted: nn.Module, qconfig: Any, input_fq: Any) -> None:
        observer = qconfig.weight()
        observer.node_name = f"{target}.weight"
        observer(weighted.weight.detach())
        qp = WeightQParams.from_observer(observer)
        self.weighted = weighted
        # hook-free twins (the hook sits on the layer itself); the bias cancels in their difference
        self.float_twin = copy.deepcopy(weighted)
        self.quantized = copy.deepcopy(weighted)
        with torch.no_grad():
            self.quantized.weight.copy_(dequantize_weight(quantize_weight(weighted.weight, qp), qp))
        self.input_fq = input_fq
        self.dim = _channel_dim(weighted)
        self.shift_sum = torch.zeros_like(weighted.bias, dtype=torch.float64)
        self.count = 0

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return
        xq = self.input_fq(x) if self.input_fq is not None else x
        diff = self.float_twin(x) - self.quantized(xq)
        dim = self.dim % diff.dim()
        reduce = [d for d in range(diff.dim()) if d != dim]
        self.shift_sum += diff.double().mean(dim=reduce)
        self.count += 1


def apply_bias_correction(
    prepared: GraphModule,
    calibration_data: Iterable[Any],
    *,
    quantize_inputs: bool = True,
    progress: bool = False,
) -> GraphModule:
    """A copy of calibrated ``prepared`` whose conv / linear biases absorb the output shift of quantization.

    ``calibration_data``: batches as for :func:`quantfx.api.calibrate` (the
    same ones, or any representative ones; one pass, no gradients).
    ``quantize_inputs``: also correct the mean shift of the layer's input
    quantization (clipping to the calibrated range is not zero-mean), as
    NNCF does; ``False`` corrects the weight rounding only. Layers without a
    bias, QAT modules and weight-only / dynamic layers are left as they are
    (listed in the report, ``gm.meta[BIAS_CORRECTION_KEY]``).
    """
    state = get_state(prepared)
    if not isinstance(prepared, GraphModule) or state is None:
        raise QuantfxError(
            f"apply_bias_correction expects the GraphModule returned by prepare_fx and calibrated; got "
            f"{type(prepared).__name__}. Call prepare_fx(...), run the calibration batches, then this."
        )
    if state.is_qat:
        raise QuantfxError(
            "apply_bias_correction is for post-training quantization; a QAT model (prepare_qat_fx) learns its "
            "biases with the weight fake-quant in the loop. Use prepare_fx for PTQ."
        )
    from ..api import _call_args  # local: api imports the fx passes

    gm = copy.deepcopy(prepared)
    modules = dict(gm.named_modules())
    report = BiasCorrectionReport()
    layers: dict[str, _Layer] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in state.weighted_module_qconfigs or node.target in layers:
            continue
        target = node.target
        module = modules[target]
        weighted = _weighted_submodule(module)
        if state.weighted_module_modes.get(target, "static") != "static":
            report.skipped[target] = f"{state.weighted_module_modes[target]} quantization (weights only at run time)"
        elif hasattr(module, "weight_fake_quant"):
            report.skipped[target] = "QAT module"
        elif not isinstance(weighted, _SUPPORTED):
            report.skipped[target] = f"{type(weighted).__name__} is not a conv / linear"
        elif getattr(weighted, "bias", None) is None:
            report.skipped[target] = "no bias to correct"
        else:
            input_fq = _input_fake_quant(gm, node, modules) if quantize_inputs else None
            layers[target] = _Layer(target, weighted, state.weighted_module_qconfigs[target], input_fq)

    observers = [m for m in modules.values() if is_observer_or_fake_quant(m)]
    handles = [modules[t].register_forward_pre_hook(layer) for t, layer in layers.items()]
    for obs in observers:  # statistics are final: the pass must not move them
        obs.forward = _identity  # type: ignore[method-assign]
    try:
        from tqdm import tqdm

        with torch.no_grad():
            for batch in tqdm(calibration_data, disable=not progress, desc="Bias correction", unit="batch"):
                args, kwargs = _call_args(batch)
                gm(*args, **kwargs)
                report.batches += 1
    finally:
        for h in handles:
            h.remove()
        for obs in observers:
            del obs.forward
    if report.batches == 0:
        raise CalibrationError("apply_bias_correction got no batches: pass the calibration data (a non-empty iterable)")

    with torch.no_grad():
        for target, layer in layers.items():
            if layer.count == 0:
                report.skipped[target] = "not reached by the calibration batches"
                continue
            shift = (layer.shift_sum / layer.count).to(layer.weighted.bias.dtype)
            bias = layer.weighted.bias
            report.corrected[target] = float(shift.abs().max() / bias.abs().max().clamp_min(1e-12))
            bias.add_(shift)
    gm.meta[BIAS_CORRECTION_KEY] = report
    return gm


def _identity(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x
