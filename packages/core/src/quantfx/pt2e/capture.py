"""What the PT2E passes accept, and train / eval switching for exported graphs.

PT2E works on the ``GraphModule`` of a ``torch.export`` capture: aten
operators with fake-tensor metadata (``node.meta["val"]``). Anything else
(an ``nn.Module``, an ``ExportedProgram``, a ``torch.fx.symbolic_trace``
graph) is rejected with a :class:`~quantfx.errors.CaptureError` that shows
the capture call.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch.fx import GraphModule, Node

from quantfx.errors import CaptureError

__all__ = [
    "PREPARED_KEY",
    "CONVERTED_KEY",
    "require_exported",
    "node_name_to_scope",
    "move_exported_model_to_eval",
    "move_exported_model_to_train",
    "is_pt2e_prepared",
    "is_pt2e_converted",
]

#: ``gm.meta`` key set by ``prepare_pt2e`` / ``prepare_qat_pt2e`` (dict: is_qat, quantizer, node_name_to_scope).
PREPARED_KEY = "quantfx_pt2e_prepared"
#: ``gm.meta`` key set by ``convert_pt2e``: the graph holds aten ops between quantfx q / dq ops.
CONVERTED_KEY = "quantfx_pt2e_converted"

_HOW_TO_CAPTURE = (
    "Capture it with torch.export first:\n"
    "    exported = torch.export.export(model.eval(), example_inputs).module()\n"
    "    prepared = {fn}(exported, quantizer)\n"
    "(train mode for prepare_qat_pt2e). To quantize the nn.Module directly, use the FX flow: "
    "quantfx.quantize_fx.prepare_fx(model, qconfig_mapping, example_inputs)."
)

_ALLOWED_FUNCTION_MODULES = ("_operator", "operator", "math", "builtins")


def _is_export_call(node: Node) -> bool:
    target = node.target
    if isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator, torch._ops.OpOverloadPacket)):
        return True
    if target in (operator.getitem, math.ceil, math.floor, math.trunc):
        return True
    if getattr(target, "__module__", None) in _ALLOWED_FUNCTION_MODULES:
        return True
    name = getattr(target, "__name__", "")
    return name.startswith(("sym_", "_assert"))


def _is_guard_module(gm: GraphModule, node: Node) -> bool:
    # torch.export's `.module()` adds a call to a `_guards_fn` submodule that checks input shapes
    return node.op == "call_module" and str(node.target).startswith("_guards_fn")


def require_exported(model: Any, fn: str) -> GraphModule:
    """Return ``model`` if it is a ``torch.export`` capture's GraphModule, else raise CaptureError saying how to get one."""
    how = _HOW_TO_CAPTURE.format(fn=fn)
    if isinstance(model, torch.export.ExportedProgram):
        raise CaptureError(
            f"{fn} takes the GraphModule of an exported program, got the ExportedProgram itself: pass "
            f"`exported_program.module()`.\n" + how
        )
    if not isinstance(model, GraphModule):
        raise CaptureError(f"{fn} expects a graph captured by torch.export, got {type(model).__name__}. " + how)
    for node in model.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module":
            if _is_guard_module(model, node):
                continue
            culprit = f"node '{node.name}' calls the submodule '{node.target}'"
        elif node.op == "call_method":
            culprit = f"node '{node.name}' calls the tensor method '.{node.target}()'"
        elif not _is_export_call(node):
            name = getattr(node.target, "__qualname__", repr(node.target))
            culprit = f"node '{node.name}' calls {getattr(node.target, '__module__', '')}.{name} instead of an aten operator"
        elif "val" not in node.meta and isinstance(node.target, torch._ops.OpOverload):
            culprit = f"node '{node.name}' has no tensor metadata (node.meta['val'])"
        else:
            continue
        raise CaptureError(
            f"{fn} expects a graph captured by torch.export (aten operators with tensor metadata), but {culprit}: "
            f"this looks like a torch.fx.symbolic_trace graph or an already quantized model. " + how
        )
    return model


def node_name_to_scope(model: GraphModule) -> dict[str, tuple[str, str]]:
    """node name -> (module path, module type name) of the innermost module that created it (from nn_module_stack)."""
    scopes: dict[str, tuple[str, str]] = {}
    for node in model.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        scope = ("", "")
        if stack:
            path, tp = list(stack.values())[-1]
            scope = (path, tp if isinstance(tp, str) else f"{tp.__module__}.{tp.__qualname__}")
        scopes[node.name] = scope
    return scopes


def _set_training(model: GraphModule, training: bool) -> GraphModule:
    aten = torch.ops.aten
    changed = False
    for node in model.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is aten.batch_norm.default and len(node.args) > 5 and node.args[5] != training:
            args = list(node.args)
            args[5] = training
            node.args = tuple(args)
            changed = True
        elif node.target is aten.dropout.default and len(node.args) > 2 and node.args[2] != training:
            args = list(node.args)
            args[2] = training
            node.args = tuple(args)
            changed = True
    if changed:
        model.recompile()
    return model


def move_exported_model_to_eval(model: GraphModule) -> GraphModule:
    """Switch batch_norm / dropout in an exported graph to eval behaviour (``.eval()`` does not work on exports)."""
    return _set_training(model, False)


def move_exported_model_to_train(model: GraphModule) -> GraphModule:
    """Switch batch_norm / dropout in an exported graph to training behaviour."""
    return _set_training(model, True)


def is_pt2e_prepared(model: Any) -> bool:
    """True for the output of ``prepare_pt2e`` / ``prepare_qat_pt2e``."""
    return isinstance(getattr(model, "meta", None), dict) and PREPARED_KEY in model.meta


def is_pt2e_converted(model: Any) -> bool:
    """True for the output of ``convert_pt2e``."""
    return isinstance(getattr(model, "meta", None), dict) and bool(model.meta.get(CONVERTED_KEY))
