"""The fuse pass: replace op chains (conv -> bn -> relu ...) by one fused module.

Patterns come from the backend config's fusion configs (those with a
``fuser_method``), tried longest first at each node, walking the graph from
the output backwards like torch.ao. A match installs the fuser's module at the
*first* node's module path (so a conv inside a custom submodule stays at
``block.conv``), points the last node's users at the first node, and erases
the rest.

Differences from torch.ao's ``fuse_fx``, all on purpose:

- a module object with several call sites is not fused (fusing it would change
  every call site, e.g. fold one BN into a conv that is also used without it);
  the reason is recorded in ``gm.meta["quantfx_fusion_skipped"]``;
- a fuser may decline one instance (Hardtanh that is not 0..6, BN without
  running statistics, ConvTranspose+BN under QAT) instead of failing the pass;
- functional ``F.relu`` / ``torch.relu`` / ``.relu()`` / ``F.relu6`` /
  ``F.hardtanh`` in a pattern become the matching ``nn`` module in the fused module;
- the input model is never mutated.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node

from quantfx.backend_config import BackendConfig
from quantfx.errors import ValidationError
from quantfx.fuser_method_mappings import FusionSkipped
from quantfx.fx.match import PatternIndex, match_chain, pattern_to_str

__all__ = ["fuse", "FUSED_KEY", "FUSION_SKIPPED_KEY", "module_for_functional_node"]

FUSED_KEY = "quantfx_fused"
FUSION_SKIPPED_KEY = "quantfx_fusion_skipped"
_PRESERVED_META_KEYS = ("quantfx_preserved_attributes",)

_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, getattr(F, "relu_", F.relu)}
_RELU_METHODS = {"relu", "relu_"}
_HARDTANH_FUNCTIONS = {F.hardtanh, getattr(F, "hardtanh_", F.hardtanh)}


def _const_arg(node: Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        value = node.args[index]
    else:
        value = node.kwargs.get(name, default)
    if isinstance(value, Node):
        raise FusionSkipped(f"node '{node.name}': {name} is computed at run time, so it cannot become a fused module")
    return value


def module_for_functional_node(node: Node) -> nn.Module | None:
    """The ``nn`` module equivalent of a functional activation node (F.relu -> nn.ReLU), or None."""
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            return nn.ReLU()
        if node.target is F.relu6:
            return nn.ReLU6()
        if node.target in _HARDTANH_FUNCTIONS:
            return nn.Hardtanh(float(_const_arg(node, 1, "min_val", -1.0)), float(_const_arg(node, 2, "max_val", 1.0)))
    elif node.op == "call_method" and node.target in _RELU_METHODS:
        return nn.ReLU()
    return None


def _coerce_backend_config(backend_config: BackendConfig | dict | None) -> BackendConfig:
    if backend_config is None:
        from quantfx.backend_config.common import get_reference_backend_config

        return get_reference_backend_config()
    if isinstance(backend_config, dict):
        return BackendConfig.from_dict(backend_config)
    if not isinstance(backend_config, BackendConfig):
        raise ValidationError(f"backend_config must be a quantfx BackendConfig, got {type(backend_config).__name__}")
    return backend_config


def _preserved_attribute_names(fuse_custom_config: Any) -> list[str]:
    if fuse_custom_config is None:
        return []
    if isinstance(fuse_custom_config, dict):
        return list(fuse_custom_config.get("preserved_attributes", []))
    return list(getattr(fuse_custom_config, "preserved_attributes", []) or [])


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=True)) or any(True for _ in module.buffers(recurse=True))


def _set_submodule(gm: GraphModule, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = gm.get_submodule(parent_name) if parent_name else gm
    setattr(parent, name, module)


def _is_referenced(gm: GraphModule, target: str) -> bool:
    for n in gm.graph.nodes:
        if n.op in ("call_module", "get_attr") and isinstance(n.target, str):
            if n.target == target or n.target.startswith(target + "."):
                return True
    return False


def fuse(
    model: GraphModule,
    is_qat: bool,
    fuse_custom_config: Any = None,
    backend_config: BackendConfig | dict | None = None,
    *,
    copy_model: bool = True,
) -> GraphModule:
    """Return a fused copy of the traced ``model`` (the input is not modified).

    ``copy_model=False`` fuses ``model`` itself, for callers that own it (prepare_fx traces its own copy of the
    user's model; copying it again would only cost time).

    ``is_qat=False`` folds BatchNorm into the preceding conv / linear (the model
    must be in eval mode); ``is_qat=True`` keeps BN inside ``ConvBn*`` modules.
    ``gm.meta["quantfx_fused"]`` maps each fused module path to the node names
    it replaced; ``gm.meta["quantfx_fusion_skipped"]`` maps node names to why a
    matching chain starting there was left unfused.
    """
    if not isinstance(model, GraphModule):
        raise ValidationError(
            f"fuse expects a torch.fx.GraphModule (trace the model first, or call quantfx.quantize_fx.fuse_fx); "
            f"got {type(model).__name__}"
        )
    backend_config = _coerce_backend_config(backend_config)
    preserved_names = _preserved_attribute_names(fuse_custom_config)
    gm = copy.deepcopy(model) if copy_model else model
    for name in preserved_names:
        if hasattr(model, name):
            setattr(gm, name, getattr(model, name))
    for key in _PRESERVED_META_KEYS:
        for name, value in dict(model.meta.get(key, {})).items():
            setattr(gm, name, value)

    configs = backend_config.fusion_configs()
    modules: dict[str, nn.Module] = dict(gm.named_modules())
    call_sites: dict[int, list[str]] = defaultdict(list)
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target in modules:
            call_sites[id(modules[n.target])].append(n.name)

    fused_map: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    claimed: set[Node] = set()
    erased_targets: list[str] = []

    def shared_reason(matched: list[Node], pattern: Any) -> str | None:
        for i, n in enumerate(matched):
            if n.op != "call_module":
                continue
            mod = modules[n.target]
            sites = call_sites[id(mod)]
            # the first module is replaced in place, so any other call site would change;
            # a stateless later module (a shared nn.ReLU) is only copied into the fused module
            if len(sites) > 1 and (i == 0 or _has_state(mod)):
                return (
                    f"module '{n.target}' ({type(mod).__name__}) is called {len(sites)} times (nodes "
                    f"{', '.join(sites)}); fusing {pattern_to_str(pattern)} would change every call site, "
                    "so it was left unfused. Use a separate module instance per call to fuse it."
                )
        return None

    index = PatternIndex(configs, lambda c: c.pattern)
    for node in reversed(list(gm.graph.nodes)):
        if node in claimed or node.op not in ("call_module", "call_function", "call_method"):
            continue
        for config in index.candidates(node, modules):
            pattern = config.pattern
            matched = match_chain(node, pattern, modules)
            if matched is None or any(n in claimed for n in matched):
                continue
            first = matched[0]
            if first.op != "call_module":
                skipped.setdefault(first.name, f"fusion pattern {pattern_to_str(pattern)} must start with a module, "
                                   f"but node '{first.name}' is a {first.op}")
                continue
            reason = shared_reason(matched, pattern)
            if reason is not None:
                skipped.setdefault(first.name, reason)
                continue
            root_training = modules[first.target].training
            try:
                mods = []
                for n in matched:
                    if n.op == "call_module":
                        m = modules[n.target]
                        # stateless modules may be shared by several chains: give each fused module its own
                        mods.append(m if n is first or _has_state(m) else copy.deepcopy(m))
                    else:
                        m = module_for_functional_node(n)
                        if m is None:
                            raise FusionSkipped(
                                f"node '{n.name}' ({n.op} {getattr(n.target, '__name__', n.target)}) has no module "
                                "equivalent to put in the fused module"
                            )
                        m.train(root_training)
                        mods.append(m)
                fused = config.fuser_method(is_qat, *mods)
            except FusionSkipped as e:
                skipped.setdefault(first.name, str(e))
                continue
            if fused is None:
                skipped.setdefault(first.name, f"the fuser method for {pattern_to_str(pattern)} declined this instance")
                continue
            if not isinstance(fused, nn.Module):
                raise ValidationError(
                    f"fuser method {getattr(config.fuser_method, '__name__', config.fuser_method)} for "
                    f"{pattern_to_str(pattern)} returned {type(fused).__name__}, expected an nn.Module"
                )
            _set_submodule(gm, first.target, fused)
            modules[first.target] = fused
            last = matched[-1]
            if last is not first:
                last.replace_all_uses_with(first)
                for n in reversed(matched[1:]):
                    if n.op == "call_module":
                        erased_targets.append(n.target)
                    gm.graph.erase_node(n)
            names = [n.name for n in matched]
            first.meta["quantfx_fused_nodes"] = names
            fused_map[first.target] = names
            claimed.update(matched)
            break

    for target in erased_targets:
        if not _is_referenced(gm, target):
            gm.delete_submodule(target)
    fused_names = {name for names in fused_map.values() for name in names}
    skipped = {k: v for k, v in skipped.items() if k not in fused_names}
    gm.graph.lint()
    gm.recompile()
    gm.meta.setdefault(FUSED_KEY, {}).update(fused_map)
    gm.meta.setdefault(FUSION_SKIPPED_KEY, {}).update(skipped)
    return gm
