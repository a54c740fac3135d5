"""Rewrite quantfx's reference IR into the Q/DQ form ExecuTorch's XNNPACK partitioner matches.

XNNPACK's partitioner recognises ``quantized_decomposed`` quantize / dequantize
ops around float aten ops, with int8 weights stored as constants followed by
a ``dequantize_per_channel`` (the form torchao's ``convert_pt2e`` produces).
quantfx's reference IR has the same structure with its own ops
(``torch.ops.quantfx.*``) and reference modules holding integer weights, so
the rewrite is local:

- ``quantfx.quantize/dequantize_per_tensor`` -> ``quantized_decomposed`` ones;
  uint8 activations become int8 (zero point - 128, exactly the same values),
  since XNNPACK runs signed int8 (QS8);
- reference ``Conv1d/2d``, ``ConvTranspose1d/2d``, ``Linear`` modules ->
  int8 weight constant -> ``dequantize_per_channel`` / ``_per_tensor`` ->
  ``F.conv*d`` / ``F.linear``;
- weight quantize nodes of functional ops are folded into int8 constants;
- other reference modules (embeddings, uint8 / fp16 weights) become float
  modules with the dequantized weight: they run in ExecuTorch's portable
  kernels and show up in the partition report.

The ``quantized_decomposed`` ops are registered by importing torchao (which
executorch depends on); this module never imports ``torch.ao.quantization``.
"""

from __future__ import annotations

import copy
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node

import quantfx.nn.reference as nnqr
from quantfx.errors import LoweringError

__all__ = ["to_qdq", "ensure_quantized_decomposed_ops"]

_q = torch.ops.quantfx


def ensure_quantized_decomposed_ops() -> Any:
    """``torch.ops.quantized_decomposed``, registered through torchao's import (never torch.ao directly)."""
    try:
        return torch.ops.quantized_decomposed.quantize_per_tensor.default and torch.ops.quantized_decomposed
    except (AttributeError, RuntimeError):
        pass
    try:
        import torchao.quantization.pt2e  # noqa: F401  (registers quantized_decomposed)
    except ImportError as exc:
        raise LoweringError(
            "qnnpack target='executorch' needs torchao (it registers the quantized_decomposed ops XNNPACK "
            f"matches): pip install executorch==1.5.1 'torchao==0.18.*' ({exc})"
        ) from exc
    return torch.ops.quantized_decomposed


def _shift(dtype: torch.dtype) -> int:
    return -128 if dtype == torch.uint8 else 0


def _canonical(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """(x, scale, zp, qmin, qmax, dtype) with uint8 turned into the same values in int8."""
    x, scale, zp, qmin, qmax, dtype = args[:6]
    s = _shift(dtype)
    return (x, float(scale), int(zp) + s, int(qmin) + s, int(qmax) + s, torch.int8 if s else dtype)


def _register(gm: GraphModule, prefix: str, value: torch.Tensor) -> str:
    name = prefix.replace(".", "_")
    i = 0
    while hasattr(gm, name):
        i += 1
        name = f"{prefix.replace('.', '_')}_{i}"
    gm.register_buffer(name, value)
    return name


def _weight_dq(gm: GraphModule, graph: torch.fx.Graph, ref: nnqr.ReferenceQuantizedModule, prefix: str) -> Node:
    qd = torch.ops.quantized_decomposed
    w = graph.get_attr(_register(gm, f"{prefix}_weight_int8", ref.weight_int.detach().clone()))
    if ref.weight_axis is not None:
        scales = graph.get_attr(_register(gm, f"{prefix}_weight_scales", ref.weight_scale.detach().float().clone()))
        zps = graph.get_attr(_register(gm, f"{prefix}_weight_zero_points", ref.weight_zero_point.detach().long().clone()))
        return graph.call_function(
            qd.dequantize_per_channel.default,
            (w, scales, zps, ref.weight_axis, ref.weight_quant_min, ref.weight_quant_max, torch.int8),
        )
    return graph.call_function(
        qd.dequantize_per_tensor.default,
        (w, float(ref.weight_scale), int(ref.weight_zero_point), ref.weight_quant_min, ref.weight_quant_max, torch.int8),
    )


_CONV_F = {nnqr.Conv1d: F.conv1d, nnqr.Conv2d: F.conv2d, nnqr.ConvTranspose1d: F.conv_transpose1d, nnqr.ConvTranspose2d: F.conv_transpose2d}


def _lowerable_weight(ref: nn.Module) -> bool:
    if type(ref) not in (*_CONV_F, nnqr.Linear) or ref.weight_dtype != torch.int8:
        return False
    return not (type(ref) in _CONV_F and (ref.padding_mode != "zeros" or isinstance(ref.padding, str)))


def _float_weight(self: nn.Module) -> torch.Tensor:
    return self.weight_float


def _float_module(ref: nn.Module) -> nn.Module:
    """The reference module computing on its dequantized weight, stored once as a float buffer."""
    m = copy.deepcopy(ref)
    m.register_buffer("weight_float", ref.get_weight().detach().float().clone())
    m.get_weight = types.MethodType(_float_weight, m)
    return m


def to_qdq(reference_model: GraphModule) -> tuple[GraphModule, list[tuple[str, str]]]:
    """A copy of ``reference_model`` in ``quantized_decomposed`` Q/DQ form; also (node, why) for modules left float."""
    qd = ensure_quantized_decomposed_ops()
    gm = copy.deepcopy(reference_model)
    graph = gm.graph
    modules = dict(gm.named_modules())
    left_float: list[tuple[str, str]] = []
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (_q.quantize_per_tensor.default, _q.dequantize_per_tensor.default):
            is_q = node.target == _q.quantize_per_tensor.default
            if is_q and isinstance(node.args[0], Node) and node.args[0].op == "get_attr":
                _fold(gm, node)
                continue
            new_args = _canonical(node.args) if node.args[5] in (torch.uint8, torch.int8) else tuple(node.args)
            node.target = qd.quantize_per_tensor.default if is_q else qd.dequantize_per_tensor.default
            node.args = new_args
        elif node.op == "call_function" and node.target in (_q.quantize_per_channel.default, _q.dequantize_per_channel.default):
            if node.target == _q.quantize_per_channel.default:
                if isinstance(node.args[0], Node) and node.args[0].op == "get_attr":
                    _fold(gm, node)
                    continue
                node.target = qd.quantize_per_channel.default
            else:
                node.target = qd.dequantize_per_channel.default
        elif node.op == "call_function" and node.target == _q.choose_qparams_per_tensor.default:
            node.target = qd.choose_qparams.tensor
        elif node.op == "call_function" and node.target == _q.quantize_per_tensor_tensor.default:
            node.target = qd.quantize_per_tensor.tensor
        elif node.op == "call_function" and node.target == _q.dequantize_per_tensor_tensor.default:
            node.target = qd.dequantize_per_tensor.tensor
        elif node.op == "call_module" and type(modules.get(node.target)).__module__.startswith("quantfx.nn.reference"):
            ref = modules[node.target]
            prefix = node.target
            if _lowerable_weight(ref):
                with graph.inserting_before(node):
                    w = _weight_dq(gm, graph, ref, prefix)
                    bias = None
                    if getattr(ref, "bias", None) is not None:
                        bias = graph.get_attr(_register(gm, f"{prefix}_bias", ref.bias.detach().float().clone()))
                    x = node.args[0]
                    if isinstance(ref, nnqr.Linear):
                        new = graph.call_function(F.linear, (x, w, bias))
                    elif ref.transposed:
                        new = graph.call_function(
                            _CONV_F[type(ref)],
                            (x, w, bias, tuple(ref.stride), tuple(ref.padding), tuple(ref.output_padding), ref.groups, tuple(ref.dilation)),
                        )
                    else:
                        new = graph.call_function(
                            _CONV_F[type(ref)], (x, w, bias, tuple(ref.stride), tuple(ref.padding), tuple(ref.dilation), ref.groups)
                        )
                new.name  # noqa: B018
                node.replace_all_uses_with(new)
                graph.erase_node(node)
            else:
                # keep the call, but on a float module: quantfx's reference ops have no ExecuTorch kernels
                _set_submodule(gm, node.target, _float_module(ref))
                left_float.append((node.name, f"{type(ref).__name__} with {ref.weight_dtype} weights runs in float (no XNNPACK int8 form)"))
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    graph.lint()
    gm.recompile()
    leftover = [n.name for n in graph.nodes if n.op == "call_function" and str(getattr(n.target, "namespace", "")) == "quantfx"]
    if leftover:
        raise LoweringError(f"qnnpack/executorch: quantfx ops without an ExecuTorch equivalent remain at nodes {leftover}")
    return gm, left_float


def _fold(gm: GraphModule, node: Node) -> None:
    """A quantize of a constant weight becomes the int8 constant itself (as torchao's fold_quantize)."""
    attr = node.args[0]
    const = _get_attr(gm, attr.target)
    args = [(_get_attr(gm, a.target) if isinstance(a, Node) and a.op == "get_attr" else a) for a in node.args]
    args[0] = const
    value = node.target(*args)
    graph = gm.graph
    with graph.inserting_before(node):
        new = graph.get_attr(_register(gm, f"{attr.target}_int", value.detach()))
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    for user in list(new.users):
        if user.op == "call_function" and user.target == _q.dequantize_per_tensor.default:
            user.target = torch.ops.quantized_decomposed.dequantize_per_tensor.default
        elif user.op == "call_function" and user.target == _q.dequantize_per_channel.default:
            user.target = torch.ops.quantized_decomposed.dequantize_per_channel.default


def _get_attr(gm: GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_submodule(gm: nn.Module, target: str, module: nn.Module) -> None:
    parent = gm
    *path, last = target.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, last, module)
