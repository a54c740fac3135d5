"""Bring ``convert_pt2e`` output into the FX front door's reference IR form, so one lowering serves both.

``convert_pt2e`` leaves aten operators between quantfx quantize / dequantize
ops, with weights as ``get_attr(int8) -> dequantize``. A backend's ``lower``
is written against ``convert_to_reference_fx`` output: ``quantfx.nn.reference``
modules for weighted ops and torch functions (``F.relu``, ``torch.add`` ...)
for the rest. :func:`normalize_pt2e_reference` rewrites:

- ``aten.linear`` / ``aten.conv1d|2d|3d`` (incl. ``padding="same"``) /
  ``aten.conv_transpose1d|2d|3d`` whose weight is a dequantized integer
  constant -> ``call_module`` of ``quantfx.nn.reference.Linear`` /
  ``ConvNd`` / ``ConvTransposeNd`` holding that integer weight (bit-identical);
  one module per distinct weight, so a layer called twice stays one module;
- the aten ops in ``ATEN_TO_TORCH`` -> the torch function the FX tracer
  records (same numerics);
- drops export's ``_guards_fn`` input-shape check.

Everything else (aten ops without an entry, float weights) is left as it is:
it still runs, and a lowering sees it as a float op between dequantize and
quantize. ``quantfx.api.lower`` applies this pass to ``convert_pt2e`` output
automatically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

import quantfx.ops  # noqa: F401  (registers torch.ops.quantfx.*)
from quantfx.pt2e.capture import CONVERTED_KEY, PREPARED_KEY, node_name_to_scope
from quantfx.pt2e.graph_utils import (
    constant_value,
    deepcopy_module,
    get_attr_value,
    unique_attr_name,
)
from quantfx.quantizer.annotators import CONV_OPS, CONV_TRANSPOSE_OPS, LINEAR_OPS
from quantfx.quantizer.utils import module_path

__all__ = ["normalize_pt2e_reference", "as_fx_reference", "ATEN_TO_TORCH", "NORMALIZED_KEY", "drop_unused_attributes"]

#: ``gm.meta`` key marking a graph already normalized.
NORMALIZED_KEY = "quantfx_pt2e_normalized"

aten = torch.ops.aten
_q = torch.ops.quantfx


def _same(fn: Callable) -> Callable[[tuple, dict], tuple[Callable, tuple, dict]]:
    return lambda args, kwargs: (fn, args, kwargs)


def _batch_norm(args: tuple, kwargs: dict) -> tuple[Callable, tuple, dict]:
    # aten: (input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
    a = list(args) + [None] * (9 - len(args))
    return F.batch_norm, (a[0], a[3], a[4], a[1], a[2], a[5], a[6], a[7]), {}


def _layer_norm(args: tuple, kwargs: dict) -> tuple[Callable, tuple, dict]:
    return F.layer_norm, tuple(args[:5]), {}


def _softmax(args: tuple, kwargs: dict) -> tuple[Callable, tuple, dict]:
    dtype = args[2] if len(args) > 2 else kwargs.get("dtype")
    return F.softmax, (args[0], args[1]), ({"dtype": dtype} if dtype is not None else {})


def _relu(args: tuple, kwargs: dict) -> tuple[Callable, tuple, dict]:
    return F.relu, (args[0],), {}


#: aten overload -> rewrite ``(args, kwargs) -> (torch function, args, kwargs)`` with identical numerics.
ATEN_TO_TORCH: dict[Any, Callable[[tuple, dict], tuple[Callable, tuple, dict]]] = {
    aten.relu.default: _relu,
    aten.hardtanh.default: _same(F.hardtanh),
    aten.sigmoid.default: _same(torch.sigmoid),
    aten.tanh.default: _same(torch.tanh),
    aten.hardsigmoid.default: _same(F.hardsigmoid),
    aten.hardswish.default: _same(F.hardswish),
    aten.silu.default: _same(F.silu),
    aten.gelu.default: _same(F.gelu),
    aten.add.Tensor: _same(torch.add),
    aten.sub.Tensor: _same(torch.sub),
    aten.mul.Tensor: _same(torch.mul),
    aten.div.Tensor: _same(torch.div),
    aten.matmul.default: _same(torch.matmul),
    aten.bmm.default: _same(torch.bmm),
    aten.cat.default: _same(torch.cat),
    aten.flatten.using_ints: _same(torch.flatten),
    aten.reshape.default: _same(torch.reshape),
    aten.transpose.int: _same(torch.transpose),
    aten.permute.default: _same(torch.permute),
    aten.squeeze.dim: _same(torch.squeeze),
    aten.unsqueeze.default: _same(torch.unsqueeze),
    aten.mean.dim: _same(torch.mean),
    aten.mean.default: _same(torch.mean),
    aten.clamp.default: _same(torch.clamp),
    aten.adaptive_avg_pool1d.default: _same(F.adaptive_avg_pool1d),
    aten.adaptive_avg_pool2d.default: _same(F.adaptive_avg_pool2d),
    aten.adaptive_avg_pool3d.default: _same(F.adaptive_avg_pool3d),
    aten.avg_pool1d.default: _same(F.avg_pool1d),
    aten.avg_pool2d.default: _same(F.avg_pool2d),
    aten.avg_pool3d.default: _same(F.avg_pool3d),
    aten.max_pool1d.default: _same(F.max_pool1d),
    aten.max_pool2d.default: _same(F.max_pool2d),
    aten.max_pool3d.default: _same(F.max_pool3d),
    aten.pad.default: _same(F.pad),
    aten.dropout.default: _same(F.dropout),
    aten.softmax.int: _softmax,
    aten.layer_norm.default: _layer_norm,
    aten.batch_norm.default: _batch_norm,
    aten.linear.default: _same(F.linear),
    aten.conv1d.default: _same(F.conv1d),
    aten.conv2d.default: _same(F.conv2d),
    aten.conv3d.default: _same(F.conv3d),
}

_DQ_WEIGHT = (_q.dequantize_per_tensor.default, _q.dequantize_per_channel.default)


def _int_weight(gm: GraphModule, dq: Any) -> tuple[torch.Tensor, Any, Node] | None:
    """(integer weight, WeightQParams, its get_attr node) if ``dq`` dequantizes an integer constant."""
    from quantfx.nn.reference.qparams import WeightQParams

    if not isinstance(dq, Node) or dq.op != "call_function" or dq.target not in _DQ_WEIGHT:
        return None
    src = dq.args[0]
    if not isinstance(src, Node) or src.op != "get_attr":
        return None
    weight = get_attr_value(gm, str(src.target))
    ok, rest = constant_value(gm, tuple(dq.args[1:]))
    if not ok or not isinstance(weight, torch.Tensor) or weight.is_floating_point():
        return None
    if dq.target is _q.dequantize_per_channel.default:
        scales, zps, axis, qmin, qmax, dtype = rest
        symmetric = bool(torch.all(zps == 0))
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        qp = WeightQParams(qscheme, dtype, scales, zps, axis % weight.dim(), qmin, qmax)
    else:
        scale, zp, qmin, qmax, dtype = rest
        qscheme = torch.per_tensor_symmetric if int(zp) == 0 else torch.per_tensor_affine
        qp = WeightQParams(qscheme, dtype, float(scale), int(zp), None, qmin, qmax)
    return weight, qp, src


def _float_bias(gm: GraphModule, bias: Any) -> tuple[bool, torch.Tensor | None]:
    if bias is None:
        return True, None
    ok, value = constant_value(gm, bias)
    if not ok or not isinstance(value, torch.Tensor):
        return False, None
    return True, value.detach().float()


def _pair_args(args: tuple, defaults: list[Any]) -> list[Any]:
    return list(args) + defaults[len(args):]


def _reference_module(node: Node, weight_int: torch.Tensor, qp: Any, bias: torch.Tensor | None) -> torch.nn.Module | None:
    import quantfx.nn.reference as ref
    from quantfx.nn.reference.modules import dequantize_weight

    w = dequantize_weight(weight_int, qp)
    if node.target in LINEAR_OPS:
        module: torch.nn.Module = ref.Linear(w.shape[1], w.shape[0], bias is not None, qp, weight=w)
    elif node.target in CONV_OPS:
        cls = {3: ref.Conv1d, 4: ref.Conv2d, 5: ref.Conv3d}[w.dim()]
        _, _, _, stride, padding, dilation, groups = _pair_args(node.args, [None, None, None, 1, 0, 1, 1])
        module = cls(
            w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride, padding, dilation, groups,
            bias is not None, "zeros", qp, weight=w,
        )
    elif node.target in CONV_TRANSPOSE_OPS:
        cls = {3: ref.ConvTranspose1d, 4: ref.ConvTranspose2d, 5: ref.ConvTranspose3d}[w.dim()]
        _, _, _, stride, padding, output_padding, groups, dilation = _pair_args(node.args, [None, None, None, 1, 0, 0, 1, 1])
        module = cls(
            w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), stride, padding, dilation, groups,
            bias is not None, "zeros", qp, weight=w, output_padding=output_padding,
        )
    else:
        return None
    # the stored integers are the ones the PT2E graph used, not a re-quantization
    module.weight_int.copy_(weight_int)
    if bias is not None:
        module.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
    return module


def _weighted_to_modules(gm: GraphModule) -> int:
    made: dict[tuple, str] = {}
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in LINEAR_OPS | CONV_OPS | CONV_TRANSPOSE_OPS:
            continue
        if node.kwargs or len(node.args) < 2:
            continue
        found = _int_weight(gm, node.args[1])
        if found is None:
            continue
        weight_int, qp, src = found
        bias_node = node.args[2] if len(node.args) > 2 else None
        ok, bias = _float_bias(gm, bias_node)
        if not ok:
            continue
        key = (node.target, str(src.target), getattr(bias_node, "target", None), repr(node.args[3:]), repr(node.args[1].args[1:]))
        name = made.get(key)
        if name is None:
            module = _reference_module(node, weight_int, qp, bias)
            if module is None:
                continue
            name = unique_attr_name(gm, f"_pt2e_ref_{node.name}")
            gm.add_submodule(name, module)
            made[key] = name
            module._quantfx_preferred_name = module_path(node) or node.name  # type: ignore[attr-defined]
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(name, (node.args[0],))
        call.meta.update({k: v for k, v in node.meta.items() if k in ("val", "tensor_meta", "nn_module_stack", "stack_trace")})
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        count += 1
    return count


def _rename_modules(gm: GraphModule) -> None:
    """Give each new reference module its source module's path (``stage1.first.conv``) once that path is free."""
    for node in gm.graph.nodes:
        if node.op != "call_module" or not str(node.target).startswith("_pt2e_ref_"):
            continue
        old = str(node.target)
        module = gm.get_submodule(old) if hasattr(gm, old) else None
        if module is None:  # already moved (a module called twice): follow it
            node.target = getattr(node, "_quantfx_new_target", old)
            continue
        preferred = getattr(module, "_quantfx_preferred_name", old)
        target = preferred
        try:
            gm.get_submodule(target)
            taken = True
        except AttributeError:
            taken = False
        if taken or "." in target and _blocked(gm, target):
            target = unique_attr_name(gm, preferred)
        del module._quantfx_preferred_name
        delattr(gm, old)
        gm.add_submodule(target, module)
        for other in gm.graph.nodes:
            if other.op == "call_module" and other.target == old:
                other.target = target
                other._rename(target.replace(".", "_"))  # named after the module, as the FX tracer does


def _blocked(gm: GraphModule, path: str) -> bool:
    """True if a prefix of ``path`` is an attribute that is not a module (cannot hold a submodule)."""
    obj: Any = gm
    for part in path.split(".")[:-1]:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
        if not isinstance(obj, torch.nn.Module):
            return True
    return False


def _aten_to_torch(gm: GraphModule) -> int:
    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in ATEN_TO_TORCH:
            continue
        fn, args, kwargs = ATEN_TO_TORCH[node.target](tuple(node.args), dict(node.kwargs))
        node.target, node.args, node.kwargs = fn, args, kwargs
        count += 1
    return count


def _drop_guards(gm: GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards_fn") and not node.users:
            gm.graph.erase_node(node)


def drop_unused_attributes(gm: GraphModule) -> None:
    """Delete parameters / buffers no ``get_attr`` or ``call_module`` reads (float weights replaced by int8 ones)."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}

    def inside_called(name: str) -> bool:
        return any(name == c or name.startswith(c + ".") for c in called)

    for name, _ in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False)):
        if name in used or inside_called(name):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = gm.get_submodule(parent_name) if parent_name else gm
        if attr in parent._parameters:
            del parent._parameters[attr]
        elif attr in parent._buffers:
            del parent._buffers[attr]


def normalize_pt2e_reference(
    model: GraphModule, example_inputs: tuple[Any, ...] | None = None, *, inplace: bool = False
) -> GraphModule:
    """``convert_pt2e`` output -> the FX front door's reference IR form (see the module docstring).

    Returns a new GraphModule (``model`` is left as it is unless ``inplace``)
    computing bit-identical outputs. ``example_inputs`` are recorded for
    lowerings that re-export (``quantfx.fx.state.get_state(gm).example_inputs``).
    """
    from quantfx.fx.state import PreparedState, set_state

    gm = model if inplace else deepcopy_module(model)
    _weighted_to_modules(gm)
    _aten_to_torch(gm)
    _drop_guards(gm)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    drop_unused_attributes(gm)
    _rename_modules(gm)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    info = gm.meta.get(PREPARED_KEY, {}) if isinstance(gm.meta.get(PREPARED_KEY), dict) else {}
    set_state(
        gm,
        PreparedState(
            backend=info.get("backend") or "reference",
            is_qat=bool(info.get("is_qat", False)),
            qconfig_mapping=None,
            prepare_custom_config=None,
            backend_config=None,
            node_name_to_scope=node_name_to_scope(gm),
            example_inputs=tuple(example_inputs) if example_inputs is not None else (),
        ),
    )
    gm.meta[NORMALIZED_KEY] = True
    gm.meta[CONVERTED_KEY] = True
    return gm


def as_fx_reference(model: Any, example_inputs: tuple[Any, ...] | None = None) -> Any:
    """``model`` itself, or its normalized copy when it is ``convert_pt2e`` output (what ``quantfx.api.lower`` calls)."""
    meta = getattr(model, "meta", None)
    if isinstance(model, GraphModule) and isinstance(meta, dict) and meta.get(CONVERTED_KEY) and not meta.get(NORMALIZED_KEY):
        return normalize_pt2e_reference(model, example_inputs)
    return model
