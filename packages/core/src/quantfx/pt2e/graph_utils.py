"""Small graph helpers shared by the PT2E passes: attributes by dotted path, constants, fake-tensor metadata."""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

__all__ = ["get_attr_value", "set_attr", "unique_attr_name", "constant_value", "copy_val_meta", "is_pure_call", "deepcopy_module"]


def get_attr_value(gm: torch.nn.Module, target: str) -> Any:
    """The object at dotted path ``target`` (``"conv1.weight"``) under ``gm``."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def set_attr(gm: torch.nn.Module, target: str, value: torch.Tensor, parameter: bool = False) -> None:
    """Store ``value`` at dotted path ``target`` as a buffer (or a parameter), creating parents as needed."""
    parent_path, _, name = target.rpartition(".")
    parent: torch.nn.Module = gm
    for part in parent_path.split(".") if parent_path else []:
        if not hasattr(parent, part):
            parent.add_module(part, torch.nn.Module())
        parent = getattr(parent, part)
    if name in parent._parameters:
        del parent._parameters[name]
    if name in parent._buffers:
        del parent._buffers[name]
    if hasattr(parent, name):
        delattr(parent, name)
    if parameter:
        requires_grad = bool(value.requires_grad) if isinstance(value, torch.nn.Parameter) else False
        parent.register_parameter(name, torch.nn.Parameter(value.detach(), requires_grad=requires_grad))
    else:
        parent.register_buffer(name, value.detach())


def unique_attr_name(gm: torch.nn.Module, base: str) -> str:
    """``base`` (dots replaced), or ``base_1``, ``base_2`` ... whichever is free on ``gm``."""
    base = base.replace(".", "_")
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    return name


def is_pure_call(node: Node) -> bool:
    """True for call_function nodes of operators that do not mutate their inputs."""
    if node.op != "call_function":
        return False
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return callable(node.target) and getattr(node.target, "__module__", "") in ("_operator", "operator")
    return not any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


def constant_value(gm: GraphModule, node: Any, cache: dict[Node, Any] | None = None) -> tuple[bool, Any]:
    """(True, value) if ``node`` depends only on module attributes through pure ops, else (False, None)."""
    cache = {} if cache is None else cache
    if not isinstance(node, Node):
        if isinstance(node, (list, tuple)):
            values = []
            for item in node:
                ok, v = constant_value(gm, item, cache)
                if not ok:
                    return False, None
                values.append(v)
            return True, type(node)(values)
        return True, node
    if node in cache:
        return cache[node]
    result: tuple[bool, Any] = (False, None)
    if node.op == "get_attr":
        result = (True, get_attr_value(gm, str(node.target)))
    elif is_pure_call(node):
        ok_args, args = constant_value(gm, tuple(node.args), cache)
        ok_kwargs, kwarg_values = constant_value(gm, tuple(node.kwargs.values()), cache)
        if ok_args and ok_kwargs:
            with torch.no_grad():
                result = (True, node.target(*args, **dict(zip(node.kwargs.keys(), kwarg_values))))
    cache[node] = result
    return result


def copy_val_meta(src: Node, dst: Node) -> None:
    """Give ``dst`` the tensor metadata of ``src`` (observers and q/dq pairs keep shapes)."""
    for key in ("val", "tensor_meta"):
        if key in src.meta:
            dst.meta[key] = src.meta[key]


def deepcopy_module(gm: torch.nn.Module) -> torch.nn.Module:
    """``copy.deepcopy``, without torch 2.13's pytree FutureWarning that copying any exported module emits."""
    import copy
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
        return copy.deepcopy(gm)
