"""Lowering the reference IR to the oneDNN int8 kernels (shared by the ``fbgemm`` and ``x86`` backends).

The reference model (``convert_to_reference_fx``) is float ops between
quantize / dequantize nodes. This pass, on a copy, turns each quantized region
into integer work on plain uint8 tensors:

1. dynamic ``choose_qparams -> quantize -> dequantize -> Linear`` chains
   become :class:`~quantfx_fbgemm.int_ops.DynamicLinear` (FBGEMM's fused
   ``quantized::linear_dynamic`` where torch has it, else oneDNN);
2. ``dq -> conv / linear -> [relu | relu6 | hardtanh] -> q`` becomes one
   :class:`~quantfx_fbgemm.kernels.PackedConv` / ``PackedLinear`` call (the
   activation, and the clamp to a 7-bit output range, fused as a post-op); a
   following residual ``add [-> relu]`` is fused into the kernel's epilogue
   when the shapes match;
3. ops that only move values (max pool, flatten, reshape, permute, pad,
   nearest upsampling ...) run directly on the integers; any elementwise op of
   one tensor (relu, hardswish, sigmoid, tanh, ``x * c`` ...) becomes a
   256-entry :class:`~quantfx_fbgemm.int_ops.Lookup` (bit-exact); add / mul /
   cat / average pooling / mean run on the integers with one requantization;
4. what is left (layer_norm, softmax, matmul, conv-transpose, norms ...)
   stays ``dequantize -> float op -> quantize``; those nodes are reported
   once per lowering (:class:`FloatFallbackWarning`) and listed on the result
   as ``quantfx_float_ops``;
5. the remaining quantize / dequantize nodes -- the region entries and exits
   -- become :func:`~quantfx_fbgemm.int_ops.quantize_in` /
   :func:`~quantfx_fbgemm.int_ops.dequantize_out`.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

import quantfx.nn.reference as nnqr
from quantfx.errors import LoweringError, QuantfxWarning
from quantfx.lowering import QParams, QuantizedOp, find_quantized_ops, float_ops_report, replace_quantized_op

from quantfx_fbgemm import int_ops, kernels

__all__ = ["FloatFallbackWarning", "SaturationWarning", "LoweringReport", "lower_to_onednn"]

_q = torch.ops.quantfx


class FloatFallbackWarning(QuantfxWarning):
    """Some ops of a quantized region run in float (dequantize -> op -> quantize); the message names them."""


class SaturationWarning(QuantfxWarning):
    """Full-range 8-bit activations feed int8 GEMM kernels on a CPU whose u8 x s8 multiply saturates."""


@dataclass
class LoweringReport:
    """What the lowering did: kernels used per node, ops left in float (with why), saturation risks."""

    int8: list[tuple[str, str]] = field(default_factory=list)
    float_ops: list[tuple[str, str, str]] = field(default_factory=list)
    saturation: list[str] = field(default_factory=list)
    wide_inputs: list[str] = field(default_factory=list)  # GEMM kernels reading > 7-bit activations (any ISA)


# ----------------------------------------------------------------------------- op tables

_CONV_REFS = (nnqr.Conv1d, nnqr.Conv2d, nnqr.Conv3d)
_WEIGHTED_REFS = (*_CONV_REFS, nnqr.Linear)

# ops that only move / select values: exact on the integers
_MOVE_MODULES: tuple[type, ...] = (
    nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.ReplicationPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.Upsample, nn.UpsamplingNearest2d,
)
_MOVE_FUNCTIONS: set[Any] = {
    torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze,
    torch.unsqueeze, torch.narrow, F.dropout, operator.getitem, torch.repeat_interleave, F.pixel_shuffle,
    F.pixel_unshuffle, F.interpolate, F.pad, torch.movedim, torch.t,
}
_MOVE_METHODS = {
    "flatten", "reshape", "view", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "narrow", "expand",
    "repeat", "repeat_interleave", "detach", "t", "movedim", "__getitem__",
}

# elementwise ops of one tensor: become a 256-entry lookup table
_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.ELU, nn.CELU, nn.SELU,
    nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink,
    nn.Threshold, nn.LogSigmoid,
)
_ELEMENTWISE_FUNCTIONS: set[Any] = {
    F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.hardtanh, F.hardtanh_, F.hardswish, F.hardsigmoid,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.elu, F.celu, F.selu, F.leaky_relu, F.gelu, F.silu, F.mish,
    F.softplus, torch.clamp, torch.clip, torch.neg, torch.abs, torch.exp, torch.square, torch.sqrt, torch.rsqrt,
    torch.log1p, torch.erf, operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add,
    torch.sub, torch.mul, torch.div, F.logsigmoid, F.threshold,
}
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "add", "sub", "mul", "div",
    "neg", "abs", "exp", "square", "sqrt", "rsqrt", "hardtanh", "hardswish",
}

_AVG_MODULES: dict[type, str] = {
    nn.AvgPool1d: "avg_pool1d", nn.AvgPool2d: "avg_pool2d", nn.AvgPool3d: "avg_pool3d",
    nn.AdaptiveAvgPool1d: "adaptive_avg_pool1d", nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d",
    nn.AdaptiveAvgPool3d: "adaptive_avg_pool3d",
}
_MAX_MODULES: dict[type, str] = {nn.MaxPool1d: "max_pool1d", nn.MaxPool2d: "max_pool2d", nn.MaxPool3d: "max_pool3d"}
_MAX_FUNCTIONS: dict[Any, str] = {F.max_pool1d: "max_pool1d", F.max_pool2d: "max_pool2d", F.max_pool3d: "max_pool3d"}
_AVG_FUNCTIONS: dict[Any, str] = {
    torch.avg_pool1d: "avg_pool1d", F.avg_pool1d: "avg_pool1d", F.avg_pool2d: "avg_pool2d",
    F.avg_pool3d: "avg_pool3d", F.adaptive_avg_pool1d: "adaptive_avg_pool1d", torch.adaptive_avg_pool1d: "adaptive_avg_pool1d",
    F.adaptive_avg_pool2d: "adaptive_avg_pool2d", F.adaptive_avg_pool3d: "adaptive_avg_pool3d", torch.mean: "mean",
}

_ADD_TARGETS = {operator.add, torch.add, "add"}
_MUL_TARGETS = {operator.mul, torch.mul, "mul"}


def _what(node: Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    return getattr(node.target, "__name__", str(node.target))


def _is_dq(node: Any) -> bool:
    return isinstance(node, Node) and node.target == _q.dequantize_per_tensor.default


def _is_q(node: Any) -> bool:
    return isinstance(node, Node) and node.target == _q.quantize_per_tensor.default


def _qp_args(qp: QParams) -> tuple[float, int, int, int, torch.dtype]:
    return (qp.scale, qp.zero_point, qp.quant_min, qp.quant_max, qp.dtype)


def _full_range(qp: QParams) -> bool:
    info = torch.iinfo(qp.dtype)
    return qp.quant_min <= info.min and qp.quant_max >= info.max


def _erase_dead(graph: torch.fx.Graph, nodes: Sequence[Node]) -> None:
    """Erase the given nodes once they have no users (in any order), leaving everything else alone."""
    pending = [n for n in nodes if n is not None]
    changed = True
    while changed:
        changed = False
        for n in list(pending):
            if getattr(n, "_erased", False) or n.op == "output":
                pending.remove(n)
            elif not n.users:
                graph.erase_node(n)
                pending.remove(n)
                changed = True


def _meta_shape(node: Node) -> tuple[int, ...] | None:
    """The node's output shape: from the lowering's own shape run, or the ``tensor_meta`` prepare recorded.

    quantize / dequantize nodes (new in the reference graph, so without meta)
    have their input's shape.
    """
    for _ in range(3):  # dequantize <- quantize <- producer
        if "quantfx_shape" in node.meta:
            return node.meta["quantfx_shape"]
        shape = getattr(node.meta.get("tensor_meta"), "shape", None)
        if shape is not None:
            return tuple(shape)
        if not ((_is_dq(node) or _is_q(node)) and node.args and isinstance(node.args[0], Node)):
            return None
        node = node.args[0]
    return None


class _Lowering:
    def __init__(self, gm: GraphModule, report: LoweringReport) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.report = report
        self.reasons: dict[str, str] = {}  # node name -> why it stays in float
        self.isa = kernels.cpu_isa()
        self.counter = 0

    # -------------------------------------------------------------- helpers

    @property
    def modules(self) -> dict[str, nn.Module]:
        return dict(self.gm.named_modules())

    def _add_module(self, base: str, module: nn.Module) -> str:
        name = base.replace(".", "_") + "_int8"
        existing = self.modules
        i = 0
        while (name if i == 0 else f"{name}_{i}") in existing or hasattr(self.gm, name if i == 0 else f"{name}_{i}"):
            i += 1
        name = name if i == 0 else f"{name}_{i}"
        self.gm.add_submodule(name, module)
        return name

    def _check_saturation(self, node_name: str, in_qp: QParams, op: str) -> None:
        if in_qp.quant_max - in_qp.quant_min > 127 and op == "gemm":
            self.report.wide_inputs.append(node_name)
            if kernels.needs_reduce_range(self.isa, op=op):  # type: ignore[arg-type]
                self.report.saturation.append(node_name)

    # -------------------------------------------------------------- 1. dynamic linear

    def dynamic_linear(self) -> None:
        """``choose_qparams -> quantize -> dequantize -> Linear [-> relu]`` -> :class:`~quantfx_fbgemm.int_ops.DynamicLinear`.

        Route per linear (measured in docs/backends/fbgemm-kernels.md): FBGEMM's
        ``quantized::linear_dynamic`` reading the float tensor (activation
        quantization fused into the GEMM) when :func:`kernels.fbgemm_dynamic_available`
        and the chain's range is one FBGEMM computes exactly here (uint8 0..127, or
        0..255 where FBGEMM's kernels do not saturate);
        otherwise one shared :func:`~quantfx_fbgemm.int_ops.dynamic_quantize` per
        quantized tensor + the oneDNN kernel. A following ReLU goes into the kernel either way.
        """
        modules = self.modules
        reduce_range = kernels.needs_reduce_range(self.isa)
        fbgemm = kernels.fbgemm_dynamic_available()
        # FBGEMM has no AVX-VNNI kernels: on such a CPU it saturates 8-bit activations where oneDNN does not
        fbgemm_8bit_ok = not kernels.needs_reduce_range(route="fbgemm")
        shared: dict[Node, Node] = {}  # quantize node -> its dynamic_quantize replacement
        for node in list(self.graph.nodes):
            if node.op != "call_module" or type(modules.get(node.target)) is not nnqr.Linear:
                continue
            mod = modules[node.target]
            dq = node.args[0] if node.args else None
            if not (isinstance(dq, Node) and dq.target == _q.dequantize_per_tensor_tensor.default):
                continue
            qt = dq.args[0]
            if not (isinstance(qt, Node) and qt.target == _q.quantize_per_tensor_tensor.default):
                continue
            reason = self._weight_reason(mod)
            if reason is not None:
                self.reasons[node.name] = reason
                continue
            if len(node.args) != 1 or node.kwargs:
                self.reasons[node.name] = "dynamic linear with extra arguments"
                continue
            x = qt.args[0]
            chooser = self._dynamic_chooser(qt)
            if chooser is not None and qt.args[5] == torch.uint8:
                qmin, qmax = (0, 127) if reduce_range else (int(qt.args[3]), int(qt.args[4]))
                eps = float(chooser.args[3])
            else:  # qparams not from choose_qparams_per_tensor: use the backend's own choice
                (qmin, qmax), eps = kernels.activation_quant_range(reduce_range), int_ops._F32_EPS
            use_fbgemm = fbgemm and qmin == 0 and (qmax == 127 or (qmax == 255 and fbgemm_8bit_ok))
            if not use_fbgemm and qt not in shared:
                with self.graph.inserting_before(qt):
                    shared[qt] = self.graph.call_function(int_ops.dynamic_quantize, (x, qmin, qmax, eps))
            relu = self._sole_relu_user(node, modules)
            packed = kernels.PackedLinear(
                mod.weight_int, mod.weight_scale, mod.bias, output_dtype=torch.float32,
                post_op="relu" if relu is not None else None,
            )
            name = self._add_module(node.target, int_ops.DynamicLinear(packed, qmax == 127))
            with self.graph.inserting_before(node):
                new = self.graph.call_module(name, (x if use_fbgemm else shared[qt],))
            if relu is not None:
                relu.replace_all_uses_with(new)
                self.graph.erase_node(relu)
            node.replace_all_uses_with(new)
            _erase_dead(self.graph, [node, dq])
            kernel = "fbgemm quantized.linear_relu_dynamic" if relu is not None else "fbgemm quantized.linear_dynamic"
            if not use_fbgemm:
                kernel = f"onednn.qlinear_pointwise{', relu fused' if relu is not None else ''}"
            self.report.int8.append((node.name, f"DynamicLinear ({kernel})"))
        # the reference's choose_qparams / quantize chains, now unused
        for qt in [n for n in self.graph.nodes if n.target == _q.quantize_per_tensor_tensor.default and not n.users]:
            chain = [qt, *[a for a in qt.args[1:3] if isinstance(a, Node)]]
            chain += [a.args[0] for a in qt.args[1:3] if isinstance(a, Node) and a.target is operator.getitem]
            _erase_dead(self.graph, chain)

    def merge_sibling_dynamic_linears(self) -> None:
        """Dynamic linears reading one tensor (q / k / v) -> one GEMM on the concatenated weights.

        One kernel call instead of several saves its per-call overhead and, on the
        FBGEMM route, quantizing the shared input more than once (measured, d=256, seq 128,
        1 thread: oneDNN 152 vs 202 us; FBGEMM 178 vs 210 us at batch 1, 1297 vs 1360 us at
        batch 8). Each output is a ``torch.narrow`` view of the merged result, bit-identical
        to the separate GEMMs (int32 accumulation, per-channel epilogue; the FBGEMM route
        packs the merged weight per channel). Skipped when an output could be hurt by being
        a strided view (``view``, in-place methods, graph output).
        """
        modules = self.modules
        sources = {n.args[0] for n in self.graph.nodes
                   if n.op == "call_module" and isinstance(modules.get(n.target), int_ops.DynamicLinear)
                   and len(n.args) == 1 and isinstance(n.args[0], Node)}
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        for src in sorted(sources, key=lambda n: order[n]):
            group = [u for u in src.users if u.op == "call_module" and isinstance(modules.get(u.target), int_ops.DynamicLinear)
                     and u.args == (src,) and not u.kwargs]
            if len(group) < 2:
                continue
            lins = [modules[u.target] for u in group]
            first = lins[0]
            if any(m.reduce_range != first.reduce_range or m.linear.post_op != first.linear.post_op
                   or m.linear.residual is not None or m.linear.output_dtype != torch.float32
                   or m.linear.in_features != first.linear.in_features for m in lins):
                continue
            if not all(self._strided_view_ok(u) for u in group):
                continue
            group.sort(key=lambda n: order[n])
            lins = [modules[u.target] for u in group]
            biases = [m.linear.bias if m.linear.bias is not None else torch.zeros(m.linear.out_features) for m in lins]
            merged = kernels.PackedLinear(
                torch.cat([m.linear.weight for m in lins]), torch.cat([m.linear.weight_scale for m in lins]),
                None if all(m.linear.bias is None for m in lins) else torch.cat(biases),
                output_dtype=torch.float32, post_op=first.linear.post_op,
            )
            name = self._add_module(_merged_name([str(u.target) for u in group]),
                                    int_ops.DynamicLinear(merged, first.reduce_range))
            with self.graph.inserting_before(group[0]):
                out = self.graph.call_module(name, (src,))
            offset = 0
            for u, m in zip(group, lins):
                with self.graph.inserting_after(out):
                    part = self.graph.call_function(torch.narrow, (out, -1, offset, m.linear.out_features))
                offset += m.linear.out_features
                u.replace_all_uses_with(part)
                self.graph.erase_node(u)

    @staticmethod
    def _strided_view_ok(node: Node) -> bool:
        """Whether every reader of ``node`` accepts a non-contiguous view (a narrow of a wider output)."""
        for user in node.users:
            if user.op == "output":
                return False
            if user.op == "call_method" and (user.target in ("view", "view_as", "as_strided", "data_ptr",
                                                              "set_", "resize_") or user.target.endswith("_")):
                return False
            if user.op == "call_function" and (user.target is torch.Tensor.view or user.kwargs.get("out") is not None):
                return False
        return True

    @staticmethod
    def _dynamic_chooser(qt: Node) -> Node | None:
        """The choose_qparams_per_tensor node whose (scale, zp) feed ``qt``, if that is the pattern."""
        scale, zp = qt.args[1], qt.args[2]
        if not all(isinstance(a, Node) and a.target is operator.getitem for a in (scale, zp)):
            return None
        src = scale.args[0]
        if src is not zp.args[0] or (scale.args[1], zp.args[1]) != (0, 1):
            return None
        if getattr(src, "target", None) != _q.choose_qparams_per_tensor.default or src.args[0] is not qt.args[0]:
            return None
        return src

    @staticmethod
    def _sole_relu_user(node: Node, modules: dict[str, nn.Module]) -> Node | None:
        """The relu that is the only reader of ``node`` (fused into the kernel's epilogue), else None."""
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        if user.args[:1] != (node,) or len(user.args) != 1:
            return None
        if user.op == "call_module" and type(modules.get(user.target)) is nn.ReLU:
            return user
        if user.op == "call_function" and user.target in (F.relu, torch.relu) and not user.kwargs.get("inplace"):
            return user
        if user.op == "call_method" and user.target == "relu" and not user.kwargs:
            return user
        return None

    # -------------------------------------------------------------- 2. conv / linear (+ residual add)

    @staticmethod
    def _weight_reason(mod: nn.Module) -> str | None:
        if mod.weight_dtype != torch.int8:
            return f"weight dtype {mod.weight_dtype}: the oneDNN kernels take int8 weights"
        if bool((mod.weight_zero_point != 0).any()):
            return ("asymmetric weight (zero point != 0): the oneDNN int8 kernels need symmetric weights; "
                    "use a per_channel_symmetric / per_tensor_symmetric weight observer")
        if mod.weight_axis not in (None, 0):
            return f"per-channel weight along axis {mod.weight_axis}: the kernels scale output channels (axis 0)"
        return None

    def _weighted_reason(self, qop: QuantizedOp, mod: nn.Module) -> str | None:
        reason = self._weight_reason(mod)
        if reason is not None:
            return reason
        if len(qop.dq_inputs) != 1 or qop.node.kwargs:
            return "expects exactly one quantized tensor input"
        in_qp = qop.input_qparams[0]
        if in_qp is None or in_qp.dtype != torch.uint8:
            return f"input is not per-tensor uint8 ({in_qp.dtype if in_qp else 'non-constant qparams'})"
        if qop.output_qparams is not None and qop.output_qparams.dtype != torch.uint8:
            return f"output dtype {qop.output_qparams.dtype}: the kernels write uint8 or float"
        if isinstance(mod, _CONV_REFS) and mod.padding_mode != "zeros":
            return f"padding_mode={mod.padding_mode!r}: the int8 conv pads with zeros only"
        return None

    @staticmethod
    def _clamp_interval(activations: list[tuple[str, Any]], out_qp: QParams | None) -> tuple[float, float] | None:
        """The relu / relu6 / hardtanh tail and the narrowed output range as one float interval (None: cannot)."""
        lo, hi = -math.inf, math.inf
        for kind, args in activations:
            if kind == "relu":
                lo = max(lo, 0.0)
            elif kind == "relu6":
                lo, hi = max(lo, 0.0), min(hi, 6.0)
            elif kind == "hardtanh" and args is not None:
                lo, hi = max(lo, float(args[0])), min(hi, float(args[1]))
            else:
                return None
        if out_qp is not None and not _full_range(out_qp):
            lo = max(lo, (out_qp.quant_min - out_qp.zero_point) * out_qp.scale)
            hi = min(hi, (out_qp.quant_max - out_qp.zero_point) * out_qp.scale)
        return None if lo > hi else (lo, hi)

    @staticmethod
    def _epilogue(mod: nn.Module, interval: tuple[float, float], out_qp: QParams | None
                  ) -> tuple[kernels.PostOp, tuple[Any, Any] | None]:
        """(post-op the kernel fuses, clamp left to do on its output or None).

        oneDNN fuses hardtanh into 2-D convs and linears, only relu into
        conv1d and nothing into conv3d; what it cannot fuse becomes a clamp
        of the output (integer bounds for a quantized output: exact, since
        quantization is monotone).
        """
        lo, hi = interval
        if lo == -math.inf and hi == math.inf:
            return kernels.PostOp(), None
        nsp = len(mod.kernel_size) if isinstance(mod, _CONV_REFS) else 2
        if nsp == 2:
            if lo == 0.0 and hi == math.inf:
                return kernels.PostOp("relu"), None
            f32 = torch.finfo(torch.float32)
            return kernels.PostOp("hardtanh", (max(lo, float(f32.min)), min(hi, float(f32.max)))), None
        post = kernels.PostOp("relu") if (nsp == 1 and lo == 0.0) else kernels.PostOp()
        if post.name == "relu" and hi == math.inf:
            return post, None
        if out_qp is None:
            return post, (None if lo == -math.inf else lo, None if hi == math.inf else hi)
        qlo = out_qp.quant_min if lo == -math.inf else max(out_qp.quant_min, round(lo / out_qp.scale) + out_qp.zero_point)
        qhi = out_qp.quant_max if hi == math.inf else min(out_qp.quant_max, round(hi / out_qp.scale) + out_qp.zero_point)
        return post, (int(qlo), int(qhi))

    def _make_kernel(self, mod: nn.Module, in_qp: QParams, out_qp: QParams | None, post_op: kernels.PostOp,
                     residual: QParams | None = None) -> nn.Module:
        out_kw: dict[str, Any] = (
            {"output_scale": out_qp.scale, "output_zero_point": out_qp.zero_point, "output_dtype": torch.uint8}
            if out_qp is not None else {"output_dtype": torch.float32}
        )
        res = (residual.scale, residual.zero_point) if residual is not None else None
        if isinstance(mod, nnqr.Linear):
            return kernels.PackedLinear(
                mod.weight_int, mod.weight_scale, mod.bias, input_scale=in_qp.scale,
                input_zero_point=in_qp.zero_point, post_op=post_op, residual=res, **out_kw,
            )
        return kernels.PackedConv(
            mod.weight_int, mod.weight_scale, mod.bias, stride=mod.stride, padding=mod.padding,
            dilation=mod.dilation, groups=mod.groups, input_scale=in_qp.scale, input_zero_point=in_qp.zero_point,
            post_op=post_op, residual=res, **out_kw,
        )

    @staticmethod
    def _op_kind(mod: nn.Module) -> str:
        if isinstance(mod, _CONV_REFS) and mod.groups > 1 and mod.groups == mod.in_channels:
            return "depthwise"
        return "gemm"

    def _residual_partner(self, qop: QuantizedOp, by_output_q: dict[Node, QuantizedOp],
                          modules: dict[str, nn.Module]) -> tuple[QuantizedOp, int] | None:
        """For an add [-> relu] -> q of two quantized tensors: (the conv / linear producing one of them, the other's index)."""
        node = qop.node
        if node.target not in _ADD_TARGETS or node.kwargs or len(qop.dq_inputs) != 2 or len(node.args) != 2:
            return None
        if qop.output_q is None or qop.output_qparams is None or qop.output_qparams.dtype != torch.uint8:
            return None
        if [k for k, _ in qop.activations] not in ([], ["relu"]):
            return None
        if any(p is None or p.dtype != torch.uint8 for p in qop.input_qparams):
            return None
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        candidates = []
        for i, producer in enumerate(qop.int_inputs):
            w = by_output_q.get(producer)
            if w is None or w.activations or len(producer.users) != 1 or len(qop.dq_inputs[i].users) != 1:
                continue
            mod = modules[w.node.target]
            if isinstance(mod, _CONV_REFS) and not isinstance(mod, nnqr.Conv2d):
                continue
            other = qop.dq_inputs[1 - i]
            shape_w, shape_o = _meta_shape(w.node), _meta_shape(other)
            if shape_w is None or shape_w != shape_o:
                continue
            candidates.append((order[w.node], w, 1 - i))
        if not candidates:
            return None
        _, w, other_index = max(candidates, key=lambda c: c[0])
        return w, other_index

    def weighted_ops(self, fuse_residual: bool) -> None:
        modules = self.modules
        qops = find_quantized_ops(
            self.gm, select=lambda n, m: n.op == "call_module" and isinstance(m.get(n.target), _WEIGHTED_REFS)
        )
        ok: list[QuantizedOp] = []
        for qop in qops:
            reason = self._weighted_reason(qop, modules[qop.node.target])
            if reason is None:
                ok.append(qop)
            else:
                self.reasons[qop.node.name] = reason
        fused: dict[Node, tuple[QuantizedOp, int]] = {}
        if fuse_residual:
            by_output_q = {q.output_q: q for q in ok if q.output_q is not None}
            for add in find_quantized_ops(self.gm, select=lambda n, m: n.op in ("call_function", "call_method")):
                hit = self._residual_partner(add, by_output_q, modules)
                if hit is not None and hit[0].node not in fused:
                    fused[hit[0].node] = (add, hit[1])
                    by_output_q.pop(hit[0].output_q, None)
        for qop in ok:
            mod = modules[qop.node.target]
            in_qp = qop.input_qparams[0]
            assert in_qp is not None
            self._check_saturation(qop.node.name, in_qp, self._op_kind(mod))
            if qop.node in fused:
                self._lower_fused(qop, mod, in_qp, *fused[qop.node])
                continue
            interval = self._clamp_interval(qop.activations, qop.output_qparams)
            if interval is None:  # cannot fold the tail: keep it as float nodes after a float-out kernel
                qop = QuantizedOp(qop.node, qop.dq_inputs, qop.int_inputs, qop.input_qparams)
                interval = (-math.inf, math.inf)
            post_op, clamp = self._epilogue(mod, interval, qop.output_qparams)
            kernel = self._make_kernel(mod, in_qp, qop.output_qparams, post_op)
            name = self._add_module(qop.node.target, kernel)
            x = qop.dq_inputs[0].args[0]  # current producer (an earlier replacement may have swapped it)

            def make(g: torch.fx.Graph, n: str = name, x: Node = x, clamp: Any = clamp) -> Node:
                out = g.call_module(n, (x,))
                return out if clamp is None else g.call_method("clamp_", (out, *clamp))

            replace_quantized_op(self.gm, qop, make)
            self.report.int8.append((qop.node.name, f"{type(kernel).__name__} (post_op={post_op.name})"))

    def _lower_fused(self, w: QuantizedOp, mod: nn.Module, in_qp: QParams, add: QuantizedOp, other: int) -> None:
        out_qp = add.output_qparams
        assert out_qp is not None and add.output_q is not None
        res_qp = add.input_qparams[other]
        assert res_qp is not None
        relu = bool(add.activations)
        kernel = self._make_kernel(mod, in_qp, out_qp, kernels.PostOp.parse("relu" if relu else None), residual=res_qp)
        name = self._add_module(w.node.target, kernel)
        with self.graph.inserting_before(add.output_q):
            new = self.graph.call_module(name, (w.dq_inputs[0].args[0], add.dq_inputs[other].args[0]))
            result = new
            if not _full_range(out_qp):
                result = self.graph.call_method("clamp_", (new, out_qp.quant_min, out_qp.quant_max))
        add.output_q.replace_all_uses_with(result)
        chain = [add.output_q, *reversed(add.tail), add.node, *add.dq_inputs, w.output_q, w.node, *w.dq_inputs]
        _erase_dead(self.graph, [n for n in chain if n is not None])
        self.report.int8.append((w.node.name, f"{type(kernel).__name__} + {add.node.name} (residual{' + relu' if relu else ''})"))

    # -------------------------------------------------------------- 3. everything else in a quantized region

    def _single_input(self, node: Node) -> tuple[Node, QParams, Node | None, QParams | None] | None:
        """(dq input, its qparams, output quantize or None, its qparams) for an op of exactly one quantized tensor."""
        dqs: list[Node] = []

        def visit(a: Node) -> Node:
            if _is_dq(a) and a not in dqs:
                dqs.append(a)
            return a

        map_arg((node.args, node.kwargs), visit)
        if len(dqs) != 1:
            return None
        in_qp = QParams.from_node(dqs[0])
        if in_qp is None:
            return None
        out_q = next(iter(node.users)) if len(node.users) == 1 else None
        if out_q is not None and not _is_q(out_q):
            out_q = None
        return dqs[0], in_qp, out_q, QParams.from_node(out_q) if out_q is not None else None

    def _kind(self, node: Node, modules: dict[str, nn.Module]) -> str | None:
        if node.op == "call_module":
            m = modules.get(node.target)
            if isinstance(m, _MOVE_MODULES):
                if isinstance(m, nn.Upsample) and m.mode != "nearest":
                    return None
                return "move"
            if isinstance(m, _ELEMENTWISE_MODULES):
                return "lut"
            if type(m) in _AVG_MODULES:
                return "avg"
            if type(m) in _MAX_MODULES:
                return "max"
            return None
        if node.op == "call_function":
            t = node.target
            if t in _AVG_FUNCTIONS:
                return "avg"
            if t in _MAX_FUNCTIONS:
                return "max"
            if t in _MOVE_FUNCTIONS:
                if t is F.interpolate and node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest") != "nearest":
                    return None
                return "move"
            if t in _ELEMENTWISE_FUNCTIONS:
                return "lut"
            return None
        if node.op == "call_method":
            if node.target == "mean":
                return "avg"
            if node.target in _MOVE_METHODS:
                return "move"
            if node.target in _ELEMENTWISE_METHODS:
                return "lut"
        return None

    def _lut(self, node: Node, dq: Node, in_qp: QParams, out_qp: QParams, modules: dict[str, nn.Module]) -> torch.Tensor | None:
        values = torch.arange(256, dtype=torch.int32).to(in_qp.dtype)
        x = (values.float() - in_qp.zero_point) * in_qp.scale
        other_nodes = []

        def sub(a: Node) -> Any:
            if a is dq:
                return x.clone()
            other_nodes.append(a)
            return a

        args = map_arg(node.args, sub)
        kwargs = map_arg(node.kwargs, sub)
        if other_nodes:
            return None
        try:
            with torch.no_grad():
                if node.op == "call_module":
                    y = modules[node.target](*args, **kwargs)
                elif node.op == "call_function":
                    y = node.target(*args, **kwargs)
                else:
                    y = getattr(args[0], node.target)(*args[1:], **kwargs)
        except Exception:  # noqa: BLE001 - not an elementwise op of this tensor after all: stays float
            return None
        if not isinstance(y, torch.Tensor) or y.shape != x.shape or not y.is_floating_point():
            return None
        return torch.ops.quantfx.quantize_per_tensor(y.float(), *_qp_args(out_qp))

    def other_ops(self) -> None:
        modules = self.modules
        for node in list(self.graph.nodes):
            if node.op not in ("call_module", "call_function", "call_method") or _is_q(node) or _is_dq(node):
                continue
            if getattr(node, "_erased", False):
                continue
            if node.target in _ADD_TARGETS | _MUL_TARGETS or node.target is torch.cat:
                if self._binary_or_cat(node):
                    continue
            kind = self._kind(node, modules)
            if kind is None:
                continue
            found = self._single_input(node)
            if found is None:
                continue
            dq, in_qp, out_q, out_qp = found
            if out_q is None or out_qp is None or in_qp.dtype != torch.uint8 or out_qp.dtype != torch.uint8:
                continue  # region exit: the op runs on the dequantized value as in the reference
            int_in = dq.args[0]
            if kind == "lut":
                table = self._lut(node, dq, in_qp, out_qp, modules)
                if table is None:
                    continue
                name = self._add_module(node.name, int_ops.Lookup(table, _what(node, modules)))
                with self.graph.inserting_before(out_q):
                    new = self.graph.call_module(name, (int_in,))
                self._finish(node, dq, out_q, new, "Lookup (256-entry table)")
            elif kind == "move":
                self._move(node, dq, in_qp, out_q, out_qp, int_in, modules)
            elif kind == "avg":
                self._avg(node, dq, in_qp, out_q, out_qp, int_in, modules)
            elif kind == "max":
                self._max(node, dq, in_qp, out_q, out_qp, int_in, modules)

    def _finish(self, node: Node, dq: Node, out_q: Node, new: Node, what: str) -> None:
        out_q.replace_all_uses_with(new)
        _erase_dead(self.graph, [out_q, node, dq])
        self.report.int8.append((node.name, what))

    def _move(self, node: Node, dq: Node, in_qp: QParams, out_q: Node, out_qp: QParams, int_in: Node,
              modules: dict[str, nn.Module]) -> None:
        # constant padding with a non-zero float value needs that value in the integer domain
        pad_value: float | None = None
        if node.op == "call_module" and isinstance(modules[node.target], (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
            m = modules[node.target]
            with self.graph.inserting_before(node):
                new = self.graph.call_function(F.pad, (int_in, tuple(m.padding)), {"mode": "constant", "value": 0})
            pad_value = float(m.value)
        elif node.op == "call_module" and isinstance(modules[node.target], (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)):
            m = modules[node.target]
            with self.graph.inserting_before(node):
                new = self.graph.call_function(F.pad, (int_in, tuple(m.padding)), {"mode": "constant", "value": 0})
            pad_value = 0.0
        elif node.target is F.pad:
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            if mode == "constant":
                pad_value = float(node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0) or 0.0)
            new = node
        else:
            new = node
        if pad_value is not None:
            qv = int(torch.ops.quantfx.quantize_per_tensor(torch.tensor([pad_value]), *_qp_args(in_qp)).item())
            if new is node:
                args = list(node.args[:3]) + [qv] if len(node.args) > 3 else list(node.args)
                kwargs = dict(node.kwargs)
                if len(node.args) <= 3:
                    kwargs["value"] = qv
                node.args, node.kwargs = tuple(args), kwargs
            else:
                new.update_kwarg("value", qv)
        if new is node:
            node.replace_input_with(dq, int_in)
            if node.op == "call_method" and node.target == "view":
                node.target = "reshape"  # the int tensor may be channels-last: reshape copies only if it must
        result = new
        if not (in_qp.scale == out_qp.scale and in_qp.zero_point == out_qp.zero_point
                and out_qp.quant_min <= in_qp.quant_min and out_qp.quant_max >= in_qp.quant_max):
            with self.graph.inserting_after(new):
                result = self.graph.call_function(
                    int_ops.requant, (new, in_qp.scale, in_qp.zero_point, *_qp_args(out_qp))
                )
        out_q.replace_all_uses_with(result)
        if new is not node:
            _erase_dead(self.graph, [out_q, node, dq])
        else:
            _erase_dead(self.graph, [out_q, dq])
        self.report.int8.append((node.name, "integer passthrough"))

    def _avg(self, node: Node, dq: Node, in_qp: QParams, out_q: Node, out_qp: QParams, int_in: Node,
             modules: dict[str, nn.Module]) -> None:
        if node.op == "call_module":
            m = modules[node.target]
            op = _AVG_MODULES[type(m)]
            if op.startswith("adaptive"):
                args: tuple[Any, ...] = (m.output_size,)
                kwargs: dict[str, Any] = {}
            else:
                args = (m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad)
                kwargs = {} if op == "avg_pool1d" else {"divisor_override": m.divisor_override}
        else:
            op = _AVG_FUNCTIONS[node.target] if node.op == "call_function" else "mean"
            rest = node.args[1:]
            if any(isinstance(a, Node) for a in rest) or any(isinstance(v, Node) for v in node.kwargs.values()):
                return
            args, kwargs = tuple(rest), dict(node.kwargs)
            if "dtype" in kwargs or node.args[0] is not dq:
                return
        with self.graph.inserting_before(out_q):
            new = self.graph.call_function(
                int_ops.avg_int, (int_in, op, args, kwargs, in_qp.scale, in_qp.zero_point, *_qp_args(out_qp))
            )
        self._finish(node, dq, out_q, new, f"{op} on integers")

    def _max(self, node: Node, dq: Node, in_qp: QParams, out_q: Node, out_qp: QParams, int_in: Node,
             modules: dict[str, nn.Module]) -> None:
        if node.op == "call_module":
            m = modules[node.target]
            if m.return_indices:
                return
            op = _MAX_MODULES[type(m)]
            args: tuple[Any, ...] = (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
            kwargs: dict[str, Any] = {}
        else:
            op = _MAX_FUNCTIONS[node.target]
            args, kwargs = tuple(node.args[1:]), dict(node.kwargs)
            if node.args[0] is not dq or kwargs.get("return_indices") or (len(args) > 5 and args[5]):
                return
            if any(isinstance(a, Node) for a in (*args, *kwargs.values())):
                return
        with self.graph.inserting_before(out_q):
            new = self.graph.call_function(int_ops.max_int, (int_in, op, args, kwargs))
            result = new
            if (in_qp.scale, in_qp.zero_point) != (out_qp.scale, out_qp.zero_point) or not (
                out_qp.quant_min <= in_qp.quant_min and out_qp.quant_max >= in_qp.quant_max
            ):
                result = self.graph.call_function(int_ops.requant, (new, in_qp.scale, in_qp.zero_point, *_qp_args(out_qp)))
        self._finish(node, dq, out_q, result, f"{op} on integers")

    def _binary_or_cat(self, node: Node) -> bool:
        qops = find_quantized_ops(self.gm, select=lambda n, m: n is node)
        if not qops:
            return False
        qop = qops[0]
        if qop.output_q is None or qop.output_qparams is None or qop.output_qparams.dtype != torch.uint8:
            return False
        if any(p is None or p.dtype != torch.uint8 for p in qop.input_qparams):
            return False
        out_qp = qop.output_qparams
        if node.target is torch.cat:
            tensors = node.args[0] if node.args else node.kwargs.get("tensors")
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if not isinstance(tensors, (list, tuple)) or not all(_is_dq(t) for t in tensors) or isinstance(dim, Node):
                return False
            ints = [t.args[0] for t in tensors]
            qps = [(QParams.from_node(t).scale, QParams.from_node(t).zero_point) for t in tensors]  # type: ignore[union-attr]
            if qop.activations:  # cat -> relu -> q: the relu becomes its own (lookup) op later
                return False
            replace_quantized_op(
                self.gm, qop, lambda g: g.call_function(int_ops.cat_int, (ints, dim, qps, *_qp_args(out_qp)))
            )
            self.report.int8.append((node.name, "cat_int"))
            return True
        if len(qop.dq_inputs) != 2 or len(node.args) != 2 or node.kwargs:
            return False
        if [k for k, _ in qop.activations] not in ([], ["relu"]):
            return False
        a, b = node.args
        if not (_is_dq(a) and _is_dq(b)):
            return False
        qa, qb = QParams.from_node(a), QParams.from_node(b)
        fn = int_ops.add_int if node.target in _ADD_TARGETS else int_ops.mul_int
        relu = bool(qop.activations)
        args = (a.args[0], qa.scale, qa.zero_point, b.args[0], qb.scale, qb.zero_point, *_qp_args(out_qp), relu)  # type: ignore[union-attr]
        replace_quantized_op(self.gm, qop, lambda g: g.call_function(fn, args))
        self.report.int8.append((node.name, fn.__name__))
        return True

    # -------------------------------------------------------------- 4./5. report and region boundaries

    def collect_float_ops(self) -> None:
        modules = self.modules
        seen = set()
        for name, what in float_ops_report(self.gm):
            seen.add(name)
            reason = self.reasons.get(name, f"no int8 kernel for {what} on this backend")
            self.report.float_ops.append((name, what, reason))
        for node in self.graph.nodes:  # weighted ops rejected above whose chain float_ops_report does not see
            if node.name in self.reasons and node.name not in seen and node.op != "output":
                self.report.float_ops.append((node.name, _what(node, modules), self.reasons[node.name]))

    def boundaries(self) -> None:
        for node in list(self.graph.nodes):
            if _is_q(node):
                with self.graph.inserting_before(node):
                    new = self.graph.call_function(int_ops.quantize_in, node.args[:6])
                node.replace_all_uses_with(new)
                self.graph.erase_node(node)
            elif _is_dq(node):
                with self.graph.inserting_before(node):
                    new = self.graph.call_function(int_ops.dequantize_out, node.args[:3])
                node.replace_all_uses_with(new)
                self.graph.erase_node(node)

    def donate_residuals(self) -> None:
        """Let a fused residual add accumulate into its input when nothing reads that tensor afterwards."""
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        modules = self.modules
        safe_readers = (kernels.PackedConv, kernels.PackedLinear, int_ops.Lookup)
        for node in self.graph.nodes:
            if node.op != "call_module" or len(node.args) != 2:
                continue
            if not isinstance(modules.get(node.target), (kernels.PackedConv, kernels.PackedLinear)):
                continue
            res = node.args[1]
            if not isinstance(res, Node) or res.op in ("placeholder", "get_attr"):
                continue
            ok = True
            for user in res.users:
                if user is node:
                    continue
                reads_only = (
                    (user.op == "call_module" and isinstance(modules.get(user.target), safe_readers)
                     and user.args[0] is res and res not in user.args[1:])
                    or user.target in (int_ops.dequantize_out, int_ops.add_int, int_ops.mul_int, int_ops.avg_int)
                )
                if order[user] > order[node] or not reads_only:
                    ok = False
                    break
            if ok:
                node.kwargs = {**node.kwargs, "residual_donated": True}


def _merged_name(targets: list[str]) -> str:
    """blocks_0_q_int8, blocks_0_k_int8, blocks_0_v_int8 -> blocks_0_q_k_v."""
    parts = [t.removesuffix("_int8").split("_") for t in targets]
    n = 0
    while all(len(p) > n + 1 and p[n] == parts[0][n] for p in parts):
        n += 1
    return "_".join(parts[0][:n] + ["_".join("_".join(p[n:]) for p in parts)])[:100]


def _static_adds(gm: GraphModule) -> list[Node]:
    """Adds that read two dequantized tensors (candidates for residual fusion)."""
    return [n for n in gm.graph.nodes if n.target in _ADD_TARGETS and len(n.args) == 2 and all(_is_dq(a) for a in n.args)]


class _ShapeRecorder(torch.fx.Interpreter):
    """Runs the graph once and keeps only each tensor result's shape (``node.meta['quantfx_shape']``)."""

    def run_node(self, n: Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["quantfx_shape"] = tuple(result.shape)
        return result


def _propagate_shapes(gm: GraphModule, example_inputs: tuple[Any, ...]) -> None:
    """Record every node's output shape (used to decide residual-add fusion).

    One real run on the example inputs: measured 2-3x faster than fake-tensor
    propagation (ResNet-18 0.06 vs 0.18-0.26 s, EfficientNet-Lite0 vs 0.23-0.42 s),
    which deep-copies the model to fake tensors and pays fake dispatch per op.
    Fake tensors remain the fallback.
    """
    try:
        with torch.no_grad():
            _ShapeRecorder(gm).run(*example_inputs)
        return
    except Exception:  # noqa: BLE001 - e.g. inputs that only fit a traced batch size: try fake tensors
        pass
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm, fake_mode=FakeTensorMode(allow_non_fake_inputs=True)).propagate(*example_inputs)
    except Exception:  # noqa: BLE001 - shapes only enable fusions; without them we just fuse less
        pass


def lower_to_onednn(
    reference: GraphModule,
    example_inputs: tuple[Any, ...] = (),
    *,
    backend_name: str = "x86",
    fuse_residual: bool = True,
    lowering_rules: Sequence[Callable[[GraphModule], GraphModule | None]] = (),
    warn: bool = True,
) -> GraphModule:
    """Lower a reference quantized model (``convert_to_reference_fx``) to oneDNN int8 kernels; see the module docstring.

    ``reference`` is not modified. ``example_inputs`` give shapes (used to
    decide residual-add fusion). ``lowering_rules`` are callables
    ``rule(gm) -> gm | None`` run on the copied reference graph before the
    built-in passes, so a plugin can claim a pattern with its own kernel
    (e.g. with ``quantfx.lowering.replace_quantized_op``). The result carries
    ``quantfx_lowering_report`` (:class:`LoweringReport`) and
    ``quantfx_float_ops`` (node names left in float).
    """
    if not isinstance(reference, GraphModule):
        raise LoweringError(
            f"{backend_name}: lowering needs the GraphModule returned by convert_to_reference_fx, "
            f"got {type(reference).__name__}"
        )
    gm = copy.deepcopy(reference)
    for rule in lowering_rules:
        if not callable(rule):
            raise LoweringError(
                f"{backend_name}: lowering rule {rule!r} is not callable; rules for this backend are "
                "functions GraphModule -> GraphModule | None"
            )
        out = rule(gm)
        if out is not None:
            gm = out
    adds = _static_adds(gm) if fuse_residual else []
    if example_inputs and any(_meta_shape(a) is None for add in adds for a in add.args):
        # shapes only decide residual-add fusion; prepare's shape propagation usually recorded them already
        _propagate_shapes(gm, example_inputs)
    report = LoweringReport()
    lw = _Lowering(gm, report)
    lw.dynamic_linear()
    lw.merge_sibling_dynamic_linears()
    lw.weighted_ops(fuse_residual)
    lw.other_ops()
    lw.collect_float_ops()
    lw.boundaries()
    lw.donate_residuals()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    gm.quantfx_lowering_report = report
    gm.quantfx_float_ops = [name for name, _, _ in report.float_ops]
    gm.quantfx_backend = backend_name
    if warn and report.float_ops:
        listed = "; ".join(f"{n} ({what}: {why})" for n, what, why in report.float_ops)
        warnings.warn(
            f"{backend_name}: {len(report.float_ops)} op(s) of the quantized region run in float "
            f"(dequantize -> op -> quantize): {listed}. See lowered.quantfx_lowering_report.",
            FloatFallbackWarning,
            stacklevel=3,
        )
    if warn and report.saturation:
        warnings.warn(
            f"{backend_name}: {', '.join(report.saturation)} read full-range 8-bit activations, but this CPU's "
            f"int8 kernels ({lw.isa}, no VNNI) saturate u8 x s8 products at int16: expect lost accuracy. "
            f"Quantize with quantfx.get_default_qconfig_mapping('{backend_name}') (7-bit activations here) "
            "or reduce_range=True in your activation observer.",
            SaturationWarning,
            stacklevel=3,
        )
    return gm
