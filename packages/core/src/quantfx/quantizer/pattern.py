"""``PatternQuantizer``: a quantizer made of a config per region and an ordered list of named annotators.

Every backend quantizer has the same shape: a :class:`QuantizationConfig`
(input / output activation, weight, bias specs) chosen per region of the
model, and the list of patterns the backend runs in int8. This class holds
that shape once, so a backend's quantizer is a subclass that sets
``STATIC_OPS`` (and its configs), not a copy of the annotation loop::

    class MyQuantizer(PatternQuantizer):
        STATIC_OPS = ["conv_relu", "conv", "linear", "add"]

    quantizer = (MyQuantizer(my_config)
                 .set_operator_type(torch.ops.aten.linear, None)     # linears stay float
                 .set_module_name("head", other_config))

Precedence (most specific first, as torchao's ``X86InductorQuantizer``):
``set_module_name`` > ``set_module_type`` > ``set_operator_type`` >
``set_global``. A config of None leaves that region in float.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch.fx import GraphModule, Node

from quantfx.errors import ValidationError
from quantfx.fake_quantize import FakeQuantize
from quantfx.observers import MinMaxObserver, MovingAverageMinMaxObserver
from quantfx.quantizer.annotators import (
    ANNOTATORS,
    BATCH_NORM_OPS,
    RELU_LIKE_OPS,
    SHARE_QPARAMS_OPS,
    QuantizationConfig,
    convert_scalars_to_attrs,
    propagate_annotation,
)
from quantfx.quantizer.quantizer import Q_ANNOTATION_KEY, Quantizer
from quantfx.quantizer.utils import get_module_name_filter, get_module_type_filter

__all__ = ["PatternQuantizer", "OperatorType", "get_operator_type_filter", "per_tensor_weight_config"]

#: An aten operator: ``torch.ops.aten.linear`` (every overload), ``torch.ops.aten.linear.default``, or ``"linear"``.
OperatorType = Any

# ops an annotator fuses after the op it is anchored on (conv -> bn -> relu): they belong to that op's region
_FUSED_TAIL_OPS = RELU_LIKE_OPS | BATCH_NORM_OPS


@functools.lru_cache  # one object per config, so annotations made from it compare equal
def per_tensor_weight_config(config: QuantizationConfig) -> QuantizationConfig:
    """``config`` with a per-channel symmetric weight made per tensor (min/max, or its QAT fake-quant)."""
    weight = config.weight
    if weight is None or weight.qscheme != torch.per_channel_symmetric:
        return config
    ctr: Any = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver) if config.is_qat else MinMaxObserver
    per_tensor = dataclasses.replace(weight, qscheme=torch.per_tensor_symmetric, ch_axis=None, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, weight=per_tensor)


def _operator_matcher(operator: OperatorType) -> tuple[Callable[[Any], bool], str]:
    if isinstance(operator, torch._ops.OpOverload):
        return (lambda target: target is operator), str(operator)
    if isinstance(operator, torch._ops.OpOverloadPacket):
        return (lambda target: getattr(target, "overloadpacket", None) is operator), str(operator)
    if isinstance(operator, str) and operator:
        name = operator.removeprefix("aten.").removeprefix("aten::")
        return (
            lambda target: getattr(getattr(target, "overloadpacket", None), "__name__", None) == name
            and getattr(target, "namespace", "aten") == "aten"
        ), f"aten.{name}"
    raise ValidationError(
        f"set_operator_type expects an aten operator (torch.ops.aten.linear, torch.ops.aten.linear.default or "
        f"'linear'), got {operator!r}. Module classes go to set_module_type, submodule paths to set_module_name."
    )


def get_operator_type_filter(operator: OperatorType) -> Callable[[Node], bool]:
    """Filter accepting nodes of ``operator``, and the relu / hardtanh / batch_norm fused after one.

    An annotator accepts a pattern only if every op node in it passes the
    filter, so ``conv -> relu`` is in the ``aten.conv2d`` region: the relu is
    accepted because the chain above it reaches the conv.
    """
    matches, label = _operator_matcher(operator)

    def operator_type_filter(node: Node) -> bool:
        seen: set[Node] = set()
        cur: Any = node
        while isinstance(cur, Node) and cur not in seen:
            seen.add(cur)
            if cur.op == "call_function" and matches(cur.target):
                return True
            if cur.op != "call_function" or cur.target not in _FUSED_TAIL_OPS or not cur.args:
                return False
            cur = cur.args[0]
        return False

    operator_type_filter.__name__ = f"operator_type_filter({label})"
    return operator_type_filter


class PatternQuantizer(Quantizer):
    """Annotate a ``torch.export`` graph with a config per region, pattern by pattern.

    ``STATIC_QAT_ONLY_OPS`` (QAT configs only), ``STATIC_OPS`` and
    ``DYNAMIC_OPS`` (configs whose input activation is dynamic) name
    annotators in ``quantfx.quantizer.annotators.ANNOTATORS``, fusions first.
    After annotation, ops in ``SHARE_QPARAMS_OPS`` that read a quantized
    output reuse its observer. Override :meth:`config_for_annotator` when one
    pattern needs a variant of the config (e.g. per-tensor weights for
    transposed convolutions).
    """

    STATIC_QAT_ONLY_OPS: ClassVar[list[str]] = ["conv_bn_relu", "conv_bn", "conv_transpose_bn_relu", "conv_transpose_bn"]
    STATIC_OPS: ClassVar[list[str]] = []
    DYNAMIC_OPS: ClassVar[list[str]] = ["dynamic_linear"]
    SHARE_QPARAMS_OPS: ClassVar[frozenset] = SHARE_QPARAMS_OPS
    #: annotator name prefixes whose weights are quantized per tensor (e.g. ``("conv_transpose",)`` where the
    #: runtime has no per-channel transposed conv)
    PER_TENSOR_WEIGHT_ANNOTATORS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, global_config: QuantizationConfig | None = None) -> None:
        super().__init__()
        self.global_config: QuantizationConfig | None = None
        self.operator_type_config: dict[OperatorType, QuantizationConfig | None] = {}
        self.module_type_config: dict[Any, QuantizationConfig | None] = {}
        self.module_name_config: dict[str, QuantizationConfig | None] = {}
        if global_config is not None:
            self.set_global(global_config)

    def _check_config(self, config: Any, where: str) -> None:
        if config is not None and not isinstance(config, QuantizationConfig):
            raise ValidationError(
                f"{type(self).__name__}.{where} expects a QuantizationConfig (e.g. get_symmetric_quantization_config()) "
                f"or None, got {type(config).__name__}"
            )

    def set_global(self, quantization_config: QuantizationConfig | None) -> PatternQuantizer:
        """Config for everything not covered by a more specific setting."""
        self._check_config(quantization_config, "set_global")
        self.global_config = quantization_config
        return self

    def set_operator_type(self, operator_type: OperatorType, quantization_config: QuantizationConfig | None) -> PatternQuantizer:
        """Config for every pattern anchored on ``operator_type`` (``torch.ops.aten.linear``, an overload, or ``"linear"``)."""
        self._check_config(quantization_config, "set_operator_type")
        get_operator_type_filter(operator_type)  # validates now, not at annotate time
        self.operator_type_config[operator_type] = quantization_config
        return self

    def set_module_type(self, module_type: type | str, quantization_config: QuantizationConfig | None) -> PatternQuantizer:
        """Config for every op created inside modules of ``module_type`` (class or qualified name)."""
        self._check_config(quantization_config, "set_module_type")
        self.module_type_config[module_type] = quantization_config
        return self

    def set_module_name(self, module_name: str, quantization_config: QuantizationConfig | None) -> PatternQuantizer:
        """Config for every op created inside the submodule ``module_name`` (e.g. ``"blocks.0.attn"``)."""
        self._check_config(quantization_config, "set_module_name")
        self.module_name_config[module_name] = quantization_config
        return self

    # ------------------------------------------------------------------ annotation

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """Scalars of add / mul become tensor constants, so those ops can be quantized."""
        return convert_scalars_to_attrs(model)

    def _annotators(self, config: QuantizationConfig) -> list[str]:
        if config.input_activation is not None and config.input_activation.is_dynamic:
            return list(self.DYNAMIC_OPS)
        names = list(self.STATIC_QAT_ONLY_OPS) if config.is_qat else []
        return names + list(self.STATIC_OPS)

    def config_for_annotator(self, name: str, config: QuantizationConfig) -> QuantizationConfig | None:
        """The config annotator ``name`` applies where ``config`` was chosen.

        Default: ``config`` itself, with per-tensor weights for annotators named
        in ``PER_TENSOR_WEIGHT_ANNOTATORS`` (by prefix).
        """
        if self.PER_TENSOR_WEIGHT_ANNOTATORS and name.startswith(self.PER_TENSOR_WEIGHT_ANNOTATORS):
            return per_tensor_weight_config(config)
        return config

    def _annotate_all(self, model: GraphModule, config: QuantizationConfig | None, filter_fn: Callable[[Node], bool]) -> None:
        if config is None:
            return
        for name in self._annotators(config):
            try:
                annotator = ANNOTATORS[name]
            except KeyError:
                raise ValidationError(
                    f"{type(self).__name__} lists annotator {name!r}, which is not registered; known: "
                    f"{sorted(ANNOTATORS)} (register one with quantfx.quantizer.annotators.register_annotator)"
                ) from None
            annotator_config = self.config_for_annotator(name, config)
            if annotator_config is not None:
                annotator(model, annotator_config, filter_fn)

    def annotate(self, model: GraphModule) -> GraphModule:
        """Annotate module-name regions, then module types, then operator types, then the rest (global)."""
        claimed: list[Callable[[Node], bool]] = []
        for name, config in self.module_name_config.items():
            accept = get_module_name_filter(name)
            self._annotate_all(model, config, accept)  # as torchao: each module name on its own filter
            claimed.append(accept)
        regions: list[tuple[Callable[[Node], bool], QuantizationConfig | None]] = [
            *((get_module_type_filter(tp), config) for tp, config in self.module_type_config.items()),
            *((get_operator_type_filter(op), config) for op, config in self.operator_type_config.items()),
        ]
        for accept, config in regions:
            self._annotate_all(model, config, self._unclaimed(accept, claimed))
            claimed.append(accept)
        self._annotate_all(model, self.global_config, self._unclaimed(lambda n: True, claimed))
        propagate_annotation(model, self.SHARE_QPARAMS_OPS)
        return model

    @staticmethod
    def _unclaimed(accept: Callable[[Node], bool], claimed: list[Callable[[Node], bool]]) -> Callable[[Node], bool]:
        def filter_fn(node: Node) -> bool:
            return accept(node) and not any(c(node) for c in claimed)

        return filter_fn

    def validate(self, model: GraphModule) -> None:
        """Every annotated input edge must point at an input of its node."""
        for node in model.graph.nodes:
            annotation = node.meta.get(Q_ANNOTATION_KEY)
            if annotation is None:
                continue
            inputs = set(node.all_input_nodes)
            for inp in annotation.input_qspec_map:
                if inp not in inputs:
                    raise ValidationError(
                        f"node '{node.name}' is annotated with a spec for '{getattr(inp, 'name', inp)}', which is not one of "
                        f"its inputs ({[n.name for n in inputs]})"
                    )
