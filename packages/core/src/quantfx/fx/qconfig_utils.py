"""Per-node qconfig resolution and qconfig/BackendConfig compatibility checks.

Precedence follows the seed system (torch.ao FX): for a module node,
module_name_object_type_order > module_name (or closest ancestor) > regex >
object_type > global; a function or method node first takes its object type,
then its enclosing module's type / name / regex, then the
(module_path, function, call index) order entry.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping

import torch
from torch.fx import GraphModule, Node

from ..dtypes import normalize_dtype

__all__ = ["resolve_node_qconfigs", "instantiate", "dtype_config_mismatch", "apply_constraints", "is_fused_module"]


def is_fused_module(module: torch.nn.Module) -> bool:
    """quantfx.nn.intrinsic fused float modules (ConvReLU2d, ConvBn2d, ...)."""
    return isinstance(module, torch.nn.Sequential) and type(module).__module__.startswith("quantfx.nn.intrinsic")


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def resolve_node_qconfigs(
    gm: GraphModule, qconfig_mapping: Any, node_name_to_scope: Mapping[str, tuple[str, type]]
) -> dict[str, Any]:
    """Return {node name: qconfig or None} for every node of ``gm``."""
    modules = dict(gm.named_modules())
    order_counters: dict[str, dict[Any, int]] = defaultdict(lambda: defaultdict(int))
    result: dict[str, Any] = {}
    for node in gm.graph.nodes:
        qconfig = None
        if node.op == "call_module":
            module = modules[node.target]
            fallback = tuple(type(m) for m in module) if is_fused_module(module) else ()
            parent = _parent(node.target)
            idx = order_counters[parent][type(module)]
            order_counters[parent][type(module)] += 1
            qconfig = qconfig_mapping.qconfig_for(node.target, type(module), idx, fallback_object_types=fallback)
        elif node.op in ("call_function", "call_method"):
            module_path, module_type = node_name_to_scope.get(node.name, ("", type(gm)))
            idx = None
            if node.op == "call_function":
                idx = order_counters[module_path][node.target]
                order_counters[module_path][node.target] += 1
            qconfig = qconfig_mapping.qconfig_for(module_path, node.target, idx, enclosing_module_type=module_type)
        result[node.name] = qconfig
    return result


def instantiate(ctor: Any) -> Any:
    return ctor() if ctor is not None else None


def _dtype_of(obs: Any) -> torch.dtype | None:
    return normalize_dtype(getattr(obs, "dtype", None)) if obs is not None else None


def _check_constraints(obs: Any, constraints: Any, what: str) -> str | None:
    """Range constraints reject (the kernels cannot take that range); scale minimum is enforced later."""
    if constraints is None or obs is None:
        return None
    qmin, qmax = getattr(obs, "quant_min", None), getattr(obs, "quant_max", None)
    lo, hi = constraints.quant_min_lower_bound, constraints.quant_max_upper_bound
    if lo is not None and qmin is not None and qmin < lo:
        return f"{what} quant_min {qmin} is below the backend's lower bound {lo}"
    if hi is not None and qmax is not None and qmax > hi:
        return f"{what} quant_max {qmax} is above the backend's upper bound {hi}"
    if constraints.scale_exact_match is None and constraints.zero_point_exact_match is not None:
        # A zero point alone (XNNPACK: int8 weights with zero point 0) is met by a symmetric
        # observer, whose zero point is fixed by its dtype whatever the data.
        qscheme = getattr(obs, "qscheme", None)
        if qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric):
            dtype = _dtype_of(obs)
            sym_zp = 0 if dtype in (torch.int8, torch.int16, torch.int32) else (int(obs.quant_min) + int(obs.quant_max) + 1) // 2
            if sym_zp != constraints.zero_point_exact_match:
                return f"{what} zero point of symmetric {dtype} is {sym_zp}, the backend requires {constraints.zero_point_exact_match}"
            return None
        if getattr(obs, "zero_point", None) is None:
            return (
                f"{what} must have zero point {constraints.zero_point_exact_match}, but its qscheme {qscheme} computes "
                f"the zero point from the data; use a symmetric observer (qscheme=torch.per_tensor_symmetric or "
                f"torch.per_channel_symmetric with a signed dtype)"
            )
    if constraints.scale_exact_match is not None or constraints.zero_point_exact_match is not None:
        scale = getattr(obs, "scale", None)
        zp = getattr(obs, "zero_point", None)
        if scale is None or zp is None:
            return f"{what} must have fixed qparams (scale {constraints.scale_exact_match}, zero point {constraints.zero_point_exact_match}); use a FixedQParamsObserver / FixedQParamsFakeQuantize"
        if constraints.scale_exact_match is not None and abs(float(scale) - constraints.scale_exact_match) > 1e-9:
            return f"{what} fixed scale {float(scale)} != required {constraints.scale_exact_match}"
        if constraints.zero_point_exact_match is not None and int(zp) != constraints.zero_point_exact_match:
            return f"{what} fixed zero point {int(zp)} != required {constraints.zero_point_exact_match}"
    return None


def dtype_config_mismatch(act: Any, weight: Any, dtype_config: Any, needs_weight: bool) -> str | None:
    """Why ``dtype_config`` cannot serve a qconfig with these observer instances (None: it can)."""
    act_dtype = _dtype_of(act) or torch.float32
    act_dynamic = bool(getattr(act, "is_dynamic", False))
    dc_dynamic = bool(dtype_config.is_dynamic)
    in_dtype = normalize_dtype(dtype_config.input_dtype)
    if in_dtype is not None and act_dtype != in_dtype:
        return f"activation dtype {act_dtype} (backend supports {in_dtype})"
    if act_dynamic != dc_dynamic and act_dtype not in (torch.float32, torch.float):
        return "dynamic quantization" if act_dynamic else "static quantization"
    reason = _check_constraints(act, getattr(dtype_config, "input_dtype_with_constraints", None), "activation")
    if reason:
        return reason
    if not dc_dynamic:
        reason = _check_constraints(act, getattr(dtype_config, "output_dtype_with_constraints", None), "output")
        if reason:
            return reason
    w_dtype = normalize_dtype(dtype_config.weight_dtype)
    if needs_weight and w_dtype is not None:
        if weight is None:
            return f"no weight observer (backend needs {w_dtype} weights)"
        if _dtype_of(weight) != w_dtype:
            return f"weight dtype {_dtype_of(weight)} (backend supports {w_dtype})"
        reason = _check_constraints(weight, getattr(dtype_config, "weight_dtype_with_constraints", None), "weight")
        if reason:
            return reason
    return None


def apply_constraints(obs: Any, constraints: Any) -> Any:
    """Make an observer honour the backend's minimum scale (e.g. XNNPACK's 2**-12).

    A scale below the kernels' minimum would be rejected at run time; raising the
    observer's ``eps`` clamps the computed scale instead, so prepare yields a model
    the backend accepts.
    """
    if constraints is None or obs is None or constraints.scale_min_lower_bound is None:
        return obs
    target = getattr(obs, "activation_post_process", obs)
    bound = float(constraints.scale_min_lower_bound)
    eps = getattr(target, "eps", None)
    if isinstance(eps, torch.Tensor):
        if float(eps.max()) < bound:
            eps.fill_(bound)
    elif eps is None or float(eps) < bound:
        target.eps = bound
    return obs
