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

Cost. conv / linear are linear in their input, so the mean output is the
weight applied to the mean input *patch*: the pass sums ``x`` (and the
integers of ``q(x)``) over the batch and the kernel's windows instead of
running each layer twice (float64 throughout; equal to the two-convolution
definition up to float32 rounding, which it carried). ``quantfx.quantize``
goes further with :class:`BiasCorrectionRecorder`: the layers' inputs are
kept while the model calibrates, so the batches run once (up to a memory
bound, past which it falls back to the second pass). A model with nothing
to correct (dynamic / weight-only layers, no biases) is not run again.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Node

from ..dtypes import normalize_dtype
from ..errors import CalibrationError, QuantfxError
from ..nn.reference.modules import dequantize_weight, quantize_weight
from ..observers import ObserverBase, is_observer_or_fake_quant
from .qconfig_utils import is_fused_module
from .state import get_state

__all__ = ["BIAS_CORRECTION_KEY", "BiasCorrectionRecorder", "BiasCorrectionReport", "apply_bias_correction"]

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


@dataclass(frozen=True)
class _InputQuant:
    """The per-tensor quantization a layer's input gets (from its calibrated input observer)."""

    scale: float
    zero_point: int
    quant_min: int
    quant_max: int
    dtype: torch.dtype

    def quantize(self, x: Tensor) -> Tensor:
        return torch.ops.quantfx.quantize_per_tensor(
            x.float(), self.scale, self.zero_point, self.quant_min, self.quant_max, self.dtype
        )

    def integers(self, x: Tensor) -> Tensor:
        """``quantize(x)`` as float32 integers, computed in place: the op's arithmetic (quantfx.ops._quantize:
        float32 inverse scale, multiply, round half to even, + zero point, clamp) without its integer cast
        and temporaries; a test holds the two equal."""
        inv_scale = torch.reciprocal(torch.tensor(self.scale, dtype=torch.float32))
        q = x.float() * inv_scale
        return q.round_().add_(self.zero_point).clamp_(self.quant_min, self.quant_max)

    def __call__(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x`` (quantize, then dequantize)."""
        return torch.ops.quantfx.dequantize_per_tensor(
            self.quantize(x), self.scale, self.zero_point, self.quant_min, self.quant_max, self.dtype
        )


def _input_fake_quant(gm: GraphModule, node: Node, modules: dict[str, nn.Module]) -> _InputQuant | None:
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
    return _InputQuant(float(scale), int(zero_point), int(obs.quant_min), int(obs.quant_max), dtype)


def _fake_quantized_weight(weight: Tensor, qp: Any) -> Tensor:
    """``dequantize_weight(quantize_weight(weight, qp), qp)``: the same float32 arithmetic (the ops' inverse scale,
    multiply, round half to even, + zero point, clamp; then - zero point, * scale) in place on one buffer, without
    the integer tensor in between. Other schemes (fp16, float qparams) take the ops themselves."""
    if qp.is_float or qp.dtype not in (torch.int8, torch.uint8) or weight.dtype != torch.float32 or qp.qscheme not in (
        torch.per_tensor_affine, torch.per_tensor_symmetric, torch.per_channel_affine, torch.per_channel_symmetric
    ):
        return dequantize_weight(quantize_weight(weight, qp), qp).to(weight.dtype)
    w = weight.detach()
    if qp.is_per_channel:
        shape = [1] * w.dim()
        shape[qp.axis % w.dim()] = -1
        scale = qp.scale.to(torch.float32).reshape(shape)
        zero_point = qp.zero_point.to(torch.int64).reshape(shape)
    else:
        scale = torch.as_tensor(float(qp.scale), dtype=torch.float32)
        zero_point = int(qp.zero_point)
    q = w * torch.reciprocal(scale)
    q.round_().add_(zero_point).clamp_(qp.quant_min, qp.quant_max)
    return q.sub_(zero_point).mul_(scale)


class _Layer:
    """One layer under correction: its float and quantized weights and the running sum of output shifts.

    The shift of one call is ``mean(f(x; W)) - mean(f(q(x); W_q))`` per output
    channel. conv / linear are linear in their input, so that mean is the
    weight applied to the mean input *patch* (``_mean_patch``): a few sums over
    ``x`` instead of two convolutions per call. Same quantity as running the
    layer twice and averaging the difference, in float64 throughout (so
    equal to it up to float32 rounding of the two-convolution form).
    """

    def __init__(self, target: str, weighted: nn.Module, qconfig: Any, input_fq: _InputQuant | None) -> None:
        from .convert import weight_qparams_for  # shared with convert, which needs the same qparams

        qp = weight_qparams_for(weighted, qconfig, target)
        self.weighted = weighted
        self.weight = weighted.weight.detach()
        self.weight_q = _fake_quantized_weight(self.weight, qp)
        self.input_fq = input_fq
        self.is_linear = isinstance(weighted, nn.Linear)
        # non-zero padding modes (reflect, circular ...) pad with data: run the two layers instead
        self.twins: tuple[nn.Module, nn.Module] | None = None
        if not self.is_linear and getattr(weighted, "padding_mode", "zeros") != "zeros":
            float_twin, quantized = copy.deepcopy(weighted), copy.deepcopy(weighted)
            with torch.no_grad():
                quantized.weight.copy_(self.weight_q)
            self.twins = (float_twin, quantized)
        self.shift_sum = torch.zeros_like(weighted.bias, dtype=torch.float64)
        # sums over calls of the mean input patch, float and quantized (the weights apply once, in shift())
        self.patch_sum: Tensor | None = None
        self.patch_q_sum: Tensor | None = None
        self.count = 0

    def _batch_sum(self, x: Tensor, quantized: bool) -> tuple[Tensor, int]:
        """Sum over the leading (batch / row) dim, in float64, of ``x`` or of its quantized *integers*; and its size."""
        if self.is_linear:
            x = x.reshape(-1, x.shape[-1])
        elif x.dim() == len(self.weighted.kernel_size) + 1:  # unbatched conv input
            x = x.unsqueeze(0)
        n = x.shape[0]
        if not quantized:
            return x.double().sum(dim=0), n  # measured 2-3x faster than sum(dtype=torch.float64)
        fq = self.input_fq
        q = fq.integers(x)  # exact integers: their sum is exact, even in float32 below 2**24
        exact32 = n * max(abs(fq.quant_min), abs(fq.quant_max)) < 2**24
        return (q.sum(dim=0).double() if exact32 else q.sum(dim=0, dtype=torch.float64)), n

    def _window_sums(self, total: Tensor) -> tuple[Tensor, int]:
        """For each input channel and kernel offset, the sum of ``total`` (C, *spatial) over the positions that
        offset reads across all outputs (zero padding reads zeros): (C, *kernel); and the number of outputs."""
        m = self.weighted
        nd = len(m.kernel_size)
        pads = m._reversed_padding_repeated_twice  # (last dim: before, after, next-to-last dim: ...)
        sums, positions = total, 1
        # one spatial dim at a time (last first): each kernel offset's positions, summed, become a kernel axis
        for i in reversed(range(nd)):
            dim, k, d, st = 1 + i, m.kernel_size[i], m.dilation[i], m.stride[i]
            before, length = pads[2 * (nd - 1 - i)], sums.shape[dim]
            size = (length + before + pads[2 * (nd - 1 - i) + 1] - d * (k - 1) - 1) // st + 1
            positions *= size
            full = sums.sum(dim=dim) if st == 1 else None
            per_offset = []
            for o in range(k):
                start = o * d - before  # input index output 0 reads (negative: in the padding)
                lo = 0 if start >= 0 else (-start + st - 1) // st  # first output reading inside the input
                hi = min(size - 1, (length - 1 - start) // st)  # last one
                first, last = start + lo * st, start + hi * st
                if hi < lo:
                    per_offset.append(sums.new_zeros(sums.shape[:dim] + sums.shape[dim + 1:]))
                elif full is not None:  # contiguous: everything but the few rows outside [first, last]
                    window = full
                    if first > 0:
                        window = window - sums.narrow(dim, 0, first).sum(dim=dim)
                    if last < length - 1:
                        window = window - sums.narrow(dim, last + 1, length - 1 - last).sum(dim=dim)
                    per_offset.append(window)
                else:
                    lead = (slice(None),) * dim
                    per_offset.append(sums[(*lead, slice(first, last + 1, st))].sum(dim=dim))
            sums = torch.stack(per_offset, dim=-1)
        return sums.permute(0, *range(nd, 0, -1)), positions  # kernel axes were appended last dim first

    def _mean_patch(self, x: Tensor, quantized: bool = False) -> Tensor:
        """Mean over batch and output positions of the input each output sees: (C_in, *kernel), or (in,) for linear.

        ``quantized``: of the fake-quantized input, ``scale * (q - zero_point)``; the affine map is applied to the
        (small) window sums, with the count of in-bounds reads for the zero point.
        """
        total, n = self._batch_sum(x, quantized)
        if self.is_linear:
            if quantized:
                total = (total - n * self.input_fq.zero_point) * self.input_fq.scale
            return total / n
        sums, positions = self._window_sums(total)
        if quantized:
            fq = self.input_fq
            reads, _ = self._window_sums(total.new_ones((1, *total.shape[1:])))  # in-bounds reads per offset
            sums = (sums - n * fq.zero_point * reads) * fq.scale
        return sums / (n * positions)

    def _mean_output(self, w: Tensor, patch: Tensor) -> Tensor:
        """Per output channel mean of the layer without its bias, from the mean input patch (float64)."""
        w = w.double()
        if self.is_linear:
            return w @ patch
        groups = self.weighted.groups
        out_ch, in_per_group = w.shape[0], w.shape[1]
        wg = w.reshape(groups, out_ch // groups, in_per_group * patch[0].numel())
        pg = patch.reshape(groups, in_per_group * patch[0].numel(), 1)
        return torch.bmm(wg, pg).reshape(out_ch)

    def add(self, x: Tensor) -> None:
        """Account for one call of the layer on (float) input ``x``."""
        if self.twins is not None:
            xq = self.input_fq(x) if self.input_fq is not None else x
            diff = self.twins[0](x) - self.twins[1](xq)
            reduce = [d for d in range(diff.dim()) if d != 1 % diff.dim()]
            self.shift_sum += diff.double().mean(dim=reduce)
        else:
            patch = self._mean_patch(x)
            patch_q = self._mean_patch(x, quantized=True) if self.input_fq is not None else patch
            self.patch_sum = patch if self.patch_sum is None else self.patch_sum + patch
            self.patch_q_sum = patch_q if self.patch_q_sum is None else self.patch_q_sum + patch_q
        self.count += 1

    def shift(self) -> Tensor:
        """The mean output shift per channel over all calls (float64); call after the last ``add``."""
        total = self.shift_sum
        if self.patch_sum is not None:
            total = total + self._mean_output(self.weight, self.patch_sum) - self._mean_output(self.weight_q,
                                                                                              self.patch_q_sum)
        return total / self.count

    def __call__(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if isinstance(x, Tensor) and x.is_floating_point():
            self.add(x)


def _check_prepared(prepared: Any) -> Any:
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
    return state


def _eligible(gm: GraphModule, state: Any, report: BiasCorrectionReport) -> dict[str, Node]:
    """Weighted module target -> its (first) call node, for each layer the pass corrects; others go to the report."""
    modules = dict(gm.named_modules())
    found: dict[str, Node] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in state.weighted_module_qconfigs:
            continue
        target = node.target
        if target in found or target in report.skipped:
            continue
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
            found[target] = node
    return found


def _make_layers(gm: GraphModule, state: Any, eligible: dict[str, Node], quantize_inputs: bool) -> dict[str, _Layer]:
    modules = dict(gm.named_modules())
    layers: dict[str, _Layer] = {}
    for target, node in eligible.items():
        input_fq = _input_fake_quant(gm, node, modules) if quantize_inputs else None
        layers[target] = _Layer(target, _weighted_submodule(modules[target]), state.weighted_module_qconfigs[target],
                                input_fq)
    return layers


def _finish(gm: GraphModule, layers: dict[str, _Layer], report: BiasCorrectionReport) -> GraphModule:
    with torch.no_grad():
        for target, layer in layers.items():
            if layer.count == 0:
                report.skipped[target] = "not reached by the calibration batches"
                continue
            shift = layer.shift().to(layer.weighted.bias.dtype)
            bias = layer.weighted.bias
            report.corrected[target] = float(shift.abs().max() / bias.abs().max().clamp_min(1e-12))
            bias.add_(shift)
    gm.meta[BIAS_CORRECTION_KEY] = report
    return gm


def apply_bias_correction(
    prepared: GraphModule,
    calibration_data: Iterable[Any],
    *,
    quantize_inputs: bool = True,
    progress: bool = False,
    inplace: bool = False,
    recorded: BiasCorrectionRecorder | None = None,
) -> GraphModule:
    """A copy of calibrated ``prepared`` whose conv / linear biases absorb the output shift of quantization.

    ``calibration_data``: batches as for :func:`quantfx.api.calibrate` (the
    same ones, or any representative ones; one pass, no gradients).
    ``quantize_inputs``: also correct the mean shift of the layer's input
    quantization (clipping to the calibrated range is not zero-mean), as
    NNCF does; ``False`` corrects the weight rounding only. Layers without a
    bias, QAT modules and weight-only / dynamic layers are left as they are
    (listed in the report, ``gm.meta[BIAS_CORRECTION_KEY]``); when no layer
    qualifies the data is not run at all. ``inplace=True`` corrects
    ``prepared`` itself instead of a copy (what ``quantfx.quantize`` does with
    its own prepared model). ``recorded``: the :class:`BiasCorrectionRecorder`
    that watched ``prepared`` calibrate; its kept inputs replace the pass over
    ``calibration_data`` when it has them all.
    """
    state = _check_prepared(prepared)
    if recorded is not None and recorded.gm is not prepared:
        raise QuantfxError(
            "apply_bias_correction(recorded=...) got a BiasCorrectionRecorder installed on another model; pass the "
            "recorder created with BiasCorrectionRecorder(prepared) for this prepared model, or none"
        )
    report = BiasCorrectionReport()
    eligible = _eligible(prepared, state, report)
    kept = recorded.take() if recorded is not None else None
    if not eligible:  # nothing to correct: skip the pass over the data (and the copy)
        gm = prepared if inplace else copy.deepcopy(prepared)
        gm.meta[BIAS_CORRECTION_KEY] = report
        return gm
    gm = prepared if inplace else copy.deepcopy(prepared)
    if not inplace:
        eligible = _eligible(gm, state, BiasCorrectionReport())
    layers = _make_layers(gm, state, eligible, quantize_inputs)
    if kept is not None:
        with torch.no_grad():
            for target, layer in layers.items():
                for x in kept.get(target, ()):
                    layer.add(x)
        report.batches = recorded.batches  # type: ignore[union-attr]
    else:
        report.batches = _run(gm, layers, calibration_data, progress)
    if report.batches == 0:
        raise CalibrationError("apply_bias_correction got no batches: pass the calibration data (a non-empty iterable)")
    return _finish(gm, layers, report)


def _run(gm: GraphModule, layers: dict[str, _Layer], calibration_data: Iterable[Any], progress: bool) -> int:
    """Run the batches with observers switched off and the layers' hooks on; returns the batch count."""
    from ..api import _call_args  # local: api imports the fx passes

    modules = dict(gm.named_modules())
    observers = [m for m in modules.values() if is_observer_or_fake_quant(m)]
    handles = [modules[t].register_forward_pre_hook(layer) for t, layer in layers.items()]
    for obs in observers:  # statistics are final: the pass must not move them
        obs.forward = _identity  # type: ignore[method-assign]
    batches = 0
    try:
        from tqdm import tqdm

        with torch.no_grad():
            for batch in tqdm(calibration_data, disable=not progress, desc="Bias correction", unit="batch"):
                args, kwargs = _call_args(batch)
                gm(*args, **kwargs)
                batches += 1
    finally:
        for h in handles:
            h.remove()
        for obs in observers:
            del obs.forward
    return batches


class BiasCorrectionRecorder:
    """Bias correction without a second pass: keeps the layers' inputs while the model calibrates.

    ``quantfx.quantize`` installs one before calibrating; :meth:`apply` then
    corrects from the kept inputs. The inputs of a calibration pass are the
    ones a second pass would see (observers return their input unchanged),
    so the result is that of :func:`apply_bias_correction` on the same
    batches. Keeping them costs memory: past ``max_bytes`` the recorder drops
    them and :meth:`apply` runs the batches again, as does an input that was
    modified in place after the layer read it, or a fake-quant in the graph.

        recorder = BiasCorrectionRecorder(prepared)
        calibrate(prepared, batches)
        prepared = recorder.apply(batches)     # corrects prepared in place
    """

    def __init__(self, prepared: GraphModule, *, quantize_inputs: bool = True, max_bytes: int = 512 * 2**20) -> None:
        self.gm = prepared
        self.state = _check_prepared(prepared)
        self.quantize_inputs = quantize_inputs
        self.max_bytes = max_bytes
        self.eligible = _eligible(prepared, self.state, BiasCorrectionReport())
        modules = dict(prepared.named_modules())
        pure_observers = all(isinstance(m, ObserverBase) for m in modules.values() if is_observer_or_fake_quant(m))
        self.kept: dict[str, list[tuple[Tensor, int]]] | None = {t: [] for t in self.eligible} if pure_observers else None
        self.bytes = 0
        self.batches = 0
        self._seen: set[int] = set()
        self.handles: list[Any] = []
        if self.eligible and self.kept is not None:
            self.handles = [modules[t].register_forward_pre_hook(self._hook(t)) for t in self.eligible]
            self.handles.append(prepared.register_forward_pre_hook(self._count))

    def _count(self, _module: nn.Module, _args: tuple[Any, ...]) -> None:
        self.batches += 1

    def _hook(self, target: str) -> Any:
        def keep(_module: nn.Module, args: tuple[Any, ...]) -> None:
            if self.kept is None:
                return
            x = args[0] if args else None
            if not (isinstance(x, Tensor) and x.is_floating_point()):
                return
            key = id(x)  # one tensor read by several layers is kept once
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += x.numel() * x.element_size()
            if self.bytes > self.max_bytes:
                self.drop()
                return
            self.kept[target].append((x, x._version))

        return keep

    def drop(self) -> None:
        """Stop keeping inputs (apply will run the batches again)."""
        self.kept = None
        self.remove_hooks()

    def remove_hooks(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def take(self) -> dict[str, list[Tensor]] | None:
        """The kept inputs per layer target, if complete and untouched since (then released here); else None."""
        self.remove_hooks()
        kept, self.kept = self.kept, None
        if kept is None or any(x._version != v for calls in kept.values() for x, v in calls):
            return None
        return {t: [x for x, _ in calls] for t, calls in kept.items()}

    def apply(self, calibration_data: Iterable[Any], progress: bool = False) -> GraphModule:
        """Correct the biases of the prepared model in place: from the kept inputs, else from the batches again."""
        return apply_bias_correction(self.gm, calibration_data, quantize_inputs=self.quantize_inputs,
                                     progress=progress, inplace=True, recorded=self)


def _identity(x: Any, *args: Any, **kwargs: Any) -> Any:
    return x
