"""Passes over an exported ONNX model that put it in the Q/DQ form runtimes fuse.

A pass is a function ``onnx.ModelProto -> onnx.ModelProto`` (it may edit in
place and return its argument). ``export_onnx`` runs ``DEFAULT_PASSES``, then
the caller's passes (a backend's placement rules).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from quantfx.onnx.graph import GraphIndex, attr

__all__ = [
    "OnnxPass",
    "fold_weight_transposes",
    "remove_dead_nodes",
    "remove_unused_initializers",
    "DEFAULT_PASSES",
]

OnnxPass = Callable[[onnx.ModelProto], "onnx.ModelProto | None"]


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Every name read inside ``node``'s subgraphs (If / Loop / Scan bodies), at any depth."""
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                names.update(i for i in n.input if i)
                names |= _subgraph_reads(n)
    return names


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


def fold_weight_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Transpose(DequantizeLinear(int weight))`` -> ``DequantizeLinear(transposed int weight)``.

    PyTorch exports ``nn.Linear`` on a 3-d input as ``MatMul(x, Transpose(W))``;
    a Transpose between the weight's DequantizeLinear and the MatMul hides the
    Q/DQ pattern from TensorRT and ONNX Runtime. The weight is transposed once
    here (still int8) and a per-axis ``axis`` follows the permutation.
    """
    graph = model.graph
    index = GraphIndex(graph)
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in graph.node:
        dq = index.producer.get(node.input[0]) if node.op_type == "Transpose" and node.input else None
        if (
            dq is None
            or dq.op_type != "DequantizeLinear"
            or not all(index.is_constant(name) for name in dq.input if name)
            or index.constant(dq.input[0]) is None
        ):
            new_nodes.append(node)
            continue
        weight = index.constant(dq.input[0])
        assert weight is not None
        perm = list(attr(node, "perm", None) or reversed(range(weight.ndim)))
        scale = index.constant(dq.input[1])
        name = index.unique_name(f"{dq.input[0]}_transposed")
        tensor = numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), name)
        new_inits.append(tensor)
        index.initializers[name] = tensor
        attrs = {}
        if scale is not None and scale.ndim == 1:  # per-axis: the channel axis moves with the permutation
            axis = int(attr(dq, "axis", 1)) % weight.ndim
            attrs["axis"] = perm.index(axis)
        new_nodes.append(
            onnx.helper.make_node(
                "DequantizeLinear", [name, *dq.input[1:]], [node.output[0]],
                name=index.unique_name(f"{dq.name or 'dq'}_transposed"), **attrs,
            )
        )
    if new_inits:
        graph.initializer.extend(new_inits)
        _replace_nodes(graph, new_nodes)
        remove_dead_nodes(model)
        remove_unused_initializers(model)
    return model


def remove_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes none of whose outputs is read (by a node or as a graph output)."""
    graph = model.graph
    live = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(out in live for out in node.output):
            kept.append(node)
            live.update(i for i in node.input if i)
            live |= _subgraph_reads(node)  # If / Loop bodies read outer names
    if len(kept) != len(graph.node):
        _replace_nodes(graph, list(reversed(kept)))
    return model


def remove_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop initializers no node reads."""
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for n in graph.node:
        used |= _subgraph_reads(n)
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return model


DEFAULT_PASSES: tuple[OnnxPass, ...] = (fold_weight_transposes, remove_dead_nodes, remove_unused_initializers)
