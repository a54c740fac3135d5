"""The prepare pass: insert observers (PTQ) or fake-quants (QAT) where the BackendConfig says.

Steps, each a small function below:

1. resolve a qconfig per node (``qconfig_utils.resolve_node_qconfigs``);
2. match the BackendConfig's patterns (longest first, from the graph's end);
3. per match, pick the first ``DTypeConfig`` the qconfig satisfies, or keep
   the match in float with an :class:`UnsupportedQConfigWarning` naming the node;
4. (QAT) swap weighted modules for their QAT modules;
5. insert input / output observers by ``ObservationType``; ops that keep their
   input's qparams (maxpool, flatten, cat, ...) share one observer instance.

Observers are ``call_module`` nodes named ``activation_post_process_<i>``; each
observer's ``node_name`` is the node whose output it observes, so calibration
errors name that node.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch.fx import GraphModule, Node
from torch.fx.passes.shape_prop import ShapeProp

from ..backend_config import BackendConfig, BackendPatternConfig, ObservationType
from ..errors import ExampleInputsError, UnsupportedQConfigWarning
from ..observers import is_observer_or_fake_quant
from .match import PatternIndex, match_chain, normalize_pattern, pattern_to_str
from .qconfig_utils import apply_constraints, dtype_config_mismatch, instantiate, is_fused_module, resolve_node_qconfigs
from .state import PreparedState, set_state

__all__ = ["prepare", "Match", "OBSERVER_PREFIX"]

OBSERVER_PREFIX = "activation_post_process_"


@dataclass
class Match:
    """One occurrence of a backend pattern in the graph, and how it will be quantized."""

    nodes: list[Node]
    config: BackendPatternConfig
    qconfig: Any = None
    dtype_config: Any = None

    @property
    def first(self) -> Node:
        return self.nodes[0]

    @property
    def last(self) -> Node:
        return self.nodes[-1]

    @property
    def mode(self) -> str:
        dc = self.dtype_config
        if dc is None:
            return "float"
        if dc.is_dynamic:
            return "dynamic"
        in_dtype = dc.input_dtype
        if in_dtype is None or in_dtype in (torch.float32, torch.float):
            return "weight_only" if dc.weight_dtype is not None else "float"
        if in_dtype == torch.float16:
            return "fp16"
        return "static"


# ---------------------------------------------------------------------------
# helpers


def _is_float_tensor(node: Any) -> bool:
    if not isinstance(node, Node):
        return False
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "dtype"):
        return False
    return meta.dtype.is_floating_point


def _weight_arg_indices(config: BackendPatternConfig) -> set[int]:
    table = getattr(config, "_input_type_to_index", None) or {}
    return {int(v) for v in table.values()}


def _is_weighted_module(module: torch.nn.Module) -> bool:
    target = module[0] if is_fused_module(module) else module
    return isinstance(getattr(target, "weight", None), torch.Tensor) and not isinstance(
        target, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.LayerNorm, torch.nn.GroupNorm)
    )


def _activation_inputs(node: Node, config: BackendPatternConfig) -> list[Node]:
    """Float tensor inputs of a pattern's first node that carry activations (not weights / bias)."""
    skip = _weight_arg_indices(config)
    found: list[Node] = []
    for i, arg in enumerate(node.args):
        if i in skip:
            continue
        items = arg if isinstance(arg, (list, tuple)) else [arg]
        for item in items:
            if _is_float_tensor(item) and item not in found:
                found.append(item)
    for key, arg in node.kwargs.items():
        if key in ("weight", "bias"):
            continue
        if _is_float_tensor(arg) and arg not in found:
            found.append(arg)
    return found


def _run_shape_prop(gm: GraphModule, example_inputs: tuple, model_name: str) -> None:
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as exc:  # the model itself raised: say so with the inputs we were given
        shapes = ", ".join(
            f"{tuple(x.shape)}:{x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__ for x in example_inputs
        )
        raise ExampleInputsError(
            f"example_inputs do not run {model_name}: calling it with ({shapes}) raised "
            f"{type(exc).__name__}: {exc}. example_inputs must be a tuple of the positional "
            "arguments of forward(), e.g. (torch.randn(1, 3, 224, 224),)."
        ) from exc


# ---------------------------------------------------------------------------
# matching


def _find_matches(gm: GraphModule, backend_config: BackendConfig) -> dict[Node, Match]:
    modules = dict(gm.named_modules())
    configs = sorted(
        (c for c in backend_config.configs if c.pattern is not None),
        key=lambda c: -len(normalize_pattern(c.pattern)),
    )
    index = PatternIndex(configs, lambda c: c.pattern)
    node_to_match: dict[Node, Match] = {}
    for node in reversed(list(gm.graph.nodes)):
        if node in node_to_match or node.op not in ("call_module", "call_function", "call_method"):
            continue
        for config in index.candidates(node, modules):
            nodes = match_chain(node, config.pattern, modules)
            if nodes is None or any(n in node_to_match for n in nodes):
                continue
            match = Match(nodes=nodes, config=config)
            for n in nodes:
                node_to_match[n] = match
            break
    return node_to_match


def _choose_dtype_config(match: Match, qconfig: Any, modules: Mapping[str, torch.nn.Module]) -> tuple[Any, str | None]:
    """Return (dtype_config, None) or (None, reason the qconfig is not supported here)."""
    act = instantiate(qconfig.activation)
    weight = instantiate(qconfig.weight)
    first = match.first
    needs_weight = bool(_weight_arg_indices(match.config)) or (
        first.op == "call_module" and _is_weighted_module(modules[first.target])
    )
    reasons = []
    for dc in match.config.dtype_configs:
        reason = dtype_config_mismatch(act, weight, dc, needs_weight)
        if reason is None:
            return dc, None
        reasons.append(reason)
    if not reasons:
        return None, "the backend declares no dtype config for this pattern"
    return None, "; ".join(dict.fromkeys(reasons))


# ---------------------------------------------------------------------------
# observer insertion


class _Inserter:
    def __init__(self, gm: GraphModule):
        self.gm = gm
        self.count = 0
        self.observed_by: dict[Node, Node] = {}  # observer node -> node it observes

    def new_observer(self, obs: torch.nn.Module, observed: Node, after: Node, users_of: Node | None = None) -> Node:
        name = f"{OBSERVER_PREFIX}{self.count}"
        self.count += 1
        obs.node_name = observed.name
        self.gm.add_submodule(name, obs)
        with self.gm.graph.inserting_after(after):
            obs_node = self.gm.graph.call_module(name, (after,))
        obs_node.meta["tensor_meta"] = after.meta.get("tensor_meta")
        self.observed_by[obs_node] = observed
        return obs_node

    def reuse_observer(self, target: str, observed: Node, after: Node) -> Node:
        """Call an existing observer module again (ops that share their input's qparams)."""
        with self.gm.graph.inserting_after(after):
            obs_node = self.gm.graph.call_module(target, (after,))
        obs_node.meta["tensor_meta"] = after.meta.get("tensor_meta")
        self.observed_by[obs_node] = observed
        return obs_node


def _is_observer_node(node: Any, modules: Mapping[str, torch.nn.Module]) -> bool:
    return (
        isinstance(node, Node)
        and node.op == "call_module"
        and isinstance(node.target, str)
        and is_observer_or_fake_quant(modules.get(node.target))
    )


def _observer_dtype(node: Node, modules: Mapping[str, torch.nn.Module]) -> Any:
    from ..dtypes import normalize_dtype

    obs = modules[node.target]
    return normalize_dtype(getattr(obs, "dtype", None)), bool(getattr(obs, "is_dynamic", False))


def _observe_input(
    ins: _Inserter, match: Match, arg: Node, ctor: Any, constraints: Any, modules: dict[str, torch.nn.Module]
) -> Node:
    """Make the pattern's first node read an observed version of ``arg``; return the observer node."""
    want = instantiate(ctor)
    apply_constraints(want, constraints)
    from ..dtypes import normalize_dtype

    want_key = (normalize_dtype(getattr(want, "dtype", None)), bool(getattr(want, "is_dynamic", False)))
    if _is_observer_node(arg, modules) and _observer_dtype(arg, modules) == want_key:
        return arg  # produced already observed with the dtype we need
    # another consumer of ``arg`` may already have an input observer of the same kind: reuse it
    for user in list(arg.users):
        if user is not match.first and _is_observer_node(user, modules) and _observer_dtype(user, modules) == want_key:
            match.first.replace_input_with(arg, user)
            return user
    obs_node = ins.new_observer(want, observed=arg, after=arg)
    modules[obs_node.target] = want
    match.first.replace_input_with(arg, obs_node)
    return obs_node


def _observe_output(ins: _Inserter, node: Node, obs_node_factory) -> Node:
    users = [u for u in node.users]
    obs_node = obs_node_factory()
    for user in users:
        if user is not obs_node:
            user.replace_input_with(node, obs_node)
    return obs_node


def _insert_observers(
    gm: GraphModule,
    matches: Iterable[Match],
    modules: dict[str, torch.nn.Module],
    input_quantized_idxs: list[int],
    output_quantized_idxs: list[int],
) -> None:
    ins = _Inserter(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for idx in input_quantized_idxs:
        # the caller feeds this input already quantized: observe it so convert knows its qparams
        node = placeholders[idx]
        from ..observers import default_observer

        obs = default_observer()
        obs_node = ins.new_observer(obs, observed=node, after=node)
        modules[obs_node.target] = obs
        for user in [u for u in node.users if u is not obs_node]:
            user.replace_input_with(node, obs_node)

    for match in matches:
        qconfig, dc = match.qconfig, match.dtype_config
        mode = match.mode
        if mode in ("float", "weight_only"):
            continue
        obs_type = match.config.observation_type
        if obs_type == ObservationType.INPUT_OUTPUT_NOT_OBSERVED:
            continue
        in_constraints = getattr(dc, "input_dtype_with_constraints", None)
        out_constraints = getattr(dc, "output_dtype_with_constraints", None)
        inputs = _activation_inputs(match.first, match.config)
        if _is_reuse_input(qconfig):
            # ReuseInputObserver: the output reuses the input's qparams when the input is
            # quantized; a float input stays float (reshape of a model input, ...)
            if inputs and _is_observer_node(inputs[0], modules):
                src = inputs[0]
                _observe_output(ins, match.last, lambda: ins.reuse_observer(src.target, match.last, match.last))
            continue
        share = obs_type == ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT and mode == "static"
        input_obs_nodes = [
            _observe_input(ins, match, arg, qconfig.activation, in_constraints, modules) for arg in inputs
        ]
        _observe_functional_weights(ins, match, modules)
        if mode != "static":
            continue  # dynamic / fp16 dynamic: output stays float
        if share and input_obs_nodes:
            # one observer instance for every input and the output (cat, maxpool, flatten ...)
            shared_target = input_obs_nodes[0].target
            for other in input_obs_nodes[1:]:
                if other.target != shared_target:
                    _retarget_observer(gm, other.target, shared_target, modules)
            _observe_output(ins, match.last, lambda: ins.reuse_observer(shared_target, match.last, match.last))
            continue
        out_obs = instantiate(qconfig.activation)
        apply_constraints(out_obs, out_constraints)

        def factory(obs=out_obs, last=match.last):
            node = ins.new_observer(obs, observed=last, after=last)
            modules[node.target] = obs
            return node

        _observe_output(ins, match.last, factory)

    if output_quantized_idxs:
        out_node = next(n for n in gm.graph.nodes if n.op == "output")
        outputs = out_node.args[0]
        flat = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        for idx in output_quantized_idxs:
            if not _is_observer_node(flat[idx], modules):
                raise ValueError(
                    f"output_quantized_indexes contains {idx}, but output {idx} ({flat[idx]}) is not "
                    "produced by a quantized op; remove the index or quantize the op that produces it"
                )


def _observe_functional_weights(ins: _Inserter, match: Match, modules: dict[str, torch.nn.Module]) -> None:
    """F.linear / F.conv2d read their weight from the graph: observe it there (convert folds it)."""
    table = getattr(match.config, "_input_type_to_index", None) or {}
    idx = table.get("weight")
    if idx is None or match.qconfig.weight is None or idx >= len(match.first.args):
        return
    weight = match.first.args[idx]
    if not isinstance(weight, Node) or _is_observer_node(weight, modules):
        return
    obs = instantiate(match.qconfig.weight)
    apply_constraints(obs, getattr(match.dtype_config, "weight_dtype_with_constraints", None))
    obs_node = ins.new_observer(obs, observed=weight, after=weight)
    modules[obs_node.target] = obs
    match.first.replace_input_with(weight, obs_node)


def _is_reuse_input(qconfig: Any) -> bool:
    from ..observers import ReuseInputObserver

    return isinstance(instantiate(qconfig.activation), ReuseInputObserver)


def _retarget_observer(gm: GraphModule, old: str, new: str, modules: dict[str, torch.nn.Module]) -> None:
    """Point every node calling observer ``old`` at observer ``new`` (shared qparams)."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == old:
            node.target = new
    if hasattr(gm, old):
        delattr(gm, old)
    modules.pop(old, None)


# ---------------------------------------------------------------------------
# QAT module swap


def _qat_module_map(backend_config: BackendConfig) -> dict[type, type]:
    table: dict[type, type] = {}
    for config in backend_config.configs:
        pattern = normalize_pattern(config.pattern) if config.pattern is not None else ()
        if config.qat_module is not None and len(pattern) == 1 and isinstance(pattern[0], type):
            table.setdefault(pattern[0], config.qat_module)
    return table


def _swap_qat_modules(gm: GraphModule, matches: Iterable[Match], backend_config: BackendConfig) -> None:
    table = _qat_module_map(backend_config)
    modules = dict(gm.named_modules())
    for match in matches:
        first = match.first
        if match.mode != "static" or first.op != "call_module":
            continue
        module = modules[first.target]
        qat_cls = table.get(type(module))
        if qat_cls is None:
            continue
        qat_module = qat_cls.from_float(module, match.qconfig)
        _set_submodule(gm, first.target, qat_module)


def _set_submodule(gm: torch.nn.Module, target: str, module: torch.nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, name, module)


# ---------------------------------------------------------------------------
# entry point


def prepare(
    gm: GraphModule,
    qconfig_mapping: Any,
    is_qat: bool,
    node_name_to_scope: Mapping[str, tuple[str, type]],
    example_inputs: tuple,
    prepare_custom_config: Any,
    backend_config: BackendConfig,
    backend: str,
    model_name: str = "the model",
) -> GraphModule:
    """Insert observers into the (traced, fused) ``gm`` in place and return it."""
    _run_shape_prop(gm, example_inputs, model_name)
    modules = dict(gm.named_modules())
    node_qconfigs = resolve_node_qconfigs(gm, qconfig_mapping, node_name_to_scope)
    node_to_match = _find_matches(gm, backend_config)

    state = PreparedState(
        backend=backend,
        is_qat=is_qat,
        qconfig_mapping=qconfig_mapping,
        prepare_custom_config=prepare_custom_config,
        backend_config=backend_config,
        node_name_to_scope=dict(node_name_to_scope),
        node_qconfigs=dict(node_qconfigs),
        input_quantized_idxs=list(getattr(prepare_custom_config, "input_quantized_indexes", []) or []),
        output_quantized_idxs=list(getattr(prepare_custom_config, "output_quantized_indexes", []) or []),
    )

    matches: list[Match] = []
    seen: set[int] = set()
    for node in gm.graph.nodes:
        match = node_to_match.get(node)
        if match is None:
            if node.op in ("call_module", "call_function", "call_method") and not _is_observer_node(node, modules):
                if node_qconfigs.get(node.name) is not None and _is_float_tensor(node):
                    state.float_reasons[node.name] = "the backend config has no pattern for this op"
                elif node_qconfigs.get(node.name) is None:
                    state.float_reasons[node.name] = "qconfig is None"
            continue
        if id(match) in seen:
            continue
        seen.add(id(match))
        matches.append(match)
        match.qconfig = node_qconfigs.get(match.first.name)
        if match.qconfig is None:
            for n in match.nodes:
                state.float_reasons[n.name] = "qconfig is None"
            continue
        dc, reason = _choose_dtype_config(match, match.qconfig, modules)
        if dc is None:
            warnings.warn(
                f"node '{match.first.name}' ({pattern_to_str(match.config.pattern)}) stays in float: "
                f"the backend '{backend}' does not support its qconfig ({reason}). Set a qconfig the backend "
                f"supports for it, or set it to None to silence this warning.",
                UnsupportedQConfigWarning,
                stacklevel=4,
            )
            for n in match.nodes:
                state.float_reasons[n.name] = f"qconfig not supported by backend: {reason}"
            match.qconfig = None
            continue
        match.dtype_config = dc
        for n in match.nodes:
            state.quantized_patterns[n.name] = f"{pattern_to_str(match.config.pattern)} [{match.mode}]"
        first = match.first
        if first.op == "call_module" and _is_weighted_module(modules[first.target]) and match.mode != "float":
            state.weighted_module_qconfigs[first.target] = match.qconfig
            state.weighted_module_modes[first.target] = match.mode

    if is_qat:
        _swap_qat_modules(gm, matches, backend_config)
        modules = dict(gm.named_modules())

    _insert_observers(gm, matches, modules, state.input_quantized_idxs, state.output_quantized_idxs)
    gm.graph.lint()
    gm.recompile()
    set_state(gm, state)
    return gm
