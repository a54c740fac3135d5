"""Leave a reference model's outputs in float: drop the quantize -> dequantize pair right before the output.

FX graph mode quantization (and torch.ao's convert) quantizes the output of
every quantized op, including the last one, so a classifier's logits are
rounded to 256 levels before the user sees them. On the runtimes whose int8
kernels return float anyway (OpenVINO, which fuses the dequantization into
the FullyConnected; NNCF never places a FakeQuantize on a model output) that
rounding buys nothing and costs accuracy: on pretrained EfficientNet-Lite0
through OpenVINO, top-1 agreement with fp32 goes from 0.77 to 0.87 on the
bench photographs (near-tied logits land in one bin and the argmax flips),
and a random-init ResNet-18 gains 4.6 dB SQNR.

The pass rewrites ``... -> op -> quantize(s, z) -> dequantize(s, z) -> output``
into ``... -> op -> output``; the op's inputs and weights stay quantized.
Only pairs whose quantize and dequantize carry the same parameters are
removed; a dequantize whose quantize is shared with other readers keeps them
(only the output's use is rewired). Backends opt in through
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


def keep_outputs_float(reference: GraphModule) -> list[str]:
    """Rewire every graph output fed by a quantize -> dequantize pair to the float value before it, in place.

    Returns the names of the float nodes that now feed the output (empty when
    nothing was rounded there). The model must be a reference model
    (``convert_to_reference_fx`` output); the rest of the graph is unchanged.
    """
    graph = reference.graph
    kept: list[str] = []

    def rewire(arg: Node) -> Node:
        source = _float_source(arg)
        if source is None:
            return arg
        kept.append(source.name)
        return source

    for node in graph.nodes:
        if node.op == "output":
            node.args = map_arg(node.args, rewire)
    if kept:
        graph.eliminate_dead_code()
        reference.recompile()
    return kept
