"""The PT2E ``Quantizer`` API: annotate a ``torch.export`` graph with how to quantize it.

>>> from quantfx.quantizer import SymmetricQuantizer, get_symmetric_quantization_config
>>> quantizer = SymmetricQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))

A backend's quantizer is a :class:`PatternQuantizer` subclass (its configs
and the list of patterns it runs in int8), returned from
``Backend.get_quantizer()``; see
``quantfx.quantize_pt2e`` for the flow and ``docs/how-to/pt2e.md``.
"""

from quantfx.quantizer.annotators import (
    ANNOTATORS,
    QuantizationConfig,
    register_annotator,
)
from quantfx.quantizer.composable import ComposableQuantizer
from quantfx.quantizer.pattern import PatternQuantizer, get_operator_type_filter
from quantfx.quantizer.quantizer import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)
from quantfx.quantizer.symmetric import (
    SymmetricQuantizer,
    get_symmetric_quantization_config,
)
from quantfx.quantizer.utils import (
    annotate_input_qspec_map,
    annotate_output_qspec,
    get_module_name_filter,
    get_module_type_filter,
    is_annotated,
    mark_annotated,
)

__all__ = [
    "Q_ANNOTATION_KEY",
    "EdgeOrNode",
    "Quantizer",
    "QuantizationSpecBase",
    "QuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "SharedQuantizationSpec",
    "DerivedQuantizationSpec",
    "QuantizationAnnotation",
    "ComposableQuantizer",
    "QuantizationConfig",
    "PatternQuantizer",
    "get_operator_type_filter",
    "SymmetricQuantizer",
    "get_symmetric_quantization_config",
    "ANNOTATORS",
    "register_annotator",
    "annotate_input_qspec_map",
    "annotate_output_qspec",
    "is_annotated",
    "mark_annotated",
    "get_module_name_filter",
    "get_module_type_filter",
]
