"""``ComposableQuantizer``: several quantizers annotate one graph, in order, without overwriting each other."""

from __future__ import annotations

from collections.abc import Sequence

from torch.fx import GraphModule, Node

from quantfx.errors import AnnotationConflictError, ValidationError
from quantfx.quantizer.quantizer import (
    Q_ANNOTATION_KEY,
    QuantizationSpecBase,
    Quantizer,
    describe_edge_or_node,
)
from quantfx.quantizer.utils import describe_spec

__all__ = ["ComposableQuantizer"]

_Snapshot = dict[object, tuple[QuantizationSpecBase | None, str]]


class ComposableQuantizer(Quantizer):
    """Apply ``quantizers`` one after another (e.g. an embedding quantizer, then a general one).

    Earlier quantizers win: each one must leave the annotations of the
    previous ones as they were. A later quantizer that changes or removes a
    spec on an edge or output another one set raises AnnotationConflictError
    naming the edge's nodes and both quantizers.
    """

    def __init__(self, quantizers: Sequence[Quantizer]) -> None:
        super().__init__()
        quantizers = list(quantizers)
        for i, q in enumerate(quantizers):
            if not isinstance(q, Quantizer):
                raise ValidationError(
                    f"ComposableQuantizer: item {i} is {type(q).__name__}, not a quantfx.quantizer.Quantizer"
                )
        self.quantizers = quantizers

    @staticmethod
    def _snapshot(model: GraphModule, owner: str, into: _Snapshot) -> None:
        for node in model.graph.nodes:
            annotation = node.meta.get(Q_ANNOTATION_KEY)
            if annotation is None:
                continue
            for inp, spec in annotation.input_qspec_map.items():
                into.setdefault((inp, node), (spec, owner))
            if annotation.output_qspec is not None:
                into.setdefault(node, (annotation.output_qspec, owner))

    @staticmethod
    def _current(model: GraphModule, key: object) -> tuple[bool, QuantizationSpecBase | None]:
        node = key[1] if isinstance(key, tuple) else key
        assert isinstance(node, Node)
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if annotation is None:
            return False, None
        if isinstance(key, tuple):
            if key[0] not in annotation.input_qspec_map:
                return False, None
            return True, annotation.input_qspec_map[key[0]]
        return annotation.output_qspec is not None, annotation.output_qspec

    def annotate(self, model: GraphModule) -> GraphModule:
        """Run each quantizer's ``annotate``; fail on the first one that rewrites another's annotation."""
        seen: _Snapshot = {}
        for i, quantizer in enumerate(self.quantizers, 1):
            name = f"quantizer #{i} ({type(quantizer).__name__})"
            quantizer.annotate(model)
            for key, (spec, owner) in seen.items():
                present, now = self._current(model, key)
                if not present or now != spec:
                    what = f"replaced it with {describe_spec(now)}" if present else "removed it"
                    raise AnnotationConflictError(
                        f"two quantization specs for the {describe_edge_or_node(key)}: {owner} gave it "
                        f"{describe_spec(spec)} and {name} {what}. In a ComposableQuantizer earlier quantizers "
                        f"win; make {name} skip annotated nodes (quantfx.quantizer.utils.is_annotated) or "
                        f"reorder the quantizers."
                    )
            self._snapshot(model, name, seen)
        return model

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """Each quantizer's transform, in order."""
        for quantizer in self.quantizers:
            model = quantizer.transform_for_annotation(model)
        return model

    def validate(self, model: GraphModule) -> None:
        """Each quantizer's validation, in order."""
        for quantizer in self.quantizers:
            quantizer.validate(model)
