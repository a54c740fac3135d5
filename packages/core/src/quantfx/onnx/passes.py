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
    "fit_bias_in_int32",
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


INT32_BIAS_LIMIT = 2**30
"""Largest |bias / (input scale * weight scale)| ``fit_bias_in_int32`` leaves alone: half of int32,
so the integer accumulator still has room for the products."""


def _weight_axis(node: onnx.NodeProto, rank: int) -> int | None:
    """The output-channel axis of a Conv / Gemm weight (None: not a weighted op we handle)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm" and rank == 2:
        return 0 if int(attr(node, "transB", 0)) else 1
    return None


def fit_bias_in_int32(model: onnx.ModelProto) -> onnx.ModelProto:
    """Widen per-channel weight scales where a runtime's int32 bias would overflow.

    ONNX Runtime (and other integer runtimes) fuse ``DQ -> Conv / Gemm (float
    bias) -> Q`` into one int8 kernel whose bias is ``round(bias / (s_x * s_w))``
    in int32. A channel whose weights are all but zero (a dead channel of a
    pretrained network: EfficientNet-Lite0's stem has weights of 3e-9 and a
    folded-BN bias of order 1) gets a weight scale so small that this
    overflows, and the runtime returns garbage for the whole channel. This pass
    gives such channels the smallest weight scale that keeps the bias within
    ``INT32_BIAS_LIMIT`` and requantizes their int8 weights to it (the weights
    then round to almost all zeros: the change in the output is below the
    weights' own size, i.e. below the reference's float noise). Other channels,
    and models without the problem, are left bit-identical.
    """
    graph = model.graph
    index = GraphIndex(graph)
    new_nodes: list[onnx.NodeProto] = []
    changed = False
    for node in graph.node:
        new_nodes_before = _fit_one(node, index, graph)
        if new_nodes_before:
            changed = True
            new_nodes.extend(new_nodes_before)
        new_nodes.append(node)
    if changed:
        _replace_nodes(graph, new_nodes)
        remove_dead_nodes(model)
        remove_unused_initializers(model)
    return model


def _fit_one(node: onnx.NodeProto, index: GraphIndex, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
        return []
    x_dq, w_dq = index.producer.get(node.input[0]), index.producer.get(node.input[1])
    if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
        return []
    bias, s_x = index.constant(node.input[2]), index.constant(x_dq.input[1])
    weight, s_w = index.constant(w_dq.input[0]), index.constant(w_dq.input[1])
    if bias is None or s_x is None or weight is None or s_w is None or s_x.size != 1:
        return []
    zp = index.constant(w_dq.input[2]) if len(w_dq.input) > 2 and w_dq.input[2] else np.zeros((), weight.dtype)
    if zp is None or np.any(zp != 0):
        return []  # symmetric weights only (every quantfx default); an affine weight keeps its scale
    axis = _weight_axis(node, weight.ndim)
    if axis is None:
        return []
    channels = weight.shape[axis]
    scale = np.broadcast_to(s_w.astype(np.float64).reshape(-1), (channels,)).copy()
    needed = np.abs(bias.astype(np.float64).reshape(-1)) / (float(s_x.reshape(())) * INT32_BIAS_LIMIT)
    if bias.size != channels or not np.any(needed > scale):
        return []
    if s_w.size == 1:
        scale[:] = max(scale[0], float(needed.max()))  # per-tensor stays per-tensor
    else:
        scale = np.maximum(scale, needed)
    shape = [1] * weight.ndim
    shape[axis] = channels
    ratio = (np.broadcast_to(s_w.astype(np.float64).reshape(-1), (channels,)) / scale).reshape(shape)
    info = np.iinfo(weight.dtype)
    lo = -info.max if weight.dtype == np.int8 else info.min  # keep int8 weights in the narrow [-127, 127]
    new_weight = np.clip(np.round(weight.astype(np.float64) * ratio), lo, info.max).astype(weight.dtype)
    new_scale = scale.astype(np.float32).reshape(s_w.shape)
    w_name = index.unique_name(f"{w_dq.input[0]}_int32_bias_safe")
    s_name = index.unique_name(f"{w_dq.input[1]}_int32_bias_safe")
    for tensor in (numpy_helper.from_array(new_weight, w_name), numpy_helper.from_array(new_scale, s_name)):
        graph.initializer.append(tensor)
        index.initializers[tensor.name] = tensor
    out = index.unique_name(f"{w_dq.output[0]}_int32_bias_safe")
    axis_attr = {"axis": int(attr(w_dq, "axis", 1))} if s_w.size != 1 else {}
    dq = onnx.helper.make_node(
        "DequantizeLinear", [w_name, s_name, *w_dq.input[2:]], [out],
        name=index.unique_name(f"{w_dq.name or 'dq'}_int32_bias_safe"), **axis_attr,
    )
    index.producer[out] = dq
    node.input[1] = out
    return [dq]


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


DEFAULT_PASSES: tuple[OnnxPass, ...] = (
    fold_weight_transposes, fit_bias_in_int32, remove_dead_nodes, remove_unused_initializers,
)
