"""Helpers for writing quantizers: annotate edges / outputs, skip claimed nodes, filter by module.

``annotate_input_qspec_map`` and ``annotate_output_qspec`` refuse to silently
replace a different spec already on the same edge: two annotators claiming one
edge is a quantizer bug, reported with both nodes named
(:class:`quantfx.errors.AnnotationConflictError`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.fx import Node

from quantfx.errors import AnnotationConflictError
from quantfx.quantizer.quantizer import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
    describe_edge_or_node,
)

__all__ = [
    "annotate_input_qspec_map",
    "annotate_output_qspec",
    "is_annotated",
    "mark_annotated",
    "get_module_name_filter",
    "get_module_type_filter",
    "module_path",
    "describe_spec",
]


def _qscheme_name(qscheme: Any) -> str:
    return str(qscheme).removeprefix("torch.") if qscheme is not None else "default qscheme"


def _ctor_name(ctor: Any) -> str:
    func = getattr(getattr(ctor, "p", None), "func", ctor)
    return getattr(func, "__name__", repr(func))


def describe_spec(spec: QuantizationSpecBase | None) -> str:
    """Short, readable form of a spec for error messages (the dataclass repr holds whole factories)."""
    if spec is None:
        return "None (float)"
    if isinstance(spec, QuantizationSpec):
        rng = f"[{spec.quant_min}, {spec.quant_max}]" if spec.quant_min is not None else "full range"
        axis = f", ch_axis={spec.ch_axis}" if spec.ch_axis is not None else ""
        dyn = ", dynamic" if spec.is_dynamic else ""
        return (
            f"QuantizationSpec({str(spec.dtype).removeprefix('torch.')} {rng} {_qscheme_name(spec.qscheme)}{axis}{dyn}, "
            f"{_ctor_name(spec.observer_or_fake_quant_ctr)})"
        )
    if isinstance(spec, FixedQParamsQuantizationSpec):
        return f"FixedQParamsQuantizationSpec({str(spec.dtype).removeprefix('torch.')}, scale={spec.scale}, zero_point={spec.zero_point})"
    if isinstance(spec, SharedQuantizationSpec):
        return f"SharedQuantizationSpec(with the {describe_edge_or_node(spec.edge_or_node)})"
    if isinstance(spec, DerivedQuantizationSpec):
        return f"DerivedQuantizationSpec({str(spec.dtype).removeprefix('torch.')}, from {len(spec.derived_from)} observer(s))"
    return repr(spec)


def _annotation(node: Node) -> QuantizationAnnotation:
    annotation = node.meta.get(Q_ANNOTATION_KEY)
    if annotation is None:
        annotation = QuantizationAnnotation()
        node.meta[Q_ANNOTATION_KEY] = annotation
    return annotation


def annotate_input_qspec_map(node: Node, input_node: Node, qspec: QuantizationSpecBase | None) -> None:
    """Quantize the edge ``input_node -> node`` with ``qspec``.

    Raises AnnotationConflictError if that edge already carries a different
    spec: skip nodes another annotator claimed (``is_annotated``) instead.
    """
    if input_node not in node.all_input_nodes:
        from quantfx.errors import ValidationError

        raise ValidationError(
            f"cannot annotate edge '{input_node.name}' -> '{node.name}': '{input_node.name}' is not an input of "
            f"'{node.name}' (its inputs: {[n.name for n in node.all_input_nodes]})"
        )
    annotation = _annotation(node)
    if input_node in annotation.input_qspec_map:
        old = annotation.input_qspec_map[input_node]
        if old != qspec:
            raise AnnotationConflictError(
                f"two quantization specs for the {describe_edge_or_node((input_node, node))}: it already has "
                f"{describe_spec(old)} and is now given {describe_spec(qspec)}. Two annotators claimed the same "
                f"edge; make later annotators skip nodes already annotated (quantfx.quantizer.utils.is_annotated), "
                f"or restrict one of them to other modules (set_module_name / set_module_type)."
            )
    annotation.input_qspec_map[input_node] = qspec


def annotate_output_qspec(node: Node, qspec: QuantizationSpecBase | None) -> None:
    """Quantize the output of ``node`` with ``qspec`` (AnnotationConflictError if it has a different one)."""
    annotation = _annotation(node)
    old = annotation.output_qspec
    if old is not None and qspec is not None and old != qspec:
        users = ", ".join(f"'{u.name}'" for u in node.users) or "no users"
        raise AnnotationConflictError(
            f"two quantization specs for the {describe_edge_or_node(node)} (read by {users}): it already has "
            f"{describe_spec(old)} and is now given {describe_spec(qspec)}. Make later annotators skip nodes "
            f"already annotated (quantfx.quantizer.utils.is_annotated)."
        )
    annotation.output_qspec = qspec


def is_annotated(nodes: Node | Iterable[Node | None]) -> bool:
    """True if any of ``nodes`` was claimed by an annotator (``_annotated``)."""
    if isinstance(nodes, Node):
        nodes = [nodes]
    for node in nodes:
        if node is None:
            continue
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if annotation is not None and annotation._annotated:
            return True
    return False


def mark_annotated(nodes: Iterable[Node | None]) -> None:
    """Claim ``nodes`` so later annotators leave them alone."""
    for node in nodes:
        if node is not None:
            _annotation(node)._annotated = True


def _normalize_path(path: str) -> str:
    return path.removeprefix("L['self'].")


def module_path(node: Node) -> str | None:
    """Path of the innermost module whose ``forward`` created ``node`` (None for the root / get_attr nodes)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    return _normalize_path(list(stack.values())[-1][0]) or None


def get_module_name_filter(module_name: str) -> Callable[[Node], bool]:
    """Filter accepting nodes created inside the submodule ``module_name`` (e.g. ``"blocks.0"``), at any depth."""

    def module_name_filter(node: Node) -> bool:
        stack = node.meta.get("nn_module_stack") or {}
        return any(_normalize_path(path) == module_name for path, _ in stack.values())

    module_name_filter.__name__ = f"module_name_filter({module_name!r})"
    return module_name_filter


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp
    return f"{tp.__module__}.{tp.__qualname__}"


def get_module_type_filter(module_type: type | str) -> Callable[[Node], bool]:
    """Filter accepting nodes created inside any module of type ``module_type`` (class or qualified name)."""
    wanted = _type_name(module_type)

    def module_type_filter(node: Node) -> bool:
        stack = node.meta.get("nn_module_stack") or {}
        return any(_type_name(t) == wanted for _, t in stack.values())

    module_type_filter.__name__ = f"module_type_filter({wanted})"
    return module_type_filter


def is_float_tensor_node(node: Any) -> bool:
    """True if ``node`` produces a floating-point tensor (observers only watch float tensors)."""
    if not isinstance(node, Node):
        return False
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()
