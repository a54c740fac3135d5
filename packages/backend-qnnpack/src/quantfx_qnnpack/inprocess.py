"""In-process lowering: the reference IR onto torch's ``quantized::*`` ops with the qnnpack engine.

torch's qnnpack kernels take the quantized tensor dtypes that torch 2.13
deprecates (``torch.quint8``), so this route is kept thin: activations become
``quint8`` tensors where the reference IR quantizes them (int8 activations are
shifted by 128, which is exact: ``q_u8 = q_i8 + 128``), lowered ops pass those
tensors between them, and ``dequantize`` is called where the reference IR
leaves the integer domain. Weights are stored as plain int8 tensors plus
scales and packed for qnnpack on first use, so a saved model never holds a
quantized dtype.

What is not lowered keeps its reference form (dequantize -> float op ->
quantize) and still runs; ``QnnpackModule.float_ops`` lists it.
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Node
from torch.fx.passes.shape_prop import ShapeProp

import quantfx.nn.reference as nnqr
from quantfx.errors import LoweringError
from quantfx.lowering import QParams, QuantizedOp, find_quantized_ops, replace_quantized_op
from quantfx.ops import is_dequantize_node

__all__ = [
    "qnnpack_engine",
    "QnnpackModule",
    "QuantizedConv",
    "QuantizedLinear",
    "QuantizedDynamicLinear",
    "lower_inprocess",
]

_q = torch.ops.quantfx


@contextlib.contextmanager
def qnnpack_engine() -> Iterator[None]:
    """Run the block with ``torch.backends.quantized.engine = 'qnnpack'``, restoring the previous engine."""
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        raise LoweringError(
            "this torch build has no qnnpack quantized engine "
            f"(supported: {torch.backends.quantized.supported_engines}); use the ExecuTorch route: "
            "lower(..., target='executorch')"
        )
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


# ----------------------------------------------------------------------------- activations


def _u8_qparams(qp: QParams) -> tuple[float, int]:
    """(scale, zero point) of the same activation stored as quint8 (int8 shifts by +128, exactly)."""
    if qp.dtype == torch.int8:
        return qp.scale, qp.zero_point + 128
    return qp.scale, qp.zero_point


def _full_range(qp: QParams) -> bool:
    lo, hi = (-128, 127) if qp.dtype == torch.int8 else (0, 255)
    return qp.dtype in (torch.int8, torch.uint8) and qp.quant_min == lo and qp.quant_max == hi


def to_qtensor(x: Tensor, scale: float, zero_point: int, dtype: torch.dtype) -> Tensor:
    """A plain uint8 / int8 tensor of the reference IR as a quint8 tensor (same real values)."""
    if dtype == torch.int8:
        x = (x.to(torch.int16) + 128).to(torch.uint8)
        zero_point += 128
    return torch._make_per_tensor_quantized_tensor(x, scale, zero_point)


def from_qtensor(q: Tensor, dtype: torch.dtype) -> Tensor:
    """Back to the reference IR's plain integers (``int_repr``, shifted back for int8)."""
    r = q.int_repr()
    if dtype == torch.int8:
        return (r.to(torch.int16) - 128).to(torch.int8)
    return r


def quantize_to_qtensor(x: Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    """Region entry: quantize a float tensor straight to quint8, with the reference IR's exact rounding.

    (``torch.quantize_per_tensor`` rounds ties differently from the reference
    quantize on some values, e.g. averages from pooling.)
    """
    shift = 128 if dtype == torch.int8 else 0
    # core's quantize arithmetic (float32 reciprocal, float32 multiply, round half to even, + zero point),
    # done in place on one temporary: the entry of every model, so its cost shows at batch 1
    inv_scale = float(torch.reciprocal(torch.tensor(scale, dtype=torch.float32)))
    y = x.float() * inv_scale
    y.round_().add_(zero_point + shift).clamp_(quant_min + shift, quant_max + shift)
    return torch._make_per_tensor_quantized_tensor(y.to(torch.uint8), scale, zero_point + shift)


def zero_pad_qtensor(q: Tensor, pad: Sequence[int]) -> Tensor:
    """Zero padding of a quint8 tensor done on its integers (pad value = zero point).

    Same result as ``F.pad`` on the quantized tensor, about 3x faster: torch's
    quantized ``constant_pad_nd`` fills through a float quantize. The memory
    format (channels_last from the qnnpack convs) is kept.
    """
    zero_point = q.q_zero_point()
    padded = F.pad(q.int_repr(), list(pad), value=zero_point)
    return torch._make_per_tensor_quantized_tensor(padded, q.q_scale(), zero_point)


torch.fx.wrap("zero_pad_qtensor")
torch.fx.wrap("to_qtensor")
torch.fx.wrap("from_qtensor")
torch.fx.wrap("quantize_to_qtensor")


# ----------------------------------------------------------------------------- weighted modules


def _qweight(ref: nnqr.ReferenceQuantizedModule) -> Tensor:
    """The reference module's int8 weight as a qint8 tensor (built only while packing)."""
    w = ref.weight_int
    if ref.weight_axis is not None:
        return torch._make_per_channel_quantized_tensor(
            w, ref.weight_scale.double(), ref.weight_zero_point.long(), ref.weight_axis
        )
    return torch._make_per_tensor_quantized_tensor(w, float(ref.weight_scale), int(ref.weight_zero_point))


class _Packed(nn.Module):
    """Plain int8 weight + qparams as buffers; the qnnpack-packed weight is built on first use, never saved."""

    def __init__(self, ref: nnqr.ReferenceQuantizedModule, out_scale: float, out_zero_point: int, relu: bool, clamp_max: float | None) -> None:
        super().__init__()
        self.register_buffer("weight_int", ref.weight_int.detach().clone())
        self.register_buffer("weight_scale", ref.weight_scale.detach().clone())
        self.register_buffer("weight_zero_point", ref.weight_zero_point.detach().clone())
        self.weight_axis = ref.weight_axis
        bias = getattr(ref, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.out_scale = float(out_scale)
        self.out_zero_point = int(out_zero_point)
        self.relu = relu
        self.clamp_max = clamp_max
        self._packed: Any = None

    def _pack(self) -> Any:
        raise NotImplementedError

    def packed(self) -> Any:
        if self._packed is None:
            self._packed = self._pack()
        return self._packed

    def _qweight(self) -> Tensor:
        return _qweight(self)  # type: ignore[arg-type]  (same attribute names as a reference module)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packed"] = None  # packed weights are engine objects: rebuilt after pickling / deepcopy
        return state

    def _finish(self, y: Tensor) -> Tensor:
        if self.clamp_max is not None:
            y = torch.clamp(y, max=self.clamp_max)
        return y


class QuantizedConv(_Packed):
    """quint8 in -> ``quantized::conv{1,2}d[_relu]`` / ``conv_transpose2d`` (qnnpack) -> quint8 out."""

    def __init__(self, ref: nnqr.ReferenceQuantizedModule, out_scale: float, out_zero_point: int, relu: bool, clamp_max: float | None) -> None:
        super().__init__(ref, out_scale, out_zero_point, relu, clamp_max)
        self.ndim = len(ref.kernel_size)
        self.transposed = bool(ref.transposed)
        self.stride = list(ref.stride)
        self.padding = list(ref.padding)
        self.dilation = list(ref.dilation)
        self.output_padding = list(ref.output_padding)
        self.groups = int(ref.groups)

    def _pack(self) -> Any:
        ops = torch.ops.quantized
        w = self._qweight()
        if self.transposed:
            return ops.conv_transpose2d_prepack(w, self.bias, self.stride, self.padding, self.output_padding, self.dilation, self.groups)
        prepack = ops.conv1d_prepack if self.ndim == 1 else ops.conv2d_prepack
        return prepack(w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        ops = torch.ops.quantized
        if self.transposed:
            y = ops.conv_transpose2d(x, self.packed(), self.out_scale, self.out_zero_point)
            if self.relu:
                y = torch.relu(y)
            return self._finish(y)
        if self.ndim == 1:
            op = ops.conv1d_relu if self.relu else ops.conv1d
        else:
            op = ops.conv2d_relu if self.relu else ops.conv2d
        return self._finish(op(x, self.packed(), self.out_scale, self.out_zero_point))


class QuantizedLinear(_Packed):
    """quint8 in -> ``quantized::linear[_relu]`` (qnnpack) -> quint8 out."""

    def _pack(self) -> Any:
        return torch.ops.quantized.linear_prepack(self._qweight(), self.bias)

    def forward(self, x: Tensor) -> Tensor:
        op = torch.ops.quantized.linear_relu if self.relu else torch.ops.quantized.linear
        return self._finish(op(x, self.packed(), self.out_scale, self.out_zero_point))


class QuantizedDynamicLinear(_Packed):
    """float in -> ``quantized::linear[_relu]_dynamic`` (qnnpack) -> float out.

    The kernel picks the activation's uint8 qparams from each input's range,
    as the reference IR's ``choose_qparams`` does (full range, no reduce_range).
    """

    def __init__(self, ref: nnqr.ReferenceQuantizedModule, relu: bool) -> None:
        super().__init__(ref, 1.0, 0, relu, None)

    def _pack(self) -> Any:
        return torch.ops.quantized.linear_prepack(self._qweight(), self.bias)

    def forward(self, x: Tensor) -> Tensor:
        op = torch.ops.quantized.linear_relu_dynamic if self.relu else torch.ops.quantized.linear_dynamic
        return op(x, self.packed(), False)


# ----------------------------------------------------------------------------- the artifact


class QnnpackModule(nn.Module):
    """The lowered model: runs its graph with the qnnpack engine, takes and returns float tensors.

    ``float_ops`` lists (node, op, reason) for every op the lowering left in
    the reference form (dequantize -> float op -> quantize).
    """

    def __init__(self, graph_module: GraphModule, float_ops: Sequence[tuple[str, str, str]] = ()) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.float_ops = list(float_ops)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with qnnpack_engine():
            return self.graph_module(*args, **kwargs)

    @property
    def code(self) -> str:
        return self.graph_module.code


# ----------------------------------------------------------------------------- the pass

_SHARE_QPARAMS_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.ReLU, nn.ReLU6, nn.Hardtanh,
    nn.Identity, nn.Dropout, nn.Flatten,
)
_PAD_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
_SHARE_QPARAMS_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.adaptive_avg_pool2d, torch._C._nn.avg_pool2d, F.relu, torch.relu, F.relu6,
    F.hardtanh, F.dropout, torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze,
    torch.unsqueeze,
}
_SHARE_QPARAMS_METHODS = {"flatten", "reshape", "view", "relu", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "detach"}
# fixed output qparams of torch's quantized sigmoid / tanh / hardsigmoid on quint8 (scale, zero point)
_FIXED_QPARAMS_FUNCTIONS = {torch.sigmoid: (1 / 256, 0), F.sigmoid: (1 / 256, 0), torch.tanh: (2 / 256, 128), F.hardsigmoid: (1 / 256, 0)}
_FIXED_QPARAMS_MODULES = {nn.Sigmoid: (1 / 256, 0), nn.Tanh: (2 / 256, 128), nn.Hardsigmoid: (1 / 256, 0)}
_BINARY = {operator.add: "add", torch.add: "add", operator.mul: "mul", torch.mul: "mul"}


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _activation_tail(qop: QuantizedOp) -> tuple[bool, float | None] | str:
    """(relu, clamp max) for the fused activations, or why they cannot fuse into a qnnpack kernel."""
    relu, clamp_max = False, None
    for kind, bounds in qop.activations:
        if kind == "relu":
            relu = True
        elif kind == "relu6" or (kind == "hardtanh" and bounds == (0.0, 6.0)):
            relu, clamp_max = True, 6.0 if clamp_max is None else min(clamp_max, 6.0)
        else:
            return f"activation {kind}{bounds or ''} has no qnnpack fused form"
    if clamp_max is not None and qop.output_qparams is not None:
        scale, zp = _u8_qparams(qop.output_qparams)
        if (255 - zp) * scale <= clamp_max:
            clamp_max = None  # the output range already ends at or below 6: quantization clamps
    return relu, clamp_max


def _why_not(qop: QuantizedOp, modules: dict[str, nn.Module]) -> str | None:
    """None if the chain can run on qnnpack kernels, else the reason it stays in reference form."""
    if qop.output_q is None or qop.output_qparams is None:
        return "its output is not quantized (float consumer)"
    if any(qp is None for qp in qop.input_qparams):
        return "an input is not per-tensor quantized with constant qparams"
    if any(qp.dtype not in (torch.int8, torch.uint8) for qp in qop.input_qparams):  # type: ignore[union-attr]
        return "an input is not 8-bit"
    if not _full_range(qop.output_qparams):
        return f"output quant range [{qop.output_qparams.quant_min}, {qop.output_qparams.quant_max}] is not the full 8-bit range the kernels clamp to"
    return None


def _weighted_why(ref: nn.Module) -> str | None:
    if ref.weight_dtype != torch.int8:
        return f"weight dtype {ref.weight_dtype} (qnnpack needs int8)"
    if ref.weight_axis not in (None, 0) or (ref.weight_axis is None and ref.weight_scale.numel() != 1):
        return f"per-channel weight axis {ref.weight_axis} (qnnpack needs output channels, axis 0)"
    if isinstance(ref, (nnqr.Conv1d, nnqr.Conv2d, nnqr.ConvTranspose2d)):
        if ref.padding_mode != "zeros":
            return f"padding_mode={ref.padding_mode!r} (qnnpack convolutions pad with zeros)"
        if isinstance(ref.padding, str):
            return f"padding={ref.padding!r} (qnnpack needs explicit symmetric padding)"
        if isinstance(ref, nnqr.ConvTranspose2d) and ref.weight_axis is not None:
            return "per-channel transposed conv weight (qnnpack packs transposed conv per tensor)"
        return None
    if isinstance(ref, nnqr.Linear):
        return None
    return f"{type(ref).__name__} has no qnnpack kernel here"


def _what(node: Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    return getattr(node.target, "__name__", str(node.target))


def lower_inprocess(reference_model: GraphModule, example_inputs: tuple[Any, ...]) -> QnnpackModule:
    """Reference IR -> ``QnnpackModule`` running torch's qnnpack int8 kernels (the input model is not modified)."""
    gm = copy.deepcopy(reference_model)
    if example_inputs:
        try:
            ShapeProp(gm).propagate(*example_inputs)
        except Exception:  # noqa: BLE001 - shapes only guard binary ops; without them those stay float
            pass
    modules = dict(gm.named_modules())
    graph = gm.graph
    qtensor_nodes: dict[Node, torch.dtype] = {}  # nodes that now produce quint8 tensors -> the reference dtype
    float_ops: list[tuple[str, str, str]] = []

    def qinput(dq: Node) -> Node:
        """The quint8 version of a dequantize node's integer producer (converted lazily)."""
        producer = dq.args[0]
        if producer in qtensor_nodes or _is_8bit_quantize(producer):
            return producer  # type: ignore[return-value]  (quantize nodes become quint8 producers below)
        qp = QParams.from_node(dq)
        assert qp is not None
        with graph.inserting_after(producer):  # type: ignore[arg-type]
            conv = graph.call_function(to_qtensor, (producer, qp.scale, qp.zero_point, qp.dtype))
        qtensor_nodes[conv] = qp.dtype
        return conv

    _lower_dynamic_linears(gm, modules, float_ops)
    for qop in find_quantized_ops(gm):
        node = qop.node
        why = _why_not(qop, modules)
        target_module = modules.get(node.target) if node.op == "call_module" else None
        make = None
        if why is None:
            out_scale, out_zp = _u8_qparams(qop.output_qparams)  # type: ignore[arg-type]
            in_qps = [_u8_qparams(qp) for qp in qop.input_qparams]  # type: ignore[arg-type]
            if isinstance(target_module, (nnqr.Conv1d, nnqr.Conv2d, nnqr.ConvTranspose2d, nnqr.Linear)):
                why = _weighted_why(target_module)
                tail = _activation_tail(qop)
                if why is None and isinstance(tail, str):
                    why = tail
                if why is None:
                    relu, clamp_max = tail  # type: ignore[misc]
                    cls = QuantizedLinear if isinstance(target_module, nnqr.Linear) else QuantizedConv
                    lowered = cls(target_module, out_scale, out_zp, relu, clamp_max)
                    name = f"{node.target.replace('.', '_')}_qnnpack"
                    gm.add_submodule(name, lowered)

                    def make(g, name=name, dq=qop.dq_inputs[0]):
                        return g.call_module(name, (qinput(dq),))
            elif node.op == "call_function" and node.target in _BINARY and len(qop.dq_inputs) == 2 and len(node.args) == 2 and not node.kwargs:
                shapes = [_shape(a) for a in node.args]
                tail = _activation_tail(qop)
                if shapes[0] is None or shapes[0] != shapes[1]:
                    why = f"{_BINARY[node.target]} with broadcasting or unknown shapes {shapes} (qnnpack needs equal shapes)"
                elif isinstance(tail, str) or tail[1] is not None:
                    why = tail if isinstance(tail, str) else "relu6 after add / mul has no qnnpack fused form"
                else:
                    fn = getattr(torch.ops.quantized, _BINARY[node.target] + ("_relu" if tail[0] else ""))
                    a, b = node.args

                    def make(g, fn=fn, a=a, b=b):
                        return g.call_function(fn, (qinput(a), qinput(b), out_scale, out_zp))
            elif node.op == "call_function" and node.target is torch.cat and not qop.tail:
                tensors = node.args[0]
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
                if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, Node) and is_dequantize_node(t) for t in tensors):
                    why = "cat of non-quantized inputs"
                else:
                    def make(g, tensors=tuple(tensors), dim=dim):
                        return g.call_function(torch.ops.quantized.cat, ([qinput(t) for t in tensors], dim, out_scale, out_zp))
            elif (node.op == "call_function" and node.target is F.hardswish) or isinstance(target_module, nn.Hardswish):
                if qop.tail:
                    why = "activation after hardswish"
                else:
                    def make(g, dq=qop.dq_inputs[0]):
                        return g.call_function(torch.ops.quantized.hardswish, (qinput(dq), out_scale, out_zp))
            elif _is_fixed(node, target_module) is not None and not qop.tail:
                fixed = _is_fixed(node, target_module)
                if abs(fixed[0] - out_scale) > 1e-12 or fixed[1] != out_zp:
                    why = f"output qparams ({out_scale}, {out_zp}) differ from the kernel's fixed {fixed}"
                else:
                    make = _rerun(node, qop, qinput)
            elif _is_zero_pad(node, target_module) and not qop.tail and len(qop.dq_inputs) == 1:
                pad = tuple(target_module.padding) if target_module is not None else node.kwargs.get("pad", node.args[1] if len(node.args) > 1 else None)
                if in_qps[0] != (out_scale, out_zp):
                    why = "output qparams differ from the input's (zero padding does not requantize)"
                elif not isinstance(pad, (tuple, list)) or not all(isinstance(p, int) and p >= 0 for p in pad):
                    why = f"padding {pad!r} is not a tuple of non-negative ints"
                else:
                    def make(g, dq=qop.dq_inputs[0], pad=pad):
                        return g.call_function(zero_pad_qtensor, (qinput(dq), pad))
            elif _is_share_qparams(node, target_module) and not qop.tail and len(qop.dq_inputs) == 1:
                if in_qps[0] != (out_scale, out_zp):
                    why = "output qparams differ from the input's (qnnpack runs this op without requantizing)"
                else:
                    make = _rerun(node, qop, qinput)
            else:
                why = "no qnnpack kernel for this op in quantfx's lowering"
        if make is None:
            float_ops.append((node.name, _what(node, modules), why or "not lowered"))
            continue
        new = replace_quantized_op(gm, qop, make)
        qtensor_nodes[new] = qop.output_qparams.dtype  # type: ignore[union-attr]

    _convert_boundaries(gm, qtensor_nodes)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()  # the reference modules the kernels replaced
    return QnnpackModule(gm, float_ops)


def _is_call(node: Any, target: Any) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target == target


def _dynamic_input(node: Node) -> Node | None:
    """``x`` when ``node`` is the reference IR's dynamic uint8 quantization of ``x``
    (choose_qparams -> quantize_per_tensor_tensor -> dequantize_per_tensor_tensor), else None."""
    dq = node.args[0] if node.args else None
    if not _is_call(dq, _q.dequantize_per_tensor_tensor.default) or tuple(dq.args[3:6]) != (0, 255, torch.uint8):
        return None
    q = dq.args[0]
    if not _is_call(q, _q.quantize_per_tensor_tensor.default) or tuple(q.args[1:6]) != tuple(dq.args[1:6]):
        return None
    scale, zero_point = q.args[1], q.args[2]
    if not (_is_call(scale, operator.getitem) and _is_call(zero_point, operator.getitem)):
        return None
    choose = scale.args[0]
    if choose is not zero_point.args[0] or (scale.args[1], zero_point.args[1]) != (0, 1):
        return None
    if not _is_call(choose, _q.choose_qparams_per_tensor.default) or choose.args[0] is not q.args[0]:
        return None
    if tuple(choose.args[1:3]) != (0, 255) or choose.args[4] != torch.uint8:
        return None
    return q.args[0]  # type: ignore[return-value]


def _lower_dynamic_linears(gm: GraphModule, modules: dict[str, nn.Module], float_ops: list[tuple[str, str, str]]) -> None:
    """Dynamic int8 Linear (``default_dynamic_qconfig``) -> ``QuantizedDynamicLinear``, fusing a following ReLU."""
    graph = gm.graph
    for node in list(graph.nodes):
        ref = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(ref, nnqr.Linear) or len(node.args) != 1 or node.kwargs:
            continue
        x = _dynamic_input(node)
        if x is None:
            continue
        why = _weighted_why(ref)
        if why is not None:
            float_ops.append((node.name, "Linear (dynamic)", why))
            continue
        end, relu = node, False
        users = list(node.users)
        if len(users) == 1:
            user = users[0]
            user_module = modules.get(user.target) if user.op == "call_module" else None
            if isinstance(user_module, nn.ReLU) or (user.op == "call_function" and user.target in (F.relu, torch.relu) and len(user.args) == 1 and not user.kwargs):
                end, relu = user, True
        name = f"{node.target.replace('.', '_')}_qnnpack_dynamic"
        gm.add_submodule(name, QuantizedDynamicLinear(ref, relu))
        with graph.inserting_before(node):
            new = graph.call_module(name, (x,))
        end.replace_all_uses_with(new)
        dead = [end, node] if end is not node else [node]
        chain = node.args[0]
        for n in dead:
            graph.erase_node(n)
        # the quantize / choose_qparams chain, if nothing else reads it
        for n in [chain, chain.args[0], chain.args[1], chain.args[2], chain.args[1].args[0]]:  # type: ignore[union-attr]
            if isinstance(n, Node) and n.graph is graph and not n.users:
                graph.erase_node(n)


def _is_fixed(node: Node, module: nn.Module | None) -> tuple[float, int] | None:
    if module is not None:
        return _FIXED_QPARAMS_MODULES.get(type(module))
    if node.op == "call_function":
        return _FIXED_QPARAMS_FUNCTIONS.get(node.target)
    if node.op == "call_method" and node.target in ("sigmoid", "tanh"):
        return (1 / 256, 0) if node.target == "sigmoid" else (2 / 256, 128)
    return None


def _is_zero_pad(node: Node, module: nn.Module | None) -> bool:
    """Constant zero padding (EfficientNet's static "same" padding): lowered to ``zero_pad_qtensor`` so it
    does not split the int8 region with a dequantize / float pad / quantize round trip."""
    if module is not None:
        return isinstance(module, _PAD_MODULES) and float(getattr(module, "value", 0.0)) == 0.0
    if node.op == "call_function" and node.target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return mode == "constant" and (value is None or float(value) == 0.0)
    return False


def _is_share_qparams(node: Node, module: nn.Module | None) -> bool:
    if module is not None:
        if isinstance(module, nn.Hardtanh) and not isinstance(module, nn.ReLU6):
            return (float(module.min_val), float(module.max_val)) == (0.0, 6.0) or module.min_val <= -1e30
        return isinstance(module, _SHARE_QPARAMS_MODULES)
    if node.op == "call_function":
        return node.target in _SHARE_QPARAMS_FUNCTIONS
    return node.op == "call_method" and node.target in _SHARE_QPARAMS_METHODS


def _rerun(node: Node, qop: QuantizedOp, qinput: Any) -> Any:
    """Call the same op on the quint8 input (torch's quantized dispatch keeps the input's qparams)."""

    def make(g: torch.fx.Graph) -> Node:
        env = {dq: qinput(dq) for dq in qop.dq_inputs}
        args = torch.fx.node.map_arg(node.args, lambda a: env.get(a, a))
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda a: env.get(a, a))
        return g.create_node(node.op, node.target, args, kwargs)

    return make


def _is_8bit_quantize(node: Any) -> bool:
    return (
        isinstance(node, Node)
        and node.op == "call_function"
        and node.target == _q.quantize_per_tensor.default
        and node.args[5] in (torch.int8, torch.uint8)
    )


def _convert_boundaries(gm: GraphModule, qtensor_nodes: dict[Node, torch.dtype]) -> None:
    """Region entries quantize straight to quint8; dequantize of quint8 tensors becomes ``.dequantize()``;
    any other reader of a quint8 tensor gets the reference IR's plain integers back."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == _q.quantize_per_tensor.default:
            if not _is_8bit_quantize(node):
                continue
            with graph.inserting_before(node):
                new = graph.call_function(quantize_to_qtensor, tuple(node.args[:6]))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            qtensor_nodes[new] = node.args[5]
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == _q.dequantize_per_tensor.default and node.args[0] in qtensor_nodes:
            with graph.inserting_before(node):
                new = graph.call_method("dequantize", (node.args[0],))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    for node, dtype in list(qtensor_nodes.items()):
        if node.graph is not graph:
            continue
        for user in list(node.users):
            if user in qtensor_nodes or (user.op == "call_method" and user.target == "dequantize"):
                continue
            with graph.inserting_after(node):
                back = graph.call_function(from_qtensor, (node, dtype))
            user.replace_input_with(node, back)
