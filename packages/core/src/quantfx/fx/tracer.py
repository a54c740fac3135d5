"""Symbolic tracing for quantization, with errors that say where and how to fix.

``QuantizationTracer`` is a ``torch.fx.Tracer`` whose leaves are torch.nn
built-ins, every module defined in ``quantfx.nn`` (fused / QAT / reference
modules) and the modules a user marks as non-traceable (or standalone). It
records in which module every node was created (``node_name_to_scope``), which
``QConfigMapping.set_module_name`` and friends need once the module hierarchy
is flattened into one graph.

``trace_for_quantization`` is what ``prepare_fx`` calls: when tracing fails it
raises a ``TracingError`` naming the innermost module being traced, the user's
source line, and the exact ``PrepareCustomConfig`` call that works around it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import sys
import traceback
from typing import Any, Callable, Sequence

import torch
from torch.fx import GraphModule, Tracer
from torch.fx import graph_module as _fx_graph_module

from quantfx.errors import ExampleInputsError, QuantfxError, TracingError
from quantfx.fx.custom_config import PrepareCustomConfig
from quantfx.fx.functional_modules import restore_module_calls

__all__ = [
    "QuantizationTracer",
    "trace_for_quantization",
    "check_example_inputs",
    "attach_preserved_attributes",
    "NODE_NAME_TO_SCOPE_KEY",
    "PRESERVED_ATTRIBUTES_KEY",
]

#: ``gm.meta`` key holding ``{node name: (module path, module type)}``.
NODE_NAME_TO_SCOPE_KEY = "quantfx_node_name_to_scope"
#: ``gm.meta`` key torch.fx's GraphModule copies back onto the module on deepcopy.
PRESERVED_ATTRIBUTES_KEY: str = getattr(_fx_graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")

_LEAF_MODULE_PREFIXES = ("torch.nn.", "torch.ao.nn.", "quantfx.nn.")


class QuantizationTracer(Tracer):
    """A ``torch.fx.Tracer`` for quantization.

    Leaves: torch.nn built-ins (not ``Sequential``), modules defined under
    ``quantfx.nn``, modules at a path in ``skipped_module_names`` or anywhere
    below one, and modules whose exact class is in ``skipped_module_classes``.

    After ``trace``, ``node_name_to_scope[node.name] == (module_path, module_type)``
    of the module whose ``forward`` created the node (``("", None)`` for the
    root, as torch.ao records it); a ``call_module`` node's scope is its own module.
    """

    def __init__(self, skipped_module_names: Sequence[str] = (), skipped_module_classes: Sequence[type] = ()) -> None:
        super().__init__()
        self.skipped_module_names: list[str] = list(skipped_module_names)
        self.skipped_module_classes: list[type] = list(skipped_module_classes)
        self.record_stack_traces = True
        self.node_name_to_scope: dict[str, tuple[str, Any]] = {}
        # (module path, module type) of the modules whose forward is running, innermost last
        self._scope_stack: list[tuple[str, Any]] = [("", None)]
        # the scope stack when an exception first left a module's forward
        self.failed_scope_stack: list[tuple[str, type]] | None = None

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        """Whether ``m`` stays a ``call_module`` node instead of being traced through."""
        if self._is_skipped(m, module_qualified_name):
            return True
        module = type(m).__module__ + "."
        if isinstance(m, torch.nn.Sequential) and module.startswith("torch.nn."):
            return False
        return module.startswith(_LEAF_MODULE_PREFIXES)

    def _is_skipped(self, m: torch.nn.Module, name: str) -> bool:
        if type(m) in self.skipped_module_classes:
            return True
        return any(name == s or name.startswith(s + ".") for s in self.skipped_module_names)

    def trace(self, root: torch.nn.Module | Callable[..., Any], concrete_args: dict[str, Any] | None = None) -> torch.fx.Graph:
        self.node_name_to_scope = {}
        self._scope_stack = [("", None)]
        self.failed_scope_stack = None
        return super().trace(root, concrete_args)

    def call_module(
        self, m: torch.nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Push ``m``'s scope while its forward runs (or its leaf node is created)."""
        path = self.path_of_module(m)
        self._scope_stack.append((path, type(m)))
        try:
            return super().call_module(m, forward, args, kwargs)
        except BaseException:
            if self.failed_scope_stack is None:  # the innermost module sees the error first
                self.failed_scope_stack = list(self._scope_stack[1:])
            raise
        finally:
            self._scope_stack.pop()

    def create_node(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None, type_expr: Any = None) -> torch.fx.Node:
        # torch.fx's own stack capture (CapturedTraceback) costs ~4 ms a node; walking
        # the Python frames gives the same user frames ~100x faster.
        if isinstance(type_expr, str):
            # a string annotation (``from __future__ import annotations``) makes the
            # GraphModule unpicklable (torch.save fails in its import-block writer)
            type_expr = None
        want_stack = self.record_stack_traces
        self.record_stack_traces = False
        try:
            node = super().create_node(kind, target, args, kwargs, name, type_expr)
        finally:
            self.record_stack_traces = want_stack
        if want_stack and not node.stack_trace:
            node.stack_trace = _user_stack_trace()
        self.node_name_to_scope[node.name] = self._scope_stack[-1]
        return node


# --------------------------------------------------------------------------- tracing


def _package_dir(module: Any) -> str:
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


_TORCH_DIR = _package_dir(torch)


def _quantfx_internal_dirs() -> tuple[str, str]:
    import quantfx

    root = _package_dir(quantfx)
    return root, os.path.join(root, "testing") + os.sep


@functools.lru_cache(maxsize=4096)
def _is_internal_file(filename: str) -> bool:
    """torch's and quantfx's own files (quantfx.testing's models count as user code)."""
    if filename.startswith("<"):  # fx-generated code, exec'd strings
        return True
    path = os.path.abspath(filename)
    qroot, qtesting = _quantfx_internal_dirs()
    return path.startswith(_TORCH_DIR) or (path.startswith(qroot) and not path.startswith(qtesting))


def _user_stack_trace() -> str | None:
    """The user's frames from the outermost ``forward`` inward, formatted like a traceback."""
    frames: list[traceback.FrameSummary] = []
    f = sys._getframe(1)
    while f is not None:
        code = f.f_code
        if not _is_internal_file(code.co_filename):
            frames.append(traceback.FrameSummary(code.co_filename, f.f_lineno, code.co_name))
        f = f.f_back
    frames.reverse()
    start = next((i for i, fr in enumerate(frames) if fr.name == "forward"), None)
    if start is None:
        return None
    return "".join(traceback.StackSummary.from_list(frames[start:]).format()).strip() or None


def _user_frame(tb: Any) -> traceback.FrameSummary | None:
    """Deepest traceback frame outside torch/ and quantfx/ (quantfx.testing's models count as user code)."""
    found = None
    for frame in traceback.extract_tb(tb):
        if not _is_internal_file(frame.filename):
            found = frame
    return found


def _class_ref(cls: type) -> str:
    mod = cls.__module__
    return cls.__qualname__ if mod in ("__main__", "builtins") else f"{mod}.{cls.__qualname__}"


def _tracing_error(model: torch.nn.Module, err: BaseException, scopes: list[tuple[str, type]] | None) -> TracingError:
    """Compose the TracingError message: where, what, how to fix."""
    root_cls = type(model)
    scopes = scopes or []
    frame = _user_frame(err.__traceback__)
    lines = []
    if scopes:
        path, cls = scopes[-1]
        lines.append(f"Symbolic tracing of {root_cls.__name__} failed inside submodule '{path}' ({_class_ref(cls)}).")
    else:
        path, cls = "", root_cls
        lines.append(f"Symbolic tracing of {root_cls.__name__} failed in its own forward ({_class_ref(root_cls)}).")
    if frame is not None:
        lines.append(f"  at {frame.filename}:{frame.lineno}, in {frame.name}")
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    lines.append(f"  error: {type(err).__name__}: {err}")
    lines.append(
        "torch.fx traces forward with symbolic values, so Python control flow that depends on tensor "
        "values (if / while on a tensor, len() or int() of one) cannot be recorded."
    )
    if path:
        same_class = sum(1 for m in model.modules() if type(m) is cls)
        lines.append(
            "Fix: keep that submodule in float and trace around it — pass\n"
            f"    prepare_custom_config=PrepareCustomConfig().set_non_traceable_module_names([{path!r}])\n"
            "to prepare_fx / prepare_qat_fx"
            + (
                f", or, for every {cls.__name__} ({same_class} in this model),\n"
                f"    PrepareCustomConfig().set_non_traceable_module_classes([{_class_ref(cls)}])"
                if cls is not None
                else ""
            )
            + "\n(from quantfx.fx.custom_config import PrepareCustomConfig)."
        )
    else:
        lines.append(
            "Fix: the failing code is in the top-level forward, which cannot be skipped. Move the "
            "data-dependent part into a submodule and pass\n"
            "    prepare_custom_config=PrepareCustomConfig().set_non_traceable_module_names(['<that submodule>'])\n"
            "to prepare_fx, or rewrite it without Python control flow on tensors (e.g. torch.where)."
        )
    return TracingError("\n".join(lines))


def trace_for_quantization(
    model: torch.nn.Module,
    prepare_custom_config: PrepareCustomConfig | dict[str, Any] | None = None,
    *,
    is_standalone_module: bool = False,
    copy_model: bool = True,
) -> GraphModule:
    """Trace ``model`` with a ``QuantizationTracer`` built from ``prepare_custom_config``.

    Non-traceable, standalone and custom (float -> observed) modules become
    leaves. Functional convs / linears on an ``nn.Conv*d`` / ``nn.Linear``
    subclass's own parameters become plain module calls again (see
    ``quantfx.fx.functional_modules``), so fusion sees them. The result carries ``gm.meta["quantfx_node_name_to_scope"]`` and the
    config's preserved attributes (kept across deepcopy). ``model`` is deep-copied
    first unless ``copy_model=False``, so later passes never touch the user's
    modules. Raises ``TracingError`` naming the failing module, line and fix.
    """
    if not isinstance(model, torch.nn.Module):
        raise TracingError(f"Expected a torch.nn.Module to trace, got {type(model).__name__}.")
    config = PrepareCustomConfig.coerce(prepare_custom_config)
    names, classes = config.skipped_module_names_and_classes(is_standalone_module)
    tracer = QuantizationTracer(names, classes)
    try:
        graph = tracer.trace(model)
    except QuantfxError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise _tracing_error(model, err, tracer.failed_scope_stack) from err
    source = copy.deepcopy(model) if copy_model else model
    gm = GraphModule(source, graph, class_name=type(model).__name__)
    node_name_to_scope = dict(tracer.node_name_to_scope)
    restore_module_calls(gm, source, node_name_to_scope)
    gm.meta[NODE_NAME_TO_SCOPE_KEY] = node_name_to_scope
    attach_preserved_attributes(gm, {a: getattr(source, a) for a in config.preserved_attributes if hasattr(source, a)})
    return gm


def attach_preserved_attributes(gm: GraphModule, attrs: dict[str, Any]) -> None:
    """Set ``attrs`` on ``gm`` and record them in ``gm.meta`` so torch.fx keeps them across deepcopy."""
    store = gm.meta.setdefault(PRESERVED_ATTRIBUTES_KEY, {})
    store.update(attrs)
    for name, value in attrs.items():
        setattr(gm, name, value)


# --------------------------------------------------------------------------- example inputs


def _describe(x: Any, depth: int = 0) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor(shape={list(x.shape)}, dtype={x.dtype})"
    if depth > 3:
        return "..."
    if isinstance(x, tuple):
        inner = ", ".join(_describe(v, depth + 1) for v in x)
        return f"({inner}{',' if len(x) == 1 else ''})"
    if isinstance(x, list):
        return "[" + ", ".join(_describe(v, depth + 1) for v in x) + "]"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(v, depth + 1)}" for k, v in x.items()) + "}"
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _forward_signature(model: torch.nn.Module) -> str:
    try:
        return f"forward{inspect.signature(model.forward)}"
    except (TypeError, ValueError):
        return "forward(...)"


def check_example_inputs(model: torch.nn.Module, example_inputs: Any) -> tuple[Any, ...]:
    """Run ``model(*example_inputs)`` once (no grad, eval mode) and return the inputs as a tuple.

    A lone tensor is wrapped into a tuple. Catches wrong example inputs before
    tracing, where the failure would otherwise surface deep inside a pass.
    The model's train/eval flags are restored afterwards, so BatchNorm
    statistics of a training model are not updated. Raises ``ExampleInputsError``.
    """
    name = type(model).__name__
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    elif isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    elif not isinstance(example_inputs, tuple):
        raise ExampleInputsError(
            f"example_inputs for {name} must be a tuple of positional args for {_forward_signature(model)}, "
            f"got {type(example_inputs).__name__}: {_describe(example_inputs)}. "
            "Pass e.g. example_inputs=(torch.randn(1, 3, 224, 224),)."
        )
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(*example_inputs)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ExampleInputsError(
            f"{name}(*example_inputs) failed: {type(err).__name__}: {err}\n"
            f"  example_inputs passed: {_describe(example_inputs)}\n"
            f"  {name}.{_forward_signature(model)}\n"
            "example_inputs is a tuple of positional args: the model must run as model(*example_inputs), "
            "e.g. example_inputs=(torch.randn(1, 3, 224, 224),). Check shapes and dtypes against the model."
        ) from err
    finally:
        for m, training in flags:
            m.training = training
    return example_inputs
