"""Reference IR -> a plain-torch "fake-quant" GraphModule that OpenVINO's PyTorch frontend converts as is.

OpenVINO expresses quantization the way its own tools (NNCF) write it:

- an activation quantization point is one ``FakeQuantize`` node. The
  reference IR's ``quantize_per_tensor -> dequantize_per_tensor`` pairs become
  ``torch.fake_quantize_per_tensor_affine`` (per channel:
  ``fake_quantize_per_channel_affine``), which the PyTorch frontend converts
  to FakeQuantize with the same range and number of levels;
- an integer weight stays integer: ``Constant(i8) -> Convert(f32) ->
  [Subtract(zero point)] -> Multiply(scale)``, the weight "decompression"
  pattern OpenVINO's low-precision transformations fold into int8
  convolutions / matmuls. The saved ``.bin`` holds the int8 weight, and the
  integers are exactly the reference model's.

Anything else from ``torch.ops.quantfx`` (a quantize whose output leaves the
model, a dequantize of a quantized model input, dynamic quantization) becomes
the same arithmetic in plain torch ops, so every reference model converts and
computes what the reference computes.

The pass works on a deep copy: the reference model is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import quantfx.ops  # noqa: F401  (registers torch.ops.quantfx.*)
import torch
import torch.nn.functional as F
from quantfx.errors import LoweringError
from quantfx.nn.reference import ReferenceQuantizedModule
from torch import Tensor, fx

__all__ = ["FAKE_QUANT_TARGETS", "check_convertible", "to_fake_quant"]

_Q = torch.ops.quantfx
_QPT = _Q.quantize_per_tensor.default
_DQPT = _Q.dequantize_per_tensor.default
_QPC = _Q.quantize_per_channel.default
_DQPC = _Q.dequantize_per_channel.default
_QPTT = _Q.quantize_per_tensor_tensor.default
_DQPTT = _Q.dequantize_per_tensor_tensor.default
_CHOOSE = _Q.choose_qparams_per_tensor.default

_FLOAT_QPARAMS = torch.per_channel_affine_float_qparams


# ----------------------------------------------------------------------------- plain-torch twins of quantfx ops
# (called from the rewritten graph; OpenVINO's frontend converts these torch ops directly)


def _quantize_plain(x: Tensor, scale: Any, zero_point: Any, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    q = torch.round(x.float() * (1.0 / scale)) + zero_point
    return torch.clamp(q, quant_min, quant_max).to(dtype)


def _dequantize_plain(x: Tensor, scale: Any, zero_point: Any, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    return (x.to(torch.float32) - zero_point) * scale


def _choose_qparams_plain(x: Tensor, quant_min: int, quant_max: int, eps: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    min_val = torch.clamp(x.min(), max=0.0).float()
    max_val = torch.clamp(x.max(), min=0.0).float()
    scale = torch.clamp((max_val - min_val) / float(quant_max - quant_min), min=eps)
    zero_point = torch.clamp(quant_min - torch.round(min_val / scale), quant_min, quant_max)
    return scale.reshape(1), zero_point.reshape(1)


def _quantize_tensor_plain(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    q = torch.round(x.float() / scale) + zero_point.float()
    return torch.clamp(q, quant_min, quant_max).to(dtype)


def _dequantize_tensor_plain(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
    return (x.to(torch.float32) - zero_point.float()) * scale.float()


def _decompress(w: Tensor, scale: Tensor, zero_point: Tensor | None) -> Tensor:
    """Integer weight -> float: Convert, optional Subtract, Multiply (OpenVINO's decompression pattern)."""
    wf = w.to(torch.float32)
    if zero_point is not None:
        wf = wf - zero_point
    return wf * scale


#: Functions the rewritten graph calls; tests and lowering rules can look for them.
FAKE_QUANT_TARGETS: dict[str, Callable[..., Any]] = {
    "fake_quantize_per_tensor": torch.fake_quantize_per_tensor_affine,
    "fake_quantize_per_channel": torch.fake_quantize_per_channel_affine,
    "decompress": _decompress,
    "quantize": _quantize_plain,
    "dequantize": _dequantize_plain,
}


# ----------------------------------------------------------------------------- reference modules


def _broadcast(t: Tensor, ndim: int, axis: int) -> Tensor:
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return t.reshape(shape)


def _plain_get_weight(self: ReferenceQuantizedModule) -> Tensor:
    """``get_weight`` of a reference module with plain torch ops (see ``_plain_reference_module``)."""
    if self._ov_float_weight:
        return self.weight_int.float()
    return _decompress(self.weight_int, self._ov_scale, self._ov_zero_point)


_PLAIN_CLASSES: dict[type, type] = {}


def _plain_class(cls: type) -> type:
    if cls not in _PLAIN_CLASSES:
        _PLAIN_CLASSES[cls] = type(f"OpenVINO{cls.__name__}", (cls,), {"get_weight": _plain_get_weight})
    return _PLAIN_CLASSES[cls]


def _plain_reference_module(mod: ReferenceQuantizedModule, path: str) -> torch.nn.Module:
    """A copy of a reference module whose forward dequantizes its weight with plain torch ops.

    The module's own ``forward`` (conv padding modes, transposed output
    padding, embedding bags ...) is kept; only ``get_weight`` changes, into
    the decompression pattern with the scale / zero point pre-shaped to
    broadcast along the channel axis.
    """
    new = copy.deepcopy(mod)
    qp = new.weight_qparams
    w = new.weight_int
    new._ov_float_weight = qp.is_float
    scale: Tensor = torch.ones(())
    zero_point: Tensor | None = None
    if not qp.is_float:
        if qp.is_per_channel:
            if qp.axis is None:
                raise LoweringError(f"openvino: reference module {path!r} has a per-channel weight without an axis")
            scale = _broadcast(qp.scale.float(), w.dim(), qp.axis)
            zp = _broadcast(qp.zero_point, w.dim(), qp.axis)
        else:
            scale = qp.scale.float().reshape(())
            zp = qp.zero_point.reshape(())
        if qp.qscheme == _FLOAT_QPARAMS or bool((zp != 0).any()):
            zero_point = zp.float()
    new.register_buffer("_ov_scale", scale.clone())
    new.register_buffer("_ov_zero_point", zero_point.clone() if zero_point is not None else None)
    new.__class__ = _plain_class(type(mod))
    return new


# ----------------------------------------------------------------------------- graph rewrite


def _value(gm: fx.GraphModule, arg: Any) -> Any:
    """A node argument's concrete value: constants as is, ``get_attr`` nodes as the tensor they name."""
    if isinstance(arg, fx.Node):
        if arg.op == "get_attr":
            obj: Any = gm
            for part in str(arg.target).split("."):
                obj = getattr(obj, part)
            return obj
        return None
    return arg


def _as_float(x: Any) -> float:
    return float(x.reshape(-1)[0]) if isinstance(x, Tensor) else float(x)


def _as_int(x: Any) -> int:
    return int(x.reshape(-1)[0]) if isinstance(x, Tensor) else int(x)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        return a is b
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


def _new_attr(gm: fx.GraphModule, prefix: str, value: Tensor) -> str:
    i = 0
    while hasattr(gm, f"{prefix}_{i}"):
        i += 1
    name = f"{prefix}_{i}"
    gm.register_buffer(name, value)
    return name


def _describe(node: fx.Node) -> str:
    return f"node {node.name!r} ({node.format_node()})"


def _fake_quant_node(gm: fx.GraphModule, q: fx.Node) -> fx.Node:
    """The FakeQuantize-able node replacing ``q`` and its dequantize consumers."""
    graph = gm.graph
    x = q.args[0]
    if q.target == _QPT:
        _, scale, zp, qmin, qmax, _dtype = q.args
        s, z = _value(gm, scale), _value(gm, zp)
        if s is None or z is None:
            raise LoweringError(f"openvino: {_describe(q)} has a computed scale / zero point; expected constants")
        s, z = _as_float(s), _as_int(z)
        if not qmin <= z <= qmax:
            raise LoweringError(
                f"openvino: {_describe(q)} has zero point {z} outside its quant range [{qmin}, {qmax}]; "
                "check the observer that produced it"
            )
        with graph.inserting_before(q):
            return graph.call_function(torch.fake_quantize_per_tensor_affine, (x, s, z, int(qmin), int(qmax)))
    # per channel
    _, scale, zp, axis, qmin, qmax, _dtype = q.args
    s, z = _value(gm, scale), _value(gm, zp)
    if not isinstance(s, Tensor) or not isinstance(z, Tensor):
        raise LoweringError(f"openvino: {_describe(q)} has a computed per-channel scale / zero point; expected buffers")
    s_name = _new_attr(gm, "_ov_fq_scale", s.detach().float().reshape(-1).clone())
    z_name = _new_attr(gm, "_ov_fq_zero_point", z.detach().to(torch.int32).reshape(-1).clone())
    with graph.inserting_before(q):
        s_node = graph.get_attr(s_name)
        z_node = graph.get_attr(z_name)
        return graph.call_function(
            torch.fake_quantize_per_channel_affine, (x, s_node, z_node, int(axis), int(qmin), int(qmax))
        )


def _matching_dequantizes(q: fx.Node) -> list[fx.Node]:
    """Consumers of ``q`` that dequantize it with exactly its parameters (the reference IR's pairs)."""
    pair = {_QPT: _DQPT, _QPC: _DQPC}[q.target]  # type: ignore[index]
    out = []
    for user in q.users:
        same_params = len(user.args) == len(q.args) and all(_same(a, b) for a, b in zip(user.args[1:], q.args[1:]))
        if user.op == "call_function" and user.target == pair and user.args[0] is q and same_params:
            out.append(user)
    return out


def _is_weight_source(node: Any) -> bool:
    """An integer tensor stored in the model (``get_attr``), i.e. a weight, not an activation."""
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _weight_dequantize(gm: fx.GraphModule, dq: fx.Node) -> fx.Node:
    """Replace ``dequantize(get_attr w_int, ...)`` with the decompression pattern on pre-shaped constants."""
    graph = gm.graph
    w = _value(gm, dq.args[0])
    if dq.target == _DQPT:
        _w, scale, zp, _qmin, _qmax, _dtype = dq.args
        s, z = _value(gm, scale), _value(gm, zp)
        s_t = torch.tensor(_as_float(s), dtype=torch.float32)
        z_t = torch.tensor(float(_as_int(z)), dtype=torch.float32)
    else:
        _w, scale, zp, axis, _qmin, _qmax, _dtype = dq.args
        s, z = _value(gm, scale), _value(gm, zp)
        if not isinstance(s, Tensor) or not isinstance(z, Tensor):
            raise LoweringError(f"openvino: {_describe(dq)}: per-channel weight qparams must be buffers")
        s_t = _broadcast(s.detach().float(), w.dim(), int(axis)).clone()
        z_t = _broadcast(z.detach().float(), w.dim(), int(axis)).clone()
    s_name = _new_attr(gm, "_ov_w_scale", s_t)
    z_name = _new_attr(gm, "_ov_w_zero_point", z_t) if bool((z_t != 0).any()) else None
    with graph.inserting_before(dq):
        args: tuple[Any, ...] = (dq.args[0], graph.get_attr(s_name), graph.get_attr(z_name) if z_name else None)
        return graph.call_function(_decompress, args)


_PLAIN_TWINS: dict[Any, Callable[..., Any]] = {
    _QPT: _quantize_plain,
    _DQPT: _dequantize_plain,
    _QPTT: _quantize_tensor_plain,
    _DQPTT: _dequantize_tensor_plain,
    _CHOOSE: _choose_qparams_plain,
}


def _per_channel_plain(node: fx.Node, quantize: bool) -> Callable[..., Any]:
    def fn(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int, quant_min: int, quant_max: int, dtype: torch.dtype) -> Tensor:
        s = _broadcast(scale.float(), x.dim(), axis)
        z = _broadcast(zero_point.float(), x.dim(), axis)
        if quantize:
            return torch.clamp(torch.round(x.float() / s) + z, quant_min, quant_max).to(dtype)
        return (x.to(torch.float32) - z) * s

    fn.__name__ = "quantize_per_channel_plain" if quantize else "dequantize_per_channel_plain"
    return fn


_CLAMP_MODULES = (torch.nn.ReLU6, torch.nn.Hardtanh)
_CLAMP_FUNCTIONS = (F.relu6, F.hardtanh, F.hardtanh_, torch.clamp, torch.clip)


def _clamp_bounds(gm: fx.GraphModule, node: fx.Node) -> tuple[float | None, float | None] | None:
    """(low, high) of a clamp-like node (ReLU6, Hardtanh, clamp), or None if it is not one."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, _CLAMP_MODULES):  # ReLU6 is a Hardtanh(0, 6)
            return float(mod.min_val), float(mod.max_val)
        return None
    if node.op == "call_method" and node.target in ("clamp", "clip"):
        fn: Any = torch.clamp
    elif node.op == "call_function" and node.target in _CLAMP_FUNCTIONS:
        fn = node.target
    else:
        return None
    if fn is F.relu6:
        return 0.0, 6.0
    names = ("min_val", "max_val") if fn in (F.hardtanh, F.hardtanh_) else ("min", "max")
    defaults = (-1.0, 1.0) if fn in (F.hardtanh, F.hardtanh_) else (None, None)
    args = list(node.args[1:3]) + [None] * (2 - len(node.args[1:3]))
    lo = node.kwargs.get(names[0], args[0] if len(node.args) > 1 else defaults[0])
    hi = node.kwargs.get(names[1], args[1] if len(node.args) > 2 else defaults[1])
    if isinstance(lo, fx.Node) or isinstance(hi, fx.Node) or isinstance(lo, Tensor) or isinstance(hi, Tensor):
        return None
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def _snap(value: float | None, scale: float, zero_point: int, quant_min: int, quant_max: int) -> float | None:
    """``value`` rounded onto the FakeQuantize grid, exactly as the reference quantizes it."""
    if value is None:
        return None
    t = torch.tensor([value], dtype=torch.float32)
    return float(torch.fake_quantize_per_tensor_affine(t, scale, zero_point, quant_min, quant_max))


def _snap_clamps_to_grid(gm: fx.GraphModule) -> None:
    """Clamp bounds between two identical FakeQuantizes -> the nearest grid values.

    When ReLU6 / Hardtanh / clamp shares its input's qparams (the reference
    IR's "share observer" ops, e.g. a ReLU6 not fused into its conv), the
    reference computes ``FQ(clamp(FQ(x), lo, hi))``. On grid values that equals
    ``clamp(FQ(x), FQ(lo), FQ(hi))``, and only this form survives OpenVINO's
    low-precision transformations unchanged (they fold a clamp between
    FakeQuantizes into the quantized domain and would lose the off-grid 6.0).
    """
    fq_op = torch.fake_quantize_per_tensor_affine
    for node in list(gm.graph.nodes):
        bounds = _clamp_bounds(gm, node)
        if bounds is None or not node.args:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_function" and src.target is fq_op):
            continue
        users = list(node.users)
        if not users or not all(u.op == "call_function" and u.target is fq_op and u.args[1:] == src.args[1:] for u in users):
            continue
        scale, zp, qmin, qmax = src.args[1:]

        lo, hi = (_snap(b, scale, zp, qmin, qmax) for b in bounds)
        with gm.graph.inserting_before(node):
            clamp = gm.graph.call_function(torch.clamp, (src, lo, hi))
        node.replace_all_uses_with(clamp)
        gm.graph.erase_node(node)


def to_fake_quant(reference: fx.GraphModule) -> fx.GraphModule:
    """A float GraphModule computing what ``reference`` computes, in ops OpenVINO converts to int8.

    See the module docstring for the mapping. ``reference`` is not modified.
    """
    if not isinstance(reference, fx.GraphModule):
        raise LoweringError(
            f"openvino lowering expects the reference model from quantfx.quantize_fx.convert_to_reference_fx "
            f"(a torch.fx.GraphModule), got {type(reference).__name__}"
        )
    gm = copy.deepcopy(reference)
    graph = gm.graph

    # reference modules -> the same modules with a plain-torch weight decompression
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, ReferenceQuantizedModule):
            parent, _, attr = str(node.target).rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr, _plain_reference_module(mod, str(node.target)))

    # activation quantize -> dequantize pairs -> FakeQuantize
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (_QPT, _QPC):
            continue
        if _is_weight_source(node.args[0]):
            continue  # quantizing a stored float tensor: left to the plain twin below
        dqs = _matching_dequantizes(node)
        if not dqs:
            continue
        fq = _fake_quant_node(gm, node)
        for dq in dqs:
            dq.replace_all_uses_with(fq)
            graph.erase_node(dq)
        if not node.users:
            graph.erase_node(node)

    _snap_clamps_to_grid(gm)

    # integer weights -> decompression pattern; everything else from quantfx -> plain torch
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in (_DQPT, _DQPC) and _is_weight_source(node.args[0]):
            new = _weight_dequantize(gm, node)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
        elif node.target in _PLAIN_TWINS:
            node.target = _PLAIN_TWINS[node.target]
        elif node.target in (_QPC, _DQPC):
            node.target = _per_channel_plain(node, quantize=node.target == _QPC)

    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def check_convertible(gm: fx.GraphModule) -> None:
    """Raise a LoweringError naming every node still calling a ``torch.ops.quantfx`` op (OpenVINO cannot convert them)."""
    leftovers = [
        n for n in gm.graph.nodes
        if n.op == "call_function" and getattr(n.target, "namespace", None) == "quantfx"
    ]
    if leftovers:
        raise LoweringError(
            "openvino: no plain-torch form for " + ", ".join(_describe(n) for n in leftovers)
            + "; register a lowering rule that rewrites it (quantfx_register_lowering_rules)"
        )
