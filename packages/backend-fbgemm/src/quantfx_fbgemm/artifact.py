"""Saving and loading lowered models without pickle: one ``.safetensors`` file, tensors + a JSON graph.

Layout of the file:

* tensors: every parameter / buffer of the lowered model under its qualified
  name -- int8 weights, float32 scales, int64 zero points, float biases,
  uint8 lookup tables. Plain dtypes only (never ``torch.quint8`` ...), so the
  file outlives torch's quantized-dtype deprecation;
* metadata ``quantfx.graph``: JSON with the FX graph (nodes, targets, args)
  and, per module, its class and plain attributes (ints, floats, strings,
  dtypes, qschemes, tuples, small frozen dataclasses such as ``PostOp``).

Loading imports classes and functions *by name* from an allow-list
(``torch.nn`` modules, ``quantfx``, ``quantfx_fbgemm``, ``torch`` / ``operator``
functions minus anything that loads files or code), rebuilds each module with
``cls.__new__`` and its recorded attributes -- no constructor, no pickle, no
code from the file runs. Packed oneDNN weights are rebuilt on first call, so
outputs are bit-exact with the model that was saved.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
import json
import math
import operator
import os
import warnings
from typing import Any

import torch
from torch import nn
from torch.fx import Graph, GraphModule, Node

from quantfx.errors import ValidationError

__all__ = ["FORMAT", "save", "load", "ArtifactError"]

FORMAT = "quantfx-fbgemm/1"
_META_KEY = "quantfx.graph"


class ArtifactError(ValidationError):
    """The file is not a quantfx fbgemm artifact, or names something the loader will not import."""


_MODULE_PREFIXES = ("torch.nn.", "quantfx.", "quantfx_fbgemm.")
_FUNCTION_PREFIXES = ("torch.", "operator.", "math.", "quantfx.", "quantfx_fbgemm.")
_DENIED = ("load", "hub", "jit", "package", "compile", "_dynamo", "_inductor", "save", "utils", "export", "onnx",
           "distributed", "multiprocessing", "library", "classes", "_C._jit", "backends", "cuda", "serialization")
_BUILTINS = {"getattr", "len", "int", "float", "bool", "slice", "range", "tuple", "list", "max", "min", "abs", "sum"}
_MODULE_INTERNALS = frozenset(nn.Module().__dict__) | {"training"}
_FIND_IN = ("torch", "torch.nn.functional", "torch._C._nn", "torch.functional", "operator", "math", "builtins")


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


# ----------------------------------------------------------------------------- values


def _fn_name(fn: Any) -> str:
    if isinstance(fn, torch._ops.OpOverload):
        ns, name = fn.name().split("::")
        return f"torch.ops.{ns}.{name.split('.')[0]}.{fn._overloadname}"
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__name__", None)
    if module == "_operator":
        module = "operator"
    if module and name:
        try:
            if _import_qualified(f"{module}.{name}") is fn:
                return f"{module}.{name}"
        except Exception:  # noqa: BLE001
            pass
    for mod_name in _FIND_IN:
        mod = importlib.import_module(mod_name)
        if name and getattr(mod, name, None) is fn:
            return f"{mod_name}.{name}"
    raise ValidationError(f"cannot save a graph that calls {fn!r}: it has no importable qualified name")


def _encode(value: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"__float__": repr(value)}
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
        tensors[key] = value.detach().contiguous().clone()
        return {"__tensor__": key}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        qualname = f"{cls.__module__}.{cls.__qualname__}"
        return {
            "__dataclass__": qualname,
            "fields": {f.name: _encode(getattr(value, f.name), where, tensors) for f in dataclasses.fields(value)},
        }
    raise ValidationError(
        f"{where}: cannot save a value of type {type(value).__name__} ({value!r}); the artifact format stores "
        "numbers, strings, dtypes, tuples, tensors and dataclasses only"
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor], nodes: dict[str, Node] | None = None) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, nodes) for v in value]
    if not isinstance(value, dict):
        return value
    if "__node__" in value:
        if nodes is None or value["__node__"] not in nodes:
            raise ArtifactError(f"graph references unknown node {value['__node__']!r}")
        return nodes[value["__node__"]]
    if "__tuple__" in value:
        return tuple(_decode(v, tensors, nodes) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v, tensors, nodes) for k, v in value["__dict__"].items()}
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
        return slice(*(_decode(v, tensors, nodes) for v in value["__slice__"]))
    if "__ellipsis__" in value:
        return Ellipsis
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__dataclass__" in value:
        qualname = value["__dataclass__"]
        _check_allowed(qualname, _MODULE_PREFIXES, "dataclass")
        cls = _import_qualified(qualname)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ArtifactError(f"{qualname!r} is not a dataclass")
        return cls(**{k: _decode(v, tensors, nodes) for k, v in value["fields"].items()})
    raise ArtifactError(f"unknown encoded value {value!r}")


# ----------------------------------------------------------------------------- modules


def _encode_module(module: nn.Module, path: str, tensors: dict[str, torch.Tensor], root: bool = False) -> dict[str, Any]:
    cls = type(module)
    qualname = "torch.nn.modules.module.Module" if root else f"{cls.__module__}.{cls.__qualname__}"
    if not qualname.startswith(_MODULE_PREFIXES):
        raise ValidationError(
            f"cannot save module {path or '<root>'!r} of type {qualname}: the artifact stores torch.nn, quantfx "
            "and quantfx_fbgemm modules only (a custom module left in float would need its code at load time); "
            "keep it out of the traced graph or quantize it"
        )
    prefix = f"{path}." if path else ""
    attrs = {}
    for key, value in module.__dict__.items():
        if key in _MODULE_INTERNALS or (root and not isinstance(value, torch.Tensor)):
            continue  # a GraphModule root keeps only tensors reached by get_attr; its graph is stored apart
        if key == "_packed":
            value = None  # opaque oneDNN packing, rebuilt on first call
        attrs[key] = _encode(value, f"{prefix}{key}", tensors)
    params = {}
    for name, p in module._parameters.items():
        params[name] = None if p is None else f"{prefix}{name}"
        if p is not None:
            tensors[f"{prefix}{name}"] = p.detach().contiguous().clone()
    buffers = {}
    for name, b in module._buffers.items():
        buffers[name] = None if b is None else f"{prefix}{name}"
        if b is not None:
            tensors[f"{prefix}{name}"] = b.detach().contiguous().clone()
    children = {}
    for name, child in module._modules.items():
        if isinstance(child, GraphModule) and path:
            raise ValidationError(f"cannot save nested GraphModule {prefix}{name}")
        children[name] = None if child is None else _encode_module(child, f"{prefix}{name}", tensors)
    return {
        "type": qualname,
        "training": module.training,
        "attrs": attrs,
        "parameters": params,
        "buffers": buffers,
        "non_persistent": sorted(module._non_persistent_buffers_set),
        "children": children,
    }


def _decode_module(spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    qualname = spec["type"]
    _check_allowed(qualname, _MODULE_PREFIXES, "module class")
    cls = _import_qualified(qualname)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ArtifactError(f"{qualname!r} is not a torch.nn.Module")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in spec["attrs"].items():
        module.__dict__[key] = _decode(value, tensors)
    for name, key in spec["parameters"].items():
        module._parameters[name] = None if key is None else nn.Parameter(tensors[key], requires_grad=False)
    for name, key in spec["buffers"].items():
        module._buffers[name] = None if key is None else tensors[key]
    module._non_persistent_buffers_set = set(spec.get("non_persistent", []))
    for name, child in spec["children"].items():
        module._modules[name] = None if child is None else _decode_module(child, tensors)
    module.train(bool(spec["training"]))
    return module


# ----------------------------------------------------------------------------- graph


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


def _decode_graph(spec: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> Graph:
    graph = Graph()
    nodes: dict[str, Node] = {}
    for item in spec:
        op, target = item["op"], item["target"]
        if op == "call_function":
            _check_allowed(target, _FUNCTION_PREFIXES, "function")
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
        args = _decode(item["args"], tensors, nodes)
        kwargs = _decode(item["kwargs"], tensors, nodes)
        node = graph.create_node(op, target, tuple(args), kwargs, name=item["name"])
        if op == "placeholder" and item.get("type") == "Tensor":
            node.type = torch.Tensor
        nodes[item["name"]] = node
    graph.lint()
    return graph


# ----------------------------------------------------------------------------- public


def save(lowered: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write a lowered fbgemm / x86 model (a GraphModule) to ``path`` as one safetensors file."""
    from safetensors.torch import save_file

    if not isinstance(lowered, GraphModule):
        raise ValidationError(
            f"fbgemm/x86 save expects the GraphModule returned by lowering (convert_fx / quantfx.quantize), "
            f"got {type(lowered).__name__}"
        )
    tensors: dict[str, torch.Tensor] = {}
    root = _encode_module(lowered, "", tensors, root=True)
    report = getattr(lowered, "quantfx_lowering_report", None)
    meta = {
        "format": FORMAT,
        "torch": torch.__version__,
        "backend": getattr(lowered, "quantfx_backend", None),
        "float_ops": list(getattr(lowered, "quantfx_float_ops", [])),
        "report": dataclasses.asdict(report) if dataclasses.is_dataclass(report) else None,
        "root": root,
        "graph": _encode_graph(lowered, tensors),
    }
    save_file(tensors, os.fspath(path), metadata={_META_KEY: json.dumps(meta), "format": FORMAT})


def load(path: str | os.PathLike[str]) -> GraphModule:
    """Rebuild the model ``save`` wrote; imports only allow-listed classes / functions (see module docstring)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.fspath(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT or _META_KEY not in metadata:
        raise ArtifactError(
            f"{path} is not a quantfx fbgemm/x86 artifact (format {metadata.get('format')!r}, expected {FORMAT!r}); "
            "write it with quantfx.get_backend('x86').save(model, path)"
        )
    meta = json.loads(metadata[_META_KEY])
    tensors = load_file(path)
    root = _decode_module(meta["root"], tensors)
    graph = _decode_graph(meta["graph"], tensors)
    gm = GraphModule(root, graph, class_name="LoweredX86Module")
    gm.eval()
    gm.quantfx_backend = meta.get("backend")
    gm.quantfx_float_ops = list(meta.get("float_ops", []))
    if meta.get("report") is not None:
        from quantfx_fbgemm.lowering import LoweringReport

        rep = meta["report"]
        gm.quantfx_lowering_report = LoweringReport(
            int8=[tuple(x) for x in rep.get("int8", [])],
            float_ops=[tuple(x) for x in rep.get("float_ops", [])],
            saturation=list(rep.get("saturation", [])),
            wide_inputs=list(rep.get("wide_inputs", [])),
        )
        _warn_if_saturating(gm.quantfx_lowering_report, path)
    return gm


def _warn_if_saturating(report: Any, path: str) -> None:
    from quantfx_fbgemm import kernels
    from quantfx_fbgemm.lowering import SaturationWarning

    wide = getattr(report, "wide_inputs", [])
    if wide and kernels.needs_reduce_range():
        warnings.warn(
            f"{path} was quantized with full-range 8-bit activations feeding {', '.join(wide)}, but this CPU "
            f"({kernels.cpu_isa()}, no VNNI) saturates u8 x s8 products at int16: expect lost accuracy. "
            "Re-quantize with backend 'fbgemm' (7-bit activations, exact on every x86 CPU) for this fleet.",
            SaturationWarning,
            stacklevel=3,
        )


# keep references used only through the allow-list visible to linters
_ = (builtins, operator)
