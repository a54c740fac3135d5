"""Round an int8 op's result only where an int8 op reads it: model outputs and float ops get it unrounded.

FX graph mode quantization (and torch.ao's convert) quantizes the output of
every quantized op, whoever reads it: the last op's result (a classifier's
logits reach the user on a 256-level grid) and results read only by float
code (a transformer's residual add, LayerNorm, GELU when the backend runs them
in float). On runtimes whose int8 kernels return float anyway (OpenVINO fuses
the dequantization into the FullyConnected; NNCF puts FakeQuantize only on the
inputs of int8 ops) that rounding costs accuracy and, as a standalone
FakeQuantize, time. Measured through OpenVINO: pretrained EfficientNet-Lite0
top-1 agreement with fp32 0.77 -> 0.87 on the bench photographs (near-tied
logits land in one bin and the argmax flips), a random-init ResNet-18 +4.6 dB.

The pass rewires each reader that is the graph output, or a node prepare
recorded as float (``PreparedState.float_reasons``: no qconfig, no backend
pattern), from ``dequantize(quantize(x, p), p)`` to ``x``. Readers that are
quantized ops keep the rounded value, so a pair shared with them stays; pairs
nobody reads any more are removed. Only pairs whose quantize and dequantize
carry the same parameters are touched. Backends opt in through
``Backend.float_outputs`` (``quantfx.quantize`` applies it), or call
:func:`keep_outputs_float` on a reference model before lowering.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from .. import ops as _ops  # noqa: F401  (registers torch.ops.quantfx.*)

__all__ = ["keep_outputs_float"]

_q = torch.ops.quantfx
_PAIRS = {
    _q.dequantize_per_tensor.default: _q.quantize_per_tensor.default,
    _q.dequantize_per_channel.default: _q.quantize_per_channel.default,
}


def _float_source(arg: Node) -> Node | None:
    """``x`` when ``arg`` is ``dequantize(quantize(x, p), p)`` with identical parameters ``p``, else None."""
    quantize = _PAIRS.get(arg.target) if arg.op == "call_function" else None
    if quantize is None or not arg.args or not isinstance(arg.args[0], Node):
        return None
    q = arg.args[0]
    if q.op != "call_function" or q.target != quantize or tuple(q.args[1:]) != tuple(arg.args[1:]) or q.kwargs != arg.kwargs:
        return None
    source = q.args[0]
    return source if isinstance(source, Node) else None


def _float_readers(reference: GraphModule) -> set[str]:
    """Names of the nodes prepare left in float (empty for a model without quantfx's prepare state)."""
    state = reference.meta.get("quantfx")
    return set(getattr(state, "float_reasons", {}) or {})


def keep_outputs_float(reference: GraphModule) -> list[str]:
    """Give the graph output and every float reader the unrounded value of a quantize -> dequantize pair, in place.

    Returns the names of the nodes whose result is now read unrounded
    somewhere (empty when nothing changed). The model must be a reference
    model (``convert_to_reference_fx`` output); quantized readers, weights and
    the rest of the graph are unchanged.
    """
    graph = reference.graph
    float_readers = _float_readers(reference)
    kept: list[str] = []

    def unrounded(arg: Node) -> Node:
        source = _float_source(arg)
        if source is None:
            return arg
        if source.name not in kept:
            kept.append(source.name)
        return source

    for node in list(graph.nodes):
        if node.op == "output" or node.name in float_readers:
            node.args = map_arg(node.args, unrounded)
            node.kwargs = map_arg(node.kwargs, unrounded)
    if kept:
        graph.eliminate_dead_code()
        reference.recompile()
    return kept
