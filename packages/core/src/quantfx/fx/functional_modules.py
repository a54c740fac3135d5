"""Turn functional convs / linears on a module's own parameters back into module calls.

Subclasses of ``nn.Conv2d`` defined outside torch (EfficientNet's
``Conv2dStaticSamePadding``, weight-standardised convs, ...) are not tracer
leaves, so tracing goes through their ``forward`` and records
``F.conv2d(x, self.weight, self.bias, ...)``. Fusion and the backend patterns
key on ``nn.Conv2d`` modules, so such a conv would keep its BatchNorm unfolded
and its ReLU6 as a separately quantized op: on EfficientNet-Lite0 that costs
about 5 dB. torch.ao has the same blind spot.

``restore_module_calls`` rewrites each such node into a ``call_module`` of a
plain ``nn.Conv{1,2,3}d`` / ``nn.Linear`` that holds the *same* parameter
objects and is built from the call's own stride / padding / dilation / groups,
so it computes exactly what the functional call did. A symmetric zero pad
module right in front (TF-"SAME" padding at stride 1) is folded into the
conv's ``padding``. Only a node whose weight
(and bias) are parameters of one ``nn.Conv*d`` / ``nn.Linear`` instance, used
by that node alone, with constant hyper-parameters, is rewritten; anything
else is left as traced.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node

__all__ = ["restore_module_calls"]

_CONV_FUNCTIONS: dict[Any, type[nn.Module]] = {
    F.conv1d: nn.Conv1d,
    F.conv2d: nn.Conv2d,
    F.conv3d: nn.Conv3d,
    torch.conv1d: nn.Conv1d,
    torch.conv2d: nn.Conv2d,
    torch.conv3d: nn.Conv3d,
}
_LINEAR_FUNCTIONS = {F.linear, torch._C._nn.linear}
_CONV_ARG_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LINEAR_ARG_NAMES = ("input", "weight", "bias")


def _bound_args(node: Node, names: tuple[str, ...]) -> dict[str, Any] | None:
    """The node's arguments by name, or None when they cannot be bound unambiguously."""
    if len(node.args) > len(names):
        return None
    bound = dict(zip(names, node.args))
    for key, value in node.kwargs.items():
        if key not in names or key in bound:
            return None
        bound[key] = value
    return bound


def _owner_path(node: Any, field: str) -> str | None:
    """``'a.b'`` when ``node`` is ``get_attr('a.b.<field>')``, else None."""
    if not isinstance(node, Node) or node.op != "get_attr" or not isinstance(node.target, str):
        return None
    prefix, _, name = node.target.rpartition(".")
    return prefix if name == field else None


def _has_node(value: Any) -> bool:
    found = False

    def visit(v: Any) -> Any:
        nonlocal found
        found = found or isinstance(v, Node)
        return v

    torch.fx.node.map_aggregate(value, visit)
    return found


def _original_module(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        return None


def _is_empty_container(module: nn.Module) -> bool:
    """True for the bare ``nn.Module`` torch.fx creates to hold a path's attributes, once emptied."""
    return (
        type(module) is nn.Module
        and not module._parameters
        and not module._buffers
        and not module._modules
        and not any(k for k in vars(module) if not k.startswith("_") and k != "training")
    )


def _module_path(gm: GraphModule, owner: str, kind: type[nn.Module]) -> str:
    """Where the new module goes: the owner's own path when nothing else lives there, else a fresh child path."""
    if owner and _is_empty_container(gm.get_submodule(owner)):
        return owner
    leaf = "linear" if kind is nn.Linear else "conv"
    base = f"{owner}.{leaf}" if owner else leaf
    path, i = base, 1
    while _has_attr_path(gm, path):
        path, i = f"{base}_{i}", i + 1
    return path


def _has_attr_path(gm: GraphModule, path: str) -> bool:
    obj: Any = gm
    for part in path.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


_ZERO_PAD_TYPES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)


def _symmetric_zero_padding(gm: GraphModule, node: Any, spatial_dims: int) -> tuple[int, ...] | None:
    """Per-dim padding when ``node`` is a zero pad (one user) with equal before/after amounts, else None.

    F.pad lists ``(last_before, last_after, prev_before, prev_after, ...)``;
    the conv's ``padding`` lists dims first to last.
    """
    if not isinstance(node, Node) or node.op != "call_module" or len(node.users) != 1 or len(node.args) != 1:
        return None
    pad_module = gm.get_submodule(node.target)
    if not isinstance(pad_module, _ZERO_PAD_TYPES) or float(pad_module.value) != 0.0:
        return None
    amounts = tuple(int(p) for p in pad_module.padding)
    if len(amounts) != 2 * spatial_dims:
        return None
    pairs = [amounts[i : i + 2] for i in range(0, len(amounts), 2)][::-1]
    if any(before != after or before < 0 for before, after in pairs):
        return None
    return tuple(before for before, _ in pairs)


def _fold_padding(gm: GraphModule, kind: type[nn.Module], args: dict[str, Any]) -> Node | None:
    """Move a symmetric zero pad in front of the conv into the conv's ``padding`` (same result, one op less).

    Updates ``args`` and returns the pad node the caller must erase, or None.
    """
    spatial = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(kind)
    if spatial is None:
        return None
    padding = args.get("padding", 0)
    padding = (padding,) * spatial if isinstance(padding, int) else padding
    if isinstance(padding, str) or any(p != 0 for p in padding):
        return None
    folded = _symmetric_zero_padding(gm, args["input"], spatial)
    if folded is not None:
        pad_node = args["input"]
        args["input"] = pad_node.args[0]
        args["padding"] = folded
        return pad_node
    return None


def _parameter(gm: GraphModule, target: str) -> nn.Parameter | None:
    value = getattr(gm.get_submodule(target.rpartition(".")[0]), target.rpartition(".")[2], None)
    return value if isinstance(value, nn.Parameter) else None


def _drop_attributes(gm: GraphModule, targets: list[str]) -> None:
    """Remove the parameters from their traced container (the new module holds them now)."""
    for target in targets:
        if any(n.op == "get_attr" and n.target == target and n.users for n in gm.graph.nodes):
            continue
        prefix, _, name = target.rpartition(".")
        delattr(gm.get_submodule(prefix) if prefix else gm, name)


def _drop_module(gm: GraphModule, target: str) -> None:
    if not any(n.op == "call_module" and n.target == target for n in gm.graph.nodes):
        prefix, _, name = target.rpartition(".")
        delattr(gm.get_submodule(prefix) if prefix else gm, name)


def _install(gm: GraphModule, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    parent.add_module(name, module)


def _build_module(kind: type[nn.Module], args: dict[str, Any], weight: torch.Tensor, bias: Any) -> nn.Module:
    """A plain module computing ``F.<kind>(x, weight, bias, **args)`` with the given parameter objects."""
    with torch.device("meta"):
        if kind is nn.Linear:
            module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            groups = int(args.get("groups", 1))
            module = kind(
                weight.shape[1] * groups,
                weight.shape[0],
                tuple(weight.shape[2:]),
                stride=args.get("stride", 1),
                padding=args.get("padding", 0),
                dilation=args.get("dilation", 1),
                groups=groups,
                bias=bias is not None,
            )
    module.weight = weight
    module.bias = bias
    return module


def restore_module_calls(gm: GraphModule, root: nn.Module, node_name_to_scope: dict[str, Any] | None = None) -> list[str]:
    """Rewrite functional convs / linears on an ``nn.Conv*d`` / ``nn.Linear``'s own parameters into module calls.

    ``root`` is the module ``gm`` was traced from (its submodule types decide
    which parameter owners qualify; ``gm`` only holds plain containers). The new
    module takes the owner's path when the owner held nothing else the graph
    uses, else a child path ``<owner>.conv`` / ``<owner>.linear`` (so
    ``QConfigMapping.set_module_name(owner, ...)`` applies either way); its
    scope record is updated. Returns the paths of the new modules.
    """
    created: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _CONV_FUNCTIONS:
            kind, names, base = _CONV_FUNCTIONS[node.target], _CONV_ARG_NAMES, (nn.Conv1d, nn.Conv2d, nn.Conv3d)
        elif node.target in _LINEAR_FUNCTIONS:
            kind, names, base = nn.Linear, _LINEAR_ARG_NAMES, (nn.Linear,)
        else:
            continue
        args = _bound_args(node, names)
        if args is None or "input" not in args or "weight" not in args:
            continue
        owner = _owner_path(args["weight"], "weight")
        original = _original_module(root, owner) if owner is not None else None
        if not isinstance(original, base):
            continue
        bias_node = args.get("bias")
        if bias_node is not None and _owner_path(bias_node, "bias") != owner:
            continue
        if any(_has_node(v) for k, v in args.items() if k not in ("input", "weight", "bias")):
            continue
        param_nodes = [args["weight"]] + ([bias_node] if bias_node is not None else [])
        if any(len(p.users) != 1 for p in param_nodes):
            continue  # the parameter is used elsewhere too: keep the traced form
        weight = _parameter(gm, args["weight"].target)
        bias = _parameter(gm, bias_node.target) if bias_node is not None else None
        if weight is None or (bias_node is not None and bias is None):
            continue
        if kind is not nn.Linear and weight.dim() != {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}[kind]:
            continue
        pad_node = _fold_padding(gm, kind, args)
        module = _build_module(kind, args, weight, bias)
        module.train(original.training)
        with gm.graph.inserting_before(node):
            call = gm.graph.create_node("call_module", owner, (args["input"],), {})
        call.meta.update(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        if pad_node is not None:
            gm.graph.erase_node(pad_node)
            _drop_module(gm, pad_node.target)
        for p in param_nodes:
            if not p.users:
                gm.graph.erase_node(p)
        _drop_attributes(gm, [p.target for p in param_nodes])
        path = _module_path(gm, owner, kind)
        _install(gm, path, module)
        call.target = path
        if node_name_to_scope is not None:
            node_name_to_scope.pop(node.name, None)
            node_name_to_scope[call.name] = (path, type(module))
        created.append(path)
    if created:
        gm.graph.lint()
        gm.recompile()
    return created
