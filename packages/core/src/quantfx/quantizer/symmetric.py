"""``SymmetricQuantizer``: the generic XNNPACK-style quantizer every backend can start from.

int8 activations (affine, [-128, 127], histogram observer), int8 symmetric
weights ([-127, 127], per tensor or per channel), float bias: the scheme
XNNPACK, QNNPACK, TFLite and most accelerators run natively. It is the
``reference`` backend's PT2E quantizer; a backend subclasses it and changes
the config, the annotator list (``STATIC_OPS``) or the share-qparams ops::

    class MyQuantizer(SymmetricQuantizer):
        STATIC_OPS = ["my_fused_op", *SymmetricQuantizer.STATIC_OPS]

The configs and the annotated patterns match executorch's ``XNNPACKQuantizer``
(torchao's, formerly torch.ao's; ``get_symmetric_quantization_config`` takes
the same arguments) using quantfx's observers: without the ReLU6 / Hardtanh
fusions the two produce bit-identical models (tests/test_pt2e_oracle.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch.fx import GraphModule, Node

from quantfx.errors import ValidationError
from quantfx.quantizer.annotators import (
    ANNOTATORS,
    SHARE_QPARAMS_OPS,
    QuantizationConfig,
    convert_scalars_to_attrs,
    propagate_annotation,
)
from quantfx.quantizer.quantizer import Q_ANNOTATION_KEY, QuantizationSpec, Quantizer
from quantfx.quantizer.utils import get_module_name_filter, get_module_type_filter

__all__ = ["SymmetricQuantizer", "get_symmetric_quantization_config", "QuantizationConfig"]


@functools.lru_cache
def get_symmetric_quantization_config(
    is_per_channel: bool = False,
    is_qat: bool = False,
    is_dynamic: bool = False,
    act_qmin: int = -128,
    act_qmax: int = 127,
    weight_qmin: int = -127,
    weight_qmax: int = 127,
) -> QuantizationConfig:
    """int8 activations / int8 symmetric weights, for PTQ, QAT (``is_qat``) or dynamic activations.

    Same arguments and observers as torchao's XNNPACK config: HistogramObserver
    activations (PTQ), fused moving-average fake-quants (QAT), MinMax /
    PerChannelMinMax weights; eps 2**-12 everywhere. Cached, so equal arguments
    give the identical config object.
    """
    from quantfx.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize
    from quantfx.observers import (
        HistogramObserver,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
        PlaceholderObserver,
    )

    act_args: dict[str, Any] = {"eps": 2**-12}
    act_ctr: Any
    if is_qat:
        if is_dynamic:
            act_ctr = FakeQuantize
            act_args["observer"] = MovingAverageMinMaxObserver.with_args(averaging_constant=1)
        else:
            act_ctr = FusedMovingAvgObsFakeQuantize
    else:
        act_ctr = PlaceholderObserver if is_dynamic else HistogramObserver
    act = QuantizationSpec(
        dtype=torch.int8,
        quant_min=act_qmin,
        quant_max=act_qmax,
        qscheme=torch.per_tensor_affine,
        is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=act_ctr.with_args(**act_args),
    )
    weight_qscheme = torch.per_channel_symmetric if is_per_channel else torch.per_tensor_symmetric
    weight_args: dict[str, Any] = {"eps": 2**-12}
    weight_ctr: Any
    if is_qat:
        weight_ctr = FusedMovingAvgObsFakeQuantize
        weight_args["observer"] = MovingAveragePerChannelMinMaxObserver if is_per_channel else MovingAverageMinMaxObserver
    else:
        weight_ctr = PerChannelMinMaxObserver if is_per_channel else MinMaxObserver
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=weight_qmin,
        quant_max=weight_qmax,
        qscheme=weight_qscheme,
        ch_axis=0,
        observer_or_fake_quant_ctr=weight_ctr.with_args(**weight_args),
    )
    return QuantizationConfig(
        input_activation=act,
        output_activation=None if is_dynamic else act,
        weight=weight,
        bias=None,
        is_qat=is_qat,
    )


class SymmetricQuantizer(Quantizer):
    """XNNPACK-style quantizer: a global config, overridable per module name or module type.

    Precedence: ``set_module_name`` > ``set_module_type`` > ``set_global``. A config of None leaves that part in float.
    ``STATIC_QAT_ONLY_OPS`` / ``STATIC_OPS`` / ``DYNAMIC_OPS`` name annotators in
    ``quantfx.quantizer.annotators.ANNOTATORS``, fusions first.
    """

    STATIC_QAT_ONLY_OPS: ClassVar[list[str]] = ["conv_bn_relu", "conv_bn", "conv_transpose_bn_relu", "conv_transpose_bn"]
    STATIC_OPS: ClassVar[list[str]] = [
        "linear_relu",
        "linear_hardtanh",
        "linear",
        "conv_relu",
        "conv_hardtanh",
        "conv",
        "conv_transpose_relu",
        "conv_transpose_hardtanh",
        "conv_transpose",
        "adaptive_avg_pool2d",
        "add_relu",
        "add",
        "mul_relu",
        "mul",
        "cat",
    ]
    DYNAMIC_OPS: ClassVar[list[str]] = ["dynamic_linear"]
    SHARE_QPARAMS_OPS: ClassVar[frozenset] = SHARE_QPARAMS_OPS

    def __init__(self, global_config: QuantizationConfig | None = None) -> None:
        super().__init__()
        self.global_config: QuantizationConfig | None = None
        self.module_type_config: dict[Any, QuantizationConfig | None] = {}
        self.module_name_config: dict[str, QuantizationConfig | None] = {}
        if global_config is not None:
            self.set_global(global_config)

    @staticmethod
    def _check_config(config: Any, where: str) -> None:
        if config is not None and not isinstance(config, QuantizationConfig):
            raise ValidationError(
                f"SymmetricQuantizer.{where} expects a QuantizationConfig (e.g. get_symmetric_quantization_config()) "
                f"or None, got {type(config).__name__}"
            )

    def set_global(self, quantization_config: QuantizationConfig | None) -> SymmetricQuantizer:
        """Config for everything not covered by a more specific setting."""
        self._check_config(quantization_config, "set_global")
        self.global_config = quantization_config
        return self

    def set_module_type(self, module_type: type | str, quantization_config: QuantizationConfig | None) -> SymmetricQuantizer:
        """Config for every op created inside modules of ``module_type`` (class or qualified name)."""
        self._check_config(quantization_config, "set_module_type")
        self.module_type_config[module_type] = quantization_config
        return self

    def set_module_name(self, module_name: str, quantization_config: QuantizationConfig | None) -> SymmetricQuantizer:
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
            annotator(model, config, filter_fn)

    def annotate(self, model: GraphModule) -> GraphModule:
        """Annotate module-name regions, then module-type regions, then the rest with the global config."""
        claimed: list[Callable[[Node], bool]] = []
        for name, config in self.module_name_config.items():
            f = get_module_name_filter(name)
            self._annotate_all(model, config, f)
            claimed.append(f)
        for tp, config in self.module_type_config.items():
            f = get_module_type_filter(tp)
            self._annotate_all(model, config, self._unclaimed(f, claimed))
            claimed.append(f)
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
