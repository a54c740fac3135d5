"""Reading the reference IR for lowering: the pieces every backend's lowering shares.

A lowering looks for *quantized ops*: an op whose tensor inputs come through
``dequantize`` nodes, optionally followed by fused activations (relu, relu6,
hardtanh), ending in a ``quantize``:

    q_in -> dequantize -> op -> [relu] -> quantize -> q_out

:func:`find_quantized_ops` returns each as a :class:`QuantizedOp` with the
integer producers and qparams of its inputs and output; :func:`replace_quantized_op`
swaps the whole chain for one integer kernel call. What no lowering took stays
``dequantize -> float op -> quantize``; :func:`float_ops_report` says which
ops those are, so users can see why a node stayed in float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from .ops import is_dequantize_node, is_quantize_node

__all__ = [
    "QParams",
    "QuantizedOp",
    "FUSABLE_ACTIVATIONS",
    "find_quantized_ops",
    "replace_quantized_op",
    "activation_kind",
    "float_ops_report",
    "is_reference_module",
]

_q = torch.ops.quantfx


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine qparams of an activation."""

    scale: float
    zero_point: int
    quant_min: int
    quant_max: int
    dtype: torch.dtype

    @classmethod
    def from_node(cls, node: Node) -> "QParams | None":
        """From a per-tensor quantize / dequantize node with constant qparams; None otherwise."""
        if node.target not in (_q.quantize_per_tensor.default, _q.dequantize_per_tensor.default):
            return None
        _, scale, zp, qmin, qmax, dtype = node.args[:6]
        return cls(float(scale), int(zp), int(qmin), int(qmax), dtype)


def is_reference_module(module: Any) -> bool:
    return type(module).__module__.startswith("quantfx.nn.reference")


# activation kinds a kernel may fuse after a conv / linear / add
_ACTIVATION_MODULES: dict[type, str] = {nn_t: kind for nn_t, kind in ((torch.nn.ReLU, "relu"), (torch.nn.ReLU6, "relu6"))}
_ACTIVATION_FUNCTIONS: dict[Any, str] = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6"}
FUSABLE_ACTIVATIONS = ("relu", "relu6", "hardtanh")


def activation_kind(node: Node, modules: dict[str, torch.nn.Module]) -> tuple[str, tuple[float, float] | None] | None:
    """('relu', None) / ('relu6', None) / ('hardtanh', (lo, hi)) for an activation node, else None."""
    if node.op == "call_module":
        module = modules.get(node.target)
        if type(module) in _ACTIVATION_MODULES:
            return _ACTIVATION_MODULES[type(module)], None
        if type(module) is torch.nn.Hardtanh:
            return "hardtanh", (float(module.min_val), float(module.max_val))
    elif node.op == "call_function":
        if node.target in _ACTIVATION_FUNCTIONS:
            return _ACTIVATION_FUNCTIONS[node.target], None
        if node.target is F.hardtanh:
            lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
            hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
            return "hardtanh", (float(lo), float(hi))
    elif node.op == "call_method" and node.target == "relu":
        return "relu", None
    return None


@dataclass
class QuantizedOp:
    """One ``dequantize -> op -> [activations] -> quantize`` chain of the reference IR."""

    node: Node
    dq_inputs: list[Node]  # the dequantize nodes the op reads (tensor inputs, in argument order)
    int_inputs: list[Node]  # their integer producers (quantize nodes or integer placeholders)
    input_qparams: list[QParams | None]
    tail: list[Node] = field(default_factory=list)
    activations: list[tuple[str, tuple[float, float] | None]] = field(default_factory=list)
    output_q: Node | None = None
    output_qparams: QParams | None = None

    @property
    def last(self) -> Node:
        return self.tail[-1] if self.tail else self.node


def _tensor_args(node: Node) -> list[Node]:
    found: list[Node] = []

    def visit(arg: Any) -> None:
        if isinstance(arg, Node):
            if arg not in found:
                found.append(arg)
        elif isinstance(arg, (list, tuple)):
            for a in arg:
                visit(a)

    for a in node.args:
        visit(a)
    for a in node.kwargs.values():
        visit(a)
    return found


def find_quantized_ops(
    gm: GraphModule, select: Callable[[Node, dict[str, torch.nn.Module]], bool] | None = None
) -> list[QuantizedOp]:
    """Every op whose node inputs are all per-tensor dequantize nodes (or constants), in graph order.

    ``select(node, modules)`` narrows the search (e.g. to reference conv modules).
    Fused activations are collected only when each has one user and the chain
    ends in a per-tensor quantize.
    """
    modules = dict(gm.named_modules())
    found: list[QuantizedOp] = []
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        if is_quantize_node(node) or is_dequantize_node(node):
            continue
        if select is not None and not select(node, modules):
            continue
        args = [a for a in _tensor_args(node) if a.op != "get_attr"]
        if not args or not all(a.target == _q.dequantize_per_tensor.default for a in args):
            continue
        qop = QuantizedOp(
            node=node,
            dq_inputs=args,
            int_inputs=[a.args[0] for a in args],
            input_qparams=[QParams.from_node(a) for a in args],
        )
        last = node
        while len(last.users) == 1:
            user = next(iter(last.users))
            kind = activation_kind(user, modules)
            if kind is None:
                break
            qop.tail.append(user)
            qop.activations.append(kind)
            last = user
        if len(last.users) == 1:
            user = next(iter(last.users))
            if user.target == _q.quantize_per_tensor.default:
                qop.output_q = user
                qop.output_qparams = QParams.from_node(user)
        if qop.output_q is None and qop.tail:
            qop.tail, qop.activations = [], []  # activations stay float nodes if the output is not quantized
            if len(node.users) == 1 and next(iter(node.users)).target == _q.quantize_per_tensor.default:
                qop.output_q = next(iter(node.users))
                qop.output_qparams = QParams.from_node(qop.output_q)
        found.append(qop)
    return found


def replace_quantized_op(
    gm: GraphModule, qop: QuantizedOp, make_node: Callable[[torch.fx.Graph], Node]
) -> Node:
    """Replace ``dq -> op -> tail -> q`` by the node ``make_node`` inserts (it reads ``qop.int_inputs``).

    The new node produces the integer output (if ``qop.output_q``) or the float
    output otherwise. Dead dequantize nodes are removed.
    """
    graph = gm.graph
    anchor = qop.output_q or qop.last
    with graph.inserting_before(anchor):
        new = make_node(graph)
    anchor.replace_all_uses_with(new)
    for node in reversed([qop.node, *qop.tail] + ([qop.output_q] if qop.output_q is not None else [])):
        if not node.users:
            graph.erase_node(node)
    for dq in qop.dq_inputs:
        if not dq.users:
            graph.erase_node(dq)
    return new


def float_ops_report(gm: GraphModule) -> list[tuple[str, str]]:
    """(node name, what it runs) for every op still computing in float inside a quantized region."""
    report = []
    modules = dict(gm.named_modules())
    for qop in find_quantized_ops(gm):
        node = qop.node
        what = type(modules[node.target]).__name__ if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))
        report.append((node.name, what))
    return report

