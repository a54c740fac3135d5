"""Observer insertion from annotations: the core of ``prepare_pt2e`` / ``prepare_qat_pt2e``.

1. Collect one spec per annotated edge ``(producer, consumer)`` and per annotated output.
2. Group what must share one observer (union-find), like torchao:
   ``SharedQuantizationSpec`` links explicitly; an input edge whose spec matches
   (dtype, range, qscheme, axis, fixed qparams) the producer's output spec or
   another user's edge spec shares implicitly, so no requantize is inserted
   (``allow_implicit_sharing=False`` on the consumer turns that off).
3. Build one observer / fake-quant per group from quantfx's observers.
4. Insert ``call_module`` nodes: after a node for its output, on an edge for an input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from quantfx.errors import ValidationError
from quantfx.observers import is_observer_or_fake_quant
from quantfx.pt2e.derived import DerivedObserverOrFakeQuantize
from quantfx.pt2e.graph_utils import copy_val_meta
from quantfx.quantizer.quantizer import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
    describe_edge_or_node,
)
from quantfx.quantizer.utils import describe_spec

__all__ = ["prepare_graph", "edge_or_node_to_qspec", "edge_or_node_to_group_id", "create_obs_or_fq", "OBSERVER_PREFIX"]

OBSERVER_PREFIX = "activation_post_process_"

_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)


def edge_or_node_to_qspec(model: GraphModule) -> dict[EdgeOrNode, QuantizationSpecBase | None]:
    """Every annotated edge ``(input, node)`` and output ``node`` with its spec, in graph order."""
    result: dict[EdgeOrNode, QuantizationSpecBase | None] = {}
    for node in model.graph.nodes:
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if annotation is None:
            continue
        inputs = set(node.all_input_nodes)
        for inp, spec in annotation.input_qspec_map.items():
            if inp not in inputs:
                raise ValidationError(
                    f"node '{node.name}' is annotated with a spec for input '{getattr(inp, 'name', inp)}', which is not "
                    f"one of its inputs ({sorted(n.name for n in inputs)}); annotate the edge on the node that reads it"
                )
            _check_spec(spec, (inp, node))
            result[(inp, node)] = spec
        if annotation.output_qspec is not None:
            _check_spec(annotation.output_qspec, node)
            result[node] = annotation.output_qspec
    for key, spec in result.items():
        targets: list[Any] = []
        if isinstance(spec, SharedQuantizationSpec):
            targets = [spec.edge_or_node]
        elif isinstance(spec, DerivedQuantizationSpec):
            targets = list(spec.derived_from)
        for target in targets:
            if target not in result or result[target] is None:
                raise ValidationError(
                    f"the {describe_edge_or_node(key)} is annotated with {describe_spec(spec)}, but the "
                    f"{describe_edge_or_node(target)} has no quantization spec to share or derive from; annotate it "
                    f"(its consumer's input_qspec_map for an edge, output_qspec for a node) or use a QuantizationSpec"
                )
    return result


def _check_spec(spec: Any, where: EdgeOrNode) -> None:
    if spec is not None and not isinstance(spec, QuantizationSpecBase):
        raise ValidationError(
            f"the {describe_edge_or_node(where)} is annotated with {type(spec).__name__}, not a quantfx.quantizer "
            f"spec (QuantizationSpec, SharedQuantizationSpec, DerivedQuantizationSpec, FixedQParamsQuantizationSpec); "
            f"torchao / torch.ao specs are not accepted: import them from quantfx.quantizer"
        )


# --------------------------------------------------------------------------- sharing groups (union-find)


def _find(x: EdgeOrNode, parent: dict[EdgeOrNode, EdgeOrNode]) -> EdgeOrNode:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        parent[x], x = root, parent[x]
    return root


def _union(parent_key: EdgeOrNode, child: EdgeOrNode, parent: dict[EdgeOrNode, EdgeOrNode], qspecs: dict) -> None:
    root_parent = _find(parent_key, parent)
    root_child = _find(child, parent)
    if root_parent == root_child:
        return
    parent_spec = qspecs[root_parent]
    if isinstance(parent_spec, SharedQuantizationSpec) and parent_spec.edge_or_node == root_child:
        # the parent already points at the child: link the other way, or we would form a cycle
        parent[root_parent] = root_child
    else:
        parent[root_child] = root_parent


def _unwrap(spec: Any, qspecs: dict, parent: dict) -> Any:
    seen = set()
    while isinstance(spec, SharedQuantizationSpec):
        root = _find(spec.edge_or_node, parent)
        if root in seen:
            break
        seen.add(root)
        spec = qspecs[root]
    return spec


_COMPARED = ("dtype", "is_dynamic", "quant_min", "quant_max", "qscheme", "ch_axis", "scale", "zero_point")


def _same_quantization(a: Any, b: Any) -> bool:
    """Do two specs quantize identically (so one observer can serve both)?"""
    if a is None or b is None:
        return False
    return all(
        (hasattr(a, f) and hasattr(b, f) and getattr(a, f) == getattr(b, f)) or (not hasattr(a, f) and not hasattr(b, f))
        for f in _COMPARED
    )


def edge_or_node_to_group_id(qspecs: dict[EdgeOrNode, Any]) -> dict[EdgeOrNode, int]:
    """Group id per edge / node; members of one group share one observer instance."""
    parent: dict[EdgeOrNode, EdgeOrNode] = {k: k for k in qspecs}

    def share_explicitly(key: EdgeOrNode, spec: Any) -> None:
        if isinstance(spec, SharedQuantizationSpec):
            _union(spec.edge_or_node, key, parent, qspecs)

    def share_implicitly(edge: EdgeOrNode, edge_root_spec: Any, other: EdgeOrNode) -> None:
        if other not in qspecs:
            return
        if _same_quantization(_unwrap(qspecs[other], qspecs, parent), edge_root_spec):
            _union(other, edge, parent, qspecs)

    for key, spec in qspecs.items():
        if isinstance(key, Node):
            share_explicitly(key, spec)
            continue
        producer, consumer = key
        annotation = consumer.meta.get(Q_ANNOTATION_KEY)
        if annotation is None or annotation.allow_implicit_sharing:
            root_spec = _unwrap(spec, qspecs, parent)
            # other users of the same tensor first, then the producer's output (the reverse order can cycle)
            for user in producer.users:
                if user is not consumer:
                    share_implicitly(key, root_spec, (producer, user))
            share_implicitly(key, root_spec, producer)
        share_explicitly(key, spec)

    group_of_root: dict[EdgeOrNode, int] = {}
    groups: dict[EdgeOrNode, int] = {}
    for key in parent:
        root = _find(key, parent)
        groups[key] = group_of_root.setdefault(root, len(group_of_root))
    return groups


# --------------------------------------------------------------------------- observers


def _ctor_with_args(ctor: Any, **kwargs: Any) -> Any:
    if hasattr(ctor, "with_args"):
        return ctor.with_args(**kwargs)()
    return ctor(**kwargs)


def create_obs_or_fq(spec: Any, built: dict[EdgeOrNode, Any], is_qat: bool, where: EdgeOrNode) -> Any:
    """The quantfx observer (PTQ) or fake-quant (QAT) for ``spec``; None for a float spec."""
    if spec is None:
        return None
    if isinstance(spec, SharedQuantizationSpec):
        return built[spec.edge_or_node]
    if isinstance(spec, DerivedQuantizationSpec):
        return DerivedObserverOrFakeQuantize(
            dtype=spec.dtype,
            obs_or_fqs=[built[k] for k in spec.derived_from],
            derive_qparams_fn=spec.derive_qparams_fn,
            quant_min=spec.quant_min,
            quant_max=spec.quant_max,
            qscheme=spec.qscheme,
            ch_axis=spec.ch_axis,
            is_dynamic=spec.is_dynamic,
        )
    if isinstance(spec, FixedQParamsQuantizationSpec):
        from quantfx.fake_quantize import FixedQParamsFakeQuantize
        from quantfx.observers import FixedQParamsObserver

        qmin, qmax = spec.quant_min, spec.quant_max
        if qmin is None or qmax is None:
            info = torch.iinfo(spec.dtype)
            qmin, qmax = int(info.min), int(info.max)
        kwargs: dict[str, Any] = {"scale": spec.scale, "zero_point": spec.zero_point, "dtype": spec.dtype,
                                  "quant_min": qmin, "quant_max": qmax}
        if spec.qscheme is not None:
            kwargs["qscheme"] = spec.qscheme
        observer = FixedQParamsObserver.with_args(**kwargs)
        return FixedQParamsFakeQuantize(observer=observer) if is_qat else observer()
    assert isinstance(spec, QuantizationSpec), spec
    kwargs = {"dtype": spec.dtype, "is_dynamic": spec.is_dynamic}
    if spec.quant_min is not None:
        kwargs["quant_min"], kwargs["quant_max"] = spec.quant_min, spec.quant_max
    if spec.qscheme is not None:
        kwargs["qscheme"] = spec.qscheme
        if spec.qscheme in _PER_CHANNEL:
            kwargs["ch_axis"] = spec.ch_axis
    try:
        obs = _ctor_with_args(spec.observer_or_fake_quant_ctr, **kwargs)
    except TypeError as exc:
        raise ValidationError(
            f"building the observer for the {describe_edge_or_node(where)} from {describe_spec(spec)} failed: {exc}"
        ) from exc
    if not is_observer_or_fake_quant(obs):
        raise ValidationError(
            f"the spec of the {describe_edge_or_node(where)} built a {type(obs).__module__}.{type(obs).__name__}; "
            f"PT2E inserts quantfx observers / fake-quants: use classes from quantfx.observers / "
            f"quantfx.fake_quantize (torchao's and torch.ao's observers are not supported)"
        )
    return obs


def _obs_or_fq_map(qspecs: dict[EdgeOrNode, Any], groups: dict[EdgeOrNode, int], is_qat: bool) -> dict[EdgeOrNode, Any]:
    built: dict[EdgeOrNode, Any] = {}
    by_group: dict[int, Any] = {}
    pending = list(qspecs.items())
    # a derived / shared spec needs its sources built first; sources come earlier in graph order
    # except when they do not, so retry until nothing moves
    while pending:
        progressed, rest = False, []
        for key, spec in pending:
            gid = groups[key]
            if gid in by_group:
                built[key] = by_group[gid]
                progressed = True
                continue
            deps = [spec.edge_or_node] if isinstance(spec, SharedQuantizationSpec) else (
                list(spec.derived_from) if isinstance(spec, DerivedQuantizationSpec) else []
            )
            if any(d not in built for d in deps):
                rest.append((key, spec))
                continue
            by_group[gid] = create_obs_or_fq(spec, built, is_qat, key)
            built[key] = by_group[gid]
            progressed = True
        if not progressed:
            names = ", ".join(describe_edge_or_node(k) for k, _ in rest)
            raise ValidationError(f"circular SharedQuantizationSpec / DerivedQuantizationSpec references among: {names}")
        pending = rest
    return built


# --------------------------------------------------------------------------- insertion


class _Inserter:
    def __init__(self, model: GraphModule, obs_map: dict[EdgeOrNode, Any]) -> None:
        self.model = model
        self.obs_map = obs_map
        self.names: dict[int, str] = {}
        self.observer_nodes: set[Node] = set()
        self.device = _unique_device(model)

    def _name_for(self, obs: Any, label: str) -> str:
        key = id(obs)
        if key not in self.names:
            i = len(self.names)
            while hasattr(self.model, f"{OBSERVER_PREFIX}{i}"):
                i += 1
            name = f"{OBSERVER_PREFIX}{i}"
            if self.device is not None:
                obs.to(self.device)
            if getattr(obs, "node_name", None) is None and hasattr(obs, "node_name"):
                obs.node_name = label
            self.model.add_submodule(name, obs)
            self.names[key] = name
        return self.names[key]

    def insert_after(self, node: Node, obs: Any, label: str) -> Node:
        name = self._name_for(obs, label)
        with self.model.graph.inserting_after(node):
            obs_node = self.model.graph.call_module(name, (node,))
        copy_val_meta(node, obs_node)
        self.observer_nodes.add(obs_node)
        return obs_node

    def original(self, arg: Node) -> Node:
        while arg in self.observer_nodes:
            arg = arg.args[0]  # type: ignore[assignment]
        return arg

    def input_arg(self, node: Node, arg: Any) -> Any:
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.input_arg(node, a) for a in arg)
        if not isinstance(arg, Node):
            return arg
        producer = self.original(arg)
        edge = (producer, node)
        obs = self.obs_map.get(edge)
        if obs is None:
            return arg
        if self.obs_map.get(producer) is obs:
            return arg  # the producer's output observer is this edge's observer: already in place
        for user in arg.users:  # another consumer already observes this tensor with the same instance
            if user in self.observer_nodes and self.model.get_submodule(str(user.target)) is obs:
                return user
        return self.insert_after(arg, obs, f"{producer.name} -> {node.name}")

    def output(self, node: Node) -> None:
        obs = self.obs_map.get(node)
        if obs is None or not isinstance(node.meta.get("val"), torch.Tensor):
            return
        users = list(node.users)
        obs_node = self.insert_after(node, obs, node.name)
        for user in users:
            user.replace_input_with(node, obs_node)


def _unique_device(model: torch.nn.Module) -> torch.device | None:
    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    return next(iter(devices)) if len(devices) == 1 else None


def prepare_graph(model: GraphModule, is_qat: bool, obs_or_fq_callback: Any = None) -> GraphModule:
    """Insert observers (``is_qat``: fake-quants) into ``model`` in place, following its annotations."""
    nodes = list(model.graph.nodes)
    qspecs = edge_or_node_to_qspec(model)
    groups = edge_or_node_to_group_id(qspecs)
    obs_map = _obs_or_fq_map(qspecs, groups, is_qat)
    if obs_or_fq_callback is not None:
        obs_or_fq_callback(model, obs_map)
    inserter = _Inserter(model, obs_map)
    for node in nodes:
        if Q_ANNOTATION_KEY not in node.meta:
            continue
        node.args = inserter.input_arg(node, node.args)
        node.kwargs = {k: inserter.input_arg(node, v) for k, v in node.kwargs.items()}
        inserter.output(node)
    model.recompile()
    return model
