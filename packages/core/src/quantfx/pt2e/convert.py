"""Observers -> quantfx's reference IR ops on an exported graph (the core of ``convert_pt2e``).

Each observer / fake-quant call becomes ``torch.ops.quantfx.quantize_*`` followed
by one ``dequantize_*`` per consumer (a dequantize is never shared, so a
lowering matches ``dq -> op -> q`` locally). Weights (anything computed from
module attributes alone) are quantized once at convert when ``fold_quantize``:
the graph then reads ``get_attr(int8 weight) -> dequantize``. Dynamic specs
become ``choose_qparams -> quantize_tensor -> dequantize_tensor``; float16
specs a round trip through float16.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node

import quantfx.ops  # noqa: F401  (registers torch.ops.quantfx.*)
from quantfx.dtypes import normalize_dtype
from quantfx.errors import UncalibratedObserverError
from quantfx.observers import is_observer_or_fake_quant
from quantfx.pt2e.graph_utils import (
    constant_value,
    copy_val_meta,
    set_attr,
    unique_attr_name,
)

__all__ = ["replace_observers", "fold_quantize_ops"]

_q = torch.ops.quantfx
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)
_STATIC_QUANTIZE = (_q.quantize_per_tensor.default, _q.quantize_per_channel.default)


def _range(observer: Any, dtype: torch.dtype) -> tuple[int, int]:
    qmin, qmax = getattr(observer, "quant_min", None), getattr(observer, "quant_max", None)
    if qmin is None or qmax is None:
        info = torch.iinfo(dtype)
        return int(info.min), int(info.max)
    return int(qmin), int(qmax)


def _users_get_own_dq(gm: GraphModule, obs_node: Node, q: Node, dq_target: Any, tail: tuple) -> None:
    for user in list(obs_node.users):
        with gm.graph.inserting_before(user):
            dq = gm.graph.call_function(dq_target, (q, *tail))
        copy_val_meta(obs_node, dq)
        user.replace_input_with(obs_node, dq)


def _convert_one(gm: GraphModule, node: Node, observer: Any) -> None:
    graph = gm.graph
    x = node.args[0]
    dtype = normalize_dtype(getattr(observer, "dtype", None))
    is_dynamic = bool(getattr(observer, "is_dynamic", False))
    if dtype is None or dtype in (torch.float32, torch.float64) or (is_dynamic and dtype.is_floating_point):
        node.replace_all_uses_with(x)
        graph.erase_node(node)
        return
    if dtype in (torch.float16, torch.bfloat16):
        with graph.inserting_before(node):
            low = graph.call_function(torch.ops.aten._to_copy.default, (x,), {"dtype": dtype})
            back = graph.call_function(torch.ops.aten._to_copy.default, (low,), {"dtype": torch.float32})
        node.replace_all_uses_with(back)
        graph.erase_node(node)
        return
    qmin, qmax = _range(observer, dtype)
    if is_dynamic:
        eps = float(getattr(observer, "eps", torch.finfo(torch.float32).eps))
        with graph.inserting_before(node):
            qparams = graph.call_function(_q.choose_qparams_per_tensor.default, (x, qmin, qmax, eps, dtype))
            scale = graph.call_function(operator.getitem, (qparams, 0))
            zp = graph.call_function(operator.getitem, (qparams, 1))
            q = graph.call_function(_q.quantize_per_tensor_tensor.default, (x, scale, zp, qmin, qmax, dtype))
        _users_get_own_dq(gm, node, q, _q.dequantize_per_tensor_tensor.default, (scale, zp, qmin, qmax, dtype))
        graph.erase_node(node)
        return
    if not getattr(observer, "is_calibrated", True):
        raise UncalibratedObserverError(
            f"observer '{node.target}' on {getattr(observer, 'node_name', None) or x} has seen no data: run calibration "
            f"batches through the prepared model (prepared(x)) before convert_pt2e"
        )
    scale, zero_point = observer.calculate_qparams()
    qscheme = getattr(observer, "qscheme", torch.per_tensor_affine)
    if qscheme in _PER_CHANNEL:
        axis = int(observer.ch_axis)
        s_name = unique_attr_name(gm, f"{node.target}_scale")
        zp_name = unique_attr_name(gm, f"{node.target}_zero_point")
        set_attr(gm, s_name, scale.detach().float().reshape(-1).clone())
        set_attr(gm, zp_name, zero_point.detach().reshape(-1).to(torch.int64).clone())
        with graph.inserting_before(node):
            s_node, zp_node = graph.get_attr(s_name), graph.get_attr(zp_name)
            q = graph.call_function(_q.quantize_per_channel.default, (x, s_node, zp_node, axis, qmin, qmax, dtype))
        tail: tuple = (s_node, zp_node, axis, qmin, qmax, dtype)
        dq_target = _q.dequantize_per_channel.default
    else:
        tail = (float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]), qmin, qmax, dtype)
        with graph.inserting_before(node):
            q = graph.call_function(_q.quantize_per_tensor.default, (x, *tail))
        dq_target = _q.dequantize_per_tensor.default
    _users_get_own_dq(gm, node, q, dq_target, tail)
    graph.erase_node(node)


def replace_observers(gm: GraphModule) -> int:
    """Replace every observer / fake-quant call with quantize + one dequantize per user; return how many."""
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and is_observer_or_fake_quant(modules.get(str(node.target))):
            _convert_one(gm, node, modules[str(node.target)])
            count += 1
    return count


def fold_quantize_ops(gm: GraphModule) -> int:
    """Quantize constant inputs (weights) now: ``get_attr -> quantize`` becomes ``get_attr(int tensor)``."""
    count = 0
    cache: dict[Node, Any] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _STATIC_QUANTIZE:
            continue
        ok, value = constant_value(gm, node, cache)
        if not ok:
            continue
        base = node.args[0]
        base_name = str(base.target) if isinstance(base, Node) and base.op == "get_attr" else node.name
        name = unique_attr_name(gm, f"{base_name}_quantized")
        set_attr(gm, name, value.detach().clone())
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(name)
        const.meta["val"] = value
        node.replace_all_uses_with(const)
        gm.graph.erase_node(node)
        count += 1
    return count
