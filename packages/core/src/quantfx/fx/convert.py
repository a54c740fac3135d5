"""convert-to-reference: observers become quantize / dequantize nodes, weighted modules become reference modules.

The result is quantfx's reference IR (see ARCHITECTURE.md): every quantized op
reads ``dequantize -> float op -> quantize``. Backends lower from this form.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.utils.weak import WeakIdKeyDictionary

from ..dtypes import normalize_dtype
from ..errors import QuantfxError, UncalibratedObserverError
from ..observers import is_observer_or_fake_quant
from .prepare import _set_submodule
from .qconfig_utils import is_fused_module, resolve_node_qconfigs
from .state import PreparedState, get_state, set_state

__all__ = ["convert_to_reference", "REFERENCE_KEY"]

REFERENCE_KEY = "quantfx_reference"

_q = torch.ops.quantfx


def _reference_module_map(backend_config: Any) -> dict[type, type]:
    table: dict[type, type] = {}
    for config in backend_config.configs:
        if config.reference_quantized_module is None:
            continue
        if config.root_module is not None:
            table.setdefault(config.root_module, config.reference_quantized_module)
        pattern = config.pattern
        if isinstance(pattern, type):
            table.setdefault(pattern, config.reference_quantized_module)
    return table


def _unique_name(gm: torch.nn.Module, base: str) -> str:
    name, i = base, 0
    while True:
        try:
            gm.get_submodule(name)
        except AttributeError:
            return name
        i += 1
        name = f"{base}_{i}"


def _weight_qparams(observer: Any, node_name: str):
    from ..nn.reference.qparams import WeightQParams

    if getattr(observer, "node_name", None) is None:
        try:
            observer.node_name = f"{node_name}.weight"
        except AttributeError:
            pass
    return WeightQParams.from_observer(observer)


# weight Parameter -> (its _version, the qconfig.weight factory, WeightQParams): bias correction and convert
# both need a layer's weight qparams; computing them is an observer pass over the weight
_WEIGHT_QPARAMS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def weight_qparams_for(weighted: torch.nn.Module, qconfig: Any, target: str) -> Any:
    """The WeightQParams ``qconfig.weight`` gives ``weighted.weight``; computed once per weight and version."""
    weight = weighted.weight
    hit = _WEIGHT_QPARAMS.get(weight)
    if hit is not None and hit[0] == weight._version and hit[1] is qconfig.weight:
        return hit[2]
    observer = qconfig.weight()
    observer.node_name = f"{target}.weight"
    observer(weight.detach())
    qparams = _weight_qparams(observer, target)
    _WEIGHT_QPARAMS[weight] = (weight._version, qconfig.weight, qparams)
    return qparams


def _convert_weighted_module(
    gm: GraphModule, target: str, qconfig: Any, ref_map: dict[type, type]
) -> list[str] | None:
    """Swap the module at ``target`` for its reference module; return the names of its fused tail modules.

    A module with no reference module in the backend config (PReLU, InstanceNorm ...)
    keeps its float weight and runs between dequantize and quantize; returns None.
    """
    module = gm.get_submodule(target)
    weight_observer = None
    if hasattr(module, "weight_fake_quant") and hasattr(module, "to_float"):
        weight_observer = module.weight_fake_quant
        module = module.to_float()
    if is_fused_module(module):
        weighted, tail = module[0], list(module)[1:]
    else:
        weighted, tail = module, []
    ref_cls = ref_map.get(type(weighted))
    if ref_cls is None:
        _set_submodule(gm, target, module)
        return None
    if weight_observer is None:
        qparams = weight_qparams_for(weighted, qconfig, target)
    else:
        qparams = _weight_qparams(weight_observer, target)
    _set_submodule(gm, target, ref_cls.from_float(weighted, qparams))
    tail_names = []
    for sub in tail:
        name = _unique_name(gm, f"{target}_{type(sub).__name__.lower()}")
        gm.add_submodule(name, sub)
        tail_names.append(name)
    return tail_names


def _insert_tail_calls(gm: GraphModule, node: Node, tail_names: list[str]) -> None:
    """Fused activations (conv+relu) become separate nodes after the reference module."""
    last = node
    for name in tail_names:
        with gm.graph.inserting_after(last):
            new = gm.graph.call_module(name, (last,))
        for user in list(last.users):
            if user is not new:
                user.replace_input_with(last, new)
        last = new


def _qparams_args(observer: Any, node: Node, gm: GraphModule) -> tuple[Any, ...] | None:
    """(scale, zero_point[, axis], quant_min, quant_max, dtype) for a static observer, or None if float."""
    dtype = normalize_dtype(getattr(observer, "dtype", None))
    if dtype is None or dtype.is_floating_point:
        return None
    is_calibrated = getattr(observer, "is_calibrated", True)
    if not is_calibrated:
        raise UncalibratedObserverError(
            f"observer '{node.target}' watching node '{getattr(observer, 'node_name', None) or node.args[0]}' has seen "
            "no data: run calibration data through the prepared model (prepared(x) for each batch) before convert"
        )
    scale, zero_point = observer.calculate_qparams()
    qmin, qmax = observer.quant_min, observer.quant_max
    if qmin is None or qmax is None:
        info = torch.iinfo(dtype)
        qmin, qmax = info.min, info.max
    qscheme = getattr(observer, "qscheme", torch.per_tensor_affine)
    if qscheme in (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams):
        base = _unique_name(gm, f"{node.target}_scale")
        gm.register_buffer(base, scale.detach().float().clone())
        zp_name = _unique_name(gm, f"{node.target}_zero_point")
        gm.register_buffer(zp_name, zero_point.detach().clone())
        return ("per_channel", base, zp_name, int(observer.ch_axis), int(qmin), int(qmax), dtype)
    return ("per_tensor", float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]), int(qmin), int(qmax), dtype)


def _insert_dq_for_users(gm: GraphModule, q: Node, obs_node: Node, dq_target: Any, dq_args_tail: tuple, skip_output: bool) -> None:
    for user in list(obs_node.users):
        if user.op == "output" and skip_output:
            user.replace_input_with(obs_node, q)
            continue
        with gm.graph.inserting_before(user):
            dq = gm.graph.call_function(dq_target, (q, *dq_args_tail))
        user.replace_input_with(obs_node, dq)


def _fold_weight(gm: GraphModule, obs_node: Node, qp: tuple) -> None:
    """A functional op's weight (get_attr -> observer) becomes an int constant -> dequantize."""
    weight_node = obs_node.args[0]
    weight = getattr(gm, weight_node.target) if "." not in weight_node.target else gm.get_submodule(
        weight_node.target.rpartition(".")[0]
    ).get_parameter(weight_node.target.rpartition(".")[2])
    int_name = _unique_name(gm, f"{weight_node.target.replace('.', '_')}_int")
    if qp[0] == "per_channel":
        _, s_name, zp_name, axis, qmin, qmax, dtype = qp
        wq = _q.quantize_per_channel(weight.detach(), getattr(gm, s_name), getattr(gm, zp_name), axis, qmin, qmax, dtype)
    else:
        _, scale, zp, qmin, qmax, dtype = qp
        wq = _q.quantize_per_tensor(weight.detach(), scale, zp, qmin, qmax, dtype)
    gm.register_buffer(int_name, wq)
    with gm.graph.inserting_before(obs_node):
        int_node = gm.graph.get_attr(int_name)
        if qp[0] == "per_channel":
            s_node = gm.graph.get_attr(s_name)
            zp_node = gm.graph.get_attr(zp_name)
            dq = gm.graph.call_function(_q.dequantize_per_channel.default, (int_node, s_node, zp_node, axis, qmin, qmax, dtype))
        else:
            dq = gm.graph.call_function(_q.dequantize_per_tensor.default, (int_node, scale, zp, qmin, qmax, dtype))
    obs_node.replace_all_uses_with(dq)
    gm.graph.erase_node(obs_node)


def _convert_observer(gm: GraphModule, obs_node: Node, observer: Any, state: PreparedState, placeholders: list[Node], output_quantized: set[Node]) -> None:
    x = obs_node.args[0]
    dtype = normalize_dtype(getattr(observer, "dtype", None))
    is_dynamic = bool(getattr(observer, "is_dynamic", False))
    graph = gm.graph
    if dtype is None or dtype == torch.float32 or (is_dynamic and dtype.is_floating_point):
        obs_node.replace_all_uses_with(x)
        graph.erase_node(obs_node)
        return
    if dtype == torch.float16:
        with graph.inserting_before(obs_node):
            half = graph.call_method("to", (x, torch.float16))
            back = graph.call_method("to", (half, torch.float32))
        obs_node.replace_all_uses_with(back)
        graph.erase_node(obs_node)
        return
    if is_dynamic:
        qmin, qmax = observer.quant_min, observer.quant_max
        if qmin is None or qmax is None:
            info = torch.iinfo(dtype)
            qmin, qmax = info.min, info.max
        eps = float(getattr(observer, "eps", torch.finfo(torch.float32).eps))
        with graph.inserting_before(obs_node):
            qparams = graph.call_function(_q.choose_qparams_per_tensor.default, (x, int(qmin), int(qmax), eps, dtype))
            scale = graph.call_function(operator.getitem, (qparams, 0))
            zp = graph.call_function(operator.getitem, (qparams, 1))
            q = graph.call_function(_q.quantize_per_tensor_tensor.default, (x, scale, zp, int(qmin), int(qmax), dtype))
        _insert_dq_for_users(gm, q, obs_node, _q.dequantize_per_tensor_tensor.default, (scale, zp, int(qmin), int(qmax), dtype), False)
        graph.erase_node(obs_node)
        return
    qp = _qparams_args(observer, obs_node, gm)
    if isinstance(x, Node) and x.op == "get_attr":
        _fold_weight(gm, obs_node, qp)
        return
    input_is_quantized = isinstance(x, Node) and x.op == "placeholder" and placeholders.index(x) in state.input_quantized_idxs
    if qp[0] == "per_channel":
        _, s_name, zp_name, axis, qmin, qmax, qdtype = qp
        with graph.inserting_before(obs_node):
            s_node, zp_node = graph.get_attr(s_name), graph.get_attr(zp_name)
            q = x if input_is_quantized else graph.call_function(
                _q.quantize_per_channel.default, (x, s_node, zp_node, axis, qmin, qmax, qdtype)
            )
        tail = (s_node, zp_node, axis, qmin, qmax, qdtype)
        dq_target = _q.dequantize_per_channel.default
    else:
        _, scale, zp, qmin, qmax, qdtype = qp
        with graph.inserting_before(obs_node):
            q = x if input_is_quantized else graph.call_function(
                _q.quantize_per_tensor.default, (x, scale, zp, qmin, qmax, qdtype)
            )
        tail = (scale, zp, qmin, qmax, qdtype)
        dq_target = _q.dequantize_per_tensor.default
    _insert_dq_for_users(gm, q, obs_node, dq_target, tail, skip_output=obs_node in output_quantized)
    graph.erase_node(obs_node)


def _apply_convert_time_mapping(gm: GraphModule, state: PreparedState, qconfig_mapping: Any, modules: dict) -> None:
    """A qconfig_mapping at convert may set parts to None: those stay float."""
    new_qconfigs = resolve_node_qconfigs(gm, qconfig_mapping, state.node_name_to_scope)
    now_float = {name for name, q in new_qconfigs.items() if q is None and state.node_qconfigs.get(name) is not None}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.name in now_float:
            state.weighted_module_qconfigs.pop(node.target, None)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not is_observer_or_fake_quant(modules.get(node.target)):
            continue
        producer = node.args[0]
        users = list(node.users)
        produced_by_float = isinstance(producer, Node) and producer.name in now_float
        consumed_by_float = bool(users) and all(u.name in now_float for u in users)
        if produced_by_float or consumed_by_float:
            node.replace_all_uses_with(producer)
            gm.graph.erase_node(node)


def convert_to_reference(
    model: GraphModule,
    convert_custom_config: Any = None,
    qconfig_mapping: Any = None,
    backend_config: Any = None,
    *,
    copy_model: bool = True,
) -> GraphModule:
    """Return the reference quantized model for a prepared (and calibrated / trained) model.

    ``copy_model=False`` converts ``model`` itself instead of a deep copy: for
    callers that own the prepared model (``quantfx.quantize``), saving the copy.
    """
    state = get_state(model)
    if not isinstance(model, GraphModule) or state is None:
        raise QuantfxError(
            f"convert expects the GraphModule returned by prepare_fx / prepare_qat_fx; got {type(model).__name__}. "
            "Call prepare_fx(model, qconfig_mapping, example_inputs) first and calibrate it."
        )
    gm = copy.deepcopy(model) if copy_model else model
    state = copy.copy(get_state(gm))
    state.weighted_module_qconfigs = dict(state.weighted_module_qconfigs)
    if backend_config is None:
        backend_config = state.backend_config
    if backend_config is None:  # dropped by pickling: resolve from the backend's plugin again
        from ..api import get_backend_config

        backend_config = get_backend_config(state.backend)
    modules = dict(gm.named_modules())

    # standalone modules convert on their own
    for target in state.standalone_modules:
        sub = gm.get_submodule(target)
        _set_submodule(gm, target, convert_to_reference(sub))

    custom_map = {}
    if convert_custom_config is not None:
        custom_map = dict(getattr(convert_custom_config, "observed_to_quantized_mapping", {}).get("static", {}) or {})
    for node in gm.graph.nodes:
        if node.op == "call_module" and type(modules.get(node.target)) in custom_map:
            observed = modules[node.target]
            _set_submodule(gm, node.target, custom_map[type(observed)].from_observed(observed))

    if qconfig_mapping is not None:
        _apply_convert_time_mapping(gm, state, qconfig_mapping, modules)

    ref_map = _reference_module_map(backend_config)
    tails: dict[str, list[str] | None] = {}
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target in state.weighted_module_qconfigs:
            if node.target not in tails:  # a module called twice converts once
                tails[node.target] = _convert_weighted_module(
                    gm, node.target, state.weighted_module_qconfigs[node.target], ref_map
                )
            if tails[node.target]:
                _insert_tail_calls(gm, node, tails[node.target])

    modules = dict(gm.named_modules())
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    output_node = next(n for n in gm.graph.nodes if n.op == "output")
    out_args = output_node.args[0]
    flat_out = list(out_args) if isinstance(out_args, (list, tuple)) else [out_args]
    output_quantized = {flat_out[i] for i in state.output_quantized_idxs if i < len(flat_out)}

    # convert each observer *call*; an observer module shared by several calls converts once per call
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and is_observer_or_fake_quant(modules.get(node.target)):
            _convert_observer(gm, node, modules[node.target], state, placeholders, output_quantized)

    # QAT fake-quants left inside float modules (e.g. unquantized QAT weights) are not observers in the graph
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    set_state(gm, state)
    gm.meta[REFERENCE_KEY] = True
    return gm
