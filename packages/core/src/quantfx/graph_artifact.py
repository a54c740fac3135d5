"""Lowered GraphModules to one ``.safetensors`` file and back, without pickle: tensors + a JSON graph.

A backend whose lowered model is a ``torch.fx.GraphModule`` of plain modules
and kernel calls can save it with :func:`save_graph_module` and read it back
with :func:`load_graph_module`, instead of each backend writing its own codec.

Layout of the file:

* tensors: every parameter / buffer under its qualified name, plus tensor
  attributes. Plain dtypes only (a quantized dtype such as ``torch.quint8`` is
  refused: torch 2.13 deprecates them), so the file outlives that deprecation;
* metadata ``quantfx.graph``: JSON with the FX graph (nodes, targets, args)
  and, per module, its class and plain attributes (numbers, strings, dtypes,
  tuples / lists, small frozen dataclasses), plus the caller's ``extra``.

Loading imports classes and functions *by name* from an allow-list
(``torch.nn`` modules, ``quantfx``, the prefixes the backend passes,
``torch`` / ``operator`` functions minus anything that loads files or code,
``torch.ops.*`` kernels) and rebuilds each module with ``cls.__new__`` and its
recorded attributes: no constructor, no pickle, no code from the file runs.
Attributes named in ``transient_attrs`` (packed kernel weights) are stored as
``None`` and rebuilt by the module on first call.

safetensors is imported only here; a backend using this module lists it in
its own dependencies.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.fx import Graph, GraphModule, Node

from quantfx.errors import ValidationError

__all__ = ["ArtifactError", "load_graph_module", "read_metadata", "save_graph_module"]

_META_KEY = "quantfx.graph"
_FORMAT_KEY = "format"


class ArtifactError(ValidationError):
    """The file is not the expected quantfx artifact, or names something the loader will not import."""


_BASE_MODULE_PREFIXES = ("torch.nn.", "quantfx.")
_BASE_FUNCTION_PREFIXES = ("torch.", "operator.", "math.", "quantfx.")
_DENIED = ("load", "hub", "jit", "package", "compile", "_dynamo", "_inductor", "save", "utils", "export", "onnx",
           "distributed", "multiprocessing", "library", "classes", "_C._jit", "backends", "cuda", "serialization")
_BUILTINS = {"getattr", "len", "int", "float", "bool", "slice", "range", "tuple", "list", "max", "min", "abs", "sum"}
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"training"}
_FIND_IN = ("torch", "torch.nn.functional", "torch._C._nn", "torch.functional", "operator", "math", "builtins")
_QUANTIZED_DTYPES = {torch.quint8, torch.qint8, torch.qint32, torch.quint4x2, torch.quint2x4}


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as exc:  # pragma: no cover - exercised only without the dependency
        raise ImportError(
            "saving / loading quantfx graph artifacts needs safetensors: pip install 'safetensors>=0.4'"
        ) from exc
    return safetensors


def _import_qualified(qualname: str) -> Any:
    parts = qualname.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ArtifactError(f"cannot resolve {qualname!r}")


def _check_allowed(qualname: str, prefixes: tuple[str, ...], what: str) -> None:
    if qualname.startswith("builtins."):
        if qualname.removeprefix("builtins.") in _BUILTINS:
            return
        raise ArtifactError(f"artifact names the builtin {qualname!r}; only {sorted(_BUILTINS)} are allowed")
    if not qualname.startswith(prefixes):
        raise ArtifactError(
            f"artifact names the {what} {qualname!r}, outside the allow-list ({', '.join(prefixes)}); "
            "refusing to import it. Re-save the model with this quantfx version, or load it in a trusted process "
            "with your own code."
        )
    segments = qualname.split(".")
    if any(seg in _DENIED or seg.startswith("__") for seg in segments[1:]) and not qualname.startswith("torch.ops."):
        raise ArtifactError(f"artifact names the {what} {qualname!r}, which the loader never imports")


def _fn_name(fn: Any) -> str:
    if isinstance(fn, torch._ops.OpOverload):
        ns, name = fn.name().split("::")
        return f"torch.ops.{ns}.{name.split('.')[0]}.{fn._overloadname}"
    if isinstance(fn, torch._ops.OpOverloadPacket):
        ns, name = fn._qualified_op_name.split("::")
        return f"torch.ops.{ns}.{name}"
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__name__", None)
    if module == "_operator":
        module = "operator"
    if module and name:
        try:
            if _import_qualified(f"{module}.{name}") is fn:
                return f"{module}.{name}"
        except Exception:  # noqa: BLE001, S110 - not importable under its own name: search the modules below
            pass
    for mod_name in _FIND_IN:
        mod = importlib.import_module(mod_name)
        if name and getattr(mod, name, None) is fn:
            return f"{mod_name}.{name}"
    raise ValidationError(f"cannot save a graph that calls {fn!r}: it has no importable qualified name")


def _check_tensor(value: torch.Tensor, where: str) -> torch.Tensor:
    if value.dtype in _QUANTIZED_DTYPES or value.is_quantized:
        raise ValidationError(
            f"{where}: tensor of quantized dtype {value.dtype} cannot be saved (torch deprecates these dtypes); "
            "store its integers (int_repr) and qparams instead, or list the attribute in transient_attrs"
        )
    return value.detach().contiguous().clone()


def _encode(value: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, Node):
        return {"__node__": value.name}
    if isinstance(value, torch.Size):
        return {"__tuple__": [int(v) for v in value]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where, tensors) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValidationError(f"{where}: dict with non-string keys cannot be saved")
        return {"__dict__": {k: _encode(v, where, tensors) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"__memory_format__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.qscheme):
        return {"__qscheme__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, slice):
        return {"__slice__": [_encode(v, where, tensors) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"__ellipsis__": True}
    if isinstance(value, torch.Tensor):
        key = f"__attr__.{where}.{len(tensors)}"
        tensors[key] = _check_tensor(value, where)
        return {"__tensor__": key}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {
            "__dataclass__": f"{cls.__module__}.{cls.__qualname__}",
            "fields": {f.name: _encode(getattr(value, f.name), where, tensors) for f in dataclasses.fields(value)},
        }
    raise ValidationError(
        f"{where}: cannot save a value of type {type(value).__name__} ({value!r}); the artifact format stores "
        "numbers, strings, dtypes, tuples, tensors and dataclasses only"
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor], prefixes: tuple[str, ...], nodes: dict[str, Node] | None = None) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, prefixes, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    if "__node__" in value:
        if nodes is None or value["__node__"] not in nodes:
            raise ArtifactError(f"graph references unknown node {value['__node__']!r}")
        return nodes[value["__node__"]]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors, prefixes, nodes) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, tensors, prefixes, nodes) for k, v in value["__dict__"].items()}
    if "__float__" in value:
        return float(value["__float__"])
    if "__dtype__" in value:
        dt = getattr(torch, value["__dtype__"], None)
        if not isinstance(dt, torch.dtype):
            raise ArtifactError(f"unknown dtype {value['__dtype__']!r}")
        return dt
    if "__memory_format__" in value:
        return getattr(torch, value["__memory_format__"])
    if "__qscheme__" in value:
        return getattr(torch, value["__qscheme__"])
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__slice__" in value:
        return slice(*(_decode(v, tensors, prefixes, nodes) for v in value["__slice__"]))
    if "__ellipsis__" in value:
        return Ellipsis
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__dataclass__" in value:
        qualname = value["__dataclass__"]
        _check_allowed(qualname, prefixes, "dataclass")
        cls = _import_qualified(qualname)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ArtifactError(f"{qualname!r} is not a dataclass")
        return cls(**{k: _decode(v, tensors, prefixes, nodes) for k, v in value["fields"].items()})
    raise ArtifactError(f"unknown encoded value {value!r}")


def _encode_module(module: nn.Module, path: str, tensors: dict[str, torch.Tensor], prefixes: tuple[str, ...],
                   transient: frozenset[str], root: bool = False) -> dict[str, Any]:
    cls = type(module)
    qualname = "torch.nn.modules.module.Module" if root else f"{cls.__module__}.{cls.__qualname__}"
    if not qualname.startswith(prefixes):
        raise ValidationError(
            f"cannot save module {path or '<root>'!r} of type {qualname}: the artifact stores modules from "
            f"{', '.join(p.rstrip('.') for p in prefixes)} only (a custom module left in float would need its code "
            "at load time); keep it out of the traced graph or quantize it"
        )
    prefix = f"{path}." if path else ""
    attrs = {}
    for key, value in module.__dict__.items():
        if key in _MODULE_INTERNALS or (root and not isinstance(value, torch.Tensor)):
            continue  # a GraphModule root keeps only tensors reached by get_attr; its graph is stored apart
        attrs[key] = None if key in transient else _encode(value, f"{prefix}{key}", tensors)
    params = {}
    for name, p in module._parameters.items():
        params[name] = None if p is None else f"{prefix}{name}"
        if p is not None:
            tensors[f"{prefix}{name}"] = _check_tensor(p, f"{prefix}{name}")
    buffers = {}
    for name, b in module._buffers.items():
        buffers[name] = None if b is None else f"{prefix}{name}"
        if b is not None:
            tensors[f"{prefix}{name}"] = _check_tensor(b, f"{prefix}{name}")
    children = {}
    for name, child in module._modules.items():
        if isinstance(child, GraphModule):
            raise ValidationError(f"cannot save nested GraphModule {prefix}{name}; save it on its own")
        children[name] = None if child is None else _encode_module(child, f"{prefix}{name}", tensors, prefixes, transient)
    return {
        "type": qualname,
        "training": module.training,
        "attrs": attrs,
        "parameters": params,
        "buffers": buffers,
        "non_persistent": sorted(module._non_persistent_buffers_set),
        "children": children,
    }


def _decode_module(spec: dict[str, Any], tensors: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> nn.Module:
    qualname = spec["type"]
    _check_allowed(qualname, prefixes, "module class")
    cls = _import_qualified(qualname)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ArtifactError(f"{qualname!r} is not a torch.nn.Module")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in spec["attrs"].items():
        module.__dict__[key] = _decode(value, tensors, prefixes)
    for name, key in spec["parameters"].items():
        module._parameters[name] = None if key is None else nn.Parameter(tensors[key], requires_grad=False)
    for name, key in spec["buffers"].items():
        module._buffers[name] = None if key is None else tensors[key]
    module._non_persistent_buffers_set = set(spec.get("non_persistent", []))
    for name, child in spec["children"].items():
        module._modules[name] = None if child is None else _decode_module(child, tensors, prefixes)
    module.train(bool(spec["training"]))
    return module


def _encode_graph(gm: GraphModule, tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    nodes = []
    for node in gm.graph.nodes:
        where = f"node {node.name}"
        if node.op == "call_function":
            target: Any = _fn_name(node.target)
        elif isinstance(node.target, str):
            target = node.target
        else:
            raise ValidationError(f"{where}: target {node.target!r} cannot be saved")
        nodes.append({
            "name": node.name,
            "op": node.op,
            "target": target,
            "args": _encode(node.args, where, tensors),
            "kwargs": _encode(dict(node.kwargs), where, tensors),
            "type": None if node.type is None else getattr(node.type, "__name__", None),
        })
    return nodes


def _decode_graph(spec: list[dict[str, Any]], tensors: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> Graph:
    graph = Graph()
    nodes: dict[str, Node] = {}
    for item in spec:
        op, target = item["op"], item["target"]
        if op == "call_function":
            _check_allowed(target, prefixes, "function")
            target = _import_qualified(target)
            if not callable(target):
                raise ArtifactError(f"{item['target']!r} is not callable")
        elif op == "call_method":
            if not isinstance(target, str) or not target.isidentifier() or (
                target.startswith("__") and target != "__getitem__"
            ):
                raise ArtifactError(f"node {item['name']!r}: refusing method name {target!r}")
        elif op not in ("placeholder", "get_attr", "call_module", "output"):
            raise ArtifactError(f"node {item['name']!r}: unknown op {op!r}")
        args = _decode(item["args"], tensors, prefixes, nodes)
        kwargs = _decode(item["kwargs"], tensors, prefixes, nodes)
        node = graph.create_node(op, target, tuple(args), kwargs, name=item["name"])
        if op == "placeholder" and item.get("type") == "Tensor":
            node.type = torch.Tensor
        nodes[item["name"]] = node
    graph.lint()
    return graph


def _prefixes(base: tuple[str, ...], allowed: Iterable[str]) -> tuple[str, ...]:
    return base + tuple(p if p.endswith(".") else f"{p}." for p in allowed)


def save_graph_module(
    gm: GraphModule,
    path: str | os.PathLike[str],
    *,
    format: str,
    allowed_modules: Iterable[str] = (),
    transient_attrs: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``gm`` to ``path`` as one safetensors file (tensors + JSON graph), tagged with ``format``.

    ``allowed_modules``: extra module-path prefixes (e.g. ``"quantfx_qnnpack"``)
    whose classes / functions the graph may name; ``transient_attrs``: module
    attributes saved as ``None`` (packed weights rebuilt on first call);
    ``extra``: JSON-serialisable metadata returned by :func:`load_graph_module`.
    """
    if not isinstance(gm, GraphModule):
        raise ValidationError(f"save_graph_module expects a torch.fx.GraphModule, got {type(gm).__name__}")
    allowed = tuple(allowed_modules)
    tensors: dict[str, torch.Tensor] = {}
    root = _encode_module(gm, "", tensors, _prefixes(_BASE_MODULE_PREFIXES, allowed), frozenset(transient_attrs), root=True)
    meta = {"format": format, "torch": torch.__version__, "extra": extra or {}, "root": root, "graph": _encode_graph(gm, tensors)}
    try:
        text = json.dumps(meta)
    except TypeError as exc:
        raise ValidationError(f"save_graph_module: extra metadata is not JSON-serialisable ({exc})") from exc
    _safetensors().torch.save_file(tensors, os.fspath(path), metadata={_META_KEY: text, _FORMAT_KEY: format})


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The safetensors header metadata of ``path`` (``format`` says which artifact it is)."""
    with _safetensors().safe_open(os.fspath(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_graph_module(
    path: str | os.PathLike[str],
    *,
    format: str,
    allowed_modules: Iterable[str] = (),
    class_name: str = "LoadedGraphModule",
) -> tuple[GraphModule, dict[str, Any]]:
    """Rebuild what :func:`save_graph_module` wrote; returns ``(graph_module, extra)``.

    Imports only allow-listed classes / functions (see the module docstring);
    raises :class:`ArtifactError` when the file is another format.
    """
    path = os.fspath(path)
    try:
        metadata = read_metadata(path)
    except Exception as exc:
        raise ArtifactError(f"{path} is not a safetensors file ({exc}); expected a quantfx {format!r} artifact") from exc
    if metadata.get(_FORMAT_KEY) != format or _META_KEY not in metadata:
        raise ArtifactError(
            f"{path} is not a {format!r} artifact (its format is {metadata.get(_FORMAT_KEY)!r}); "
            "write it with the same backend's save()"
        )
    allowed = tuple(allowed_modules)
    meta = json.loads(metadata[_META_KEY])
    tensors = _safetensors().torch.load_file(path)
    root = _decode_module(meta["root"], tensors, _prefixes(_BASE_MODULE_PREFIXES, allowed))
    graph = _decode_graph(meta["graph"], tensors, _prefixes(_BASE_FUNCTION_PREFIXES, allowed))
    gm = GraphModule(root, graph, class_name=class_name)
    gm.eval()
    return gm, dict(meta.get("extra", {}))
