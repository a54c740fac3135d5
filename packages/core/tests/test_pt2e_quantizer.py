"""The PT2E Quantizer API: spec validation, annotation helpers, ComposableQuantizer, SymmetricQuantizer patterns."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from quantfx.errors import AnnotationConflictError, ValidationError
from quantfx.observers import (
    HistogramObserver,
    MinMaxObserver,
    PerChannelMinMaxObserver,
)
from quantfx.quantizer import (
    Q_ANNOTATION_KEY,
    ComposableQuantizer,
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
    SymmetricQuantizer,
    annotate_input_qspec_map,
    annotate_output_qspec,
    get_symmetric_quantization_config,
)
from torch import nn

aten = torch.ops.aten

INT8 = QuantizationSpec(torch.int8, MinMaxObserver, -128, 127, torch.per_tensor_affine)
UINT8 = QuantizationSpec(torch.uint8, MinMaxObserver, 0, 255, torch.per_tensor_affine)


class ConvReluLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        return self.head(y.mean(dim=(2, 3)))


def _exported(model: nn.Module | None = None) -> torch.fx.GraphModule:
    model = (model or ConvReluLinear()).eval()
    return torch.export.export(model, (torch.randn(1, 3, 8, 8),)).module()


def _node(gm: torch.fx.GraphModule, target) -> torch.fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "call_function" and n.target == target)


# --------------------------------------------------------------------------- specs


def test_quantization_spec_rejects_inverted_range() -> None:
    with pytest.raises(ValidationError, match="quant_min 5 must be <= quant_max 3"):
        QuantizationSpec(torch.int8, MinMaxObserver, 5, 3)


def test_quantization_spec_rejects_range_outside_dtype() -> None:
    with pytest.raises(ValidationError, match=r"quant_max=255 does not fit dtype torch.int8"):
        QuantizationSpec(torch.int8, MinMaxObserver, -128, 255)


def test_quantization_spec_needs_axis_for_per_channel_and_nonnegative_axis() -> None:
    with pytest.raises(ValidationError, match="needs ch_axis"):
        QuantizationSpec(torch.int8, PerChannelMinMaxObserver, qscheme=torch.per_channel_symmetric)
    with pytest.raises(ValidationError, match="ch_axis must be a non-negative int"):
        QuantizationSpec(torch.int8, PerChannelMinMaxObserver, qscheme=torch.per_channel_symmetric, ch_axis=-1)


def test_quantization_spec_rejects_non_callable_constructor_and_normalizes_dtype() -> None:
    with pytest.raises(ValidationError, match="observer_or_fake_quant_ctr"):
        QuantizationSpec(torch.int8, "MinMaxObserver")  # type: ignore[arg-type]
    spec = QuantizationSpec(torch.quint8, MinMaxObserver)
    assert spec.dtype is torch.uint8


def test_specs_are_frozen_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        INT8.quant_min = 0  # type: ignore[misc]
    same = QuantizationSpec(torch.int8, MinMaxObserver, -128, 127, torch.per_tensor_affine)
    assert same == INT8 and hash(same) == hash(INT8)
    assert INT8 != UINT8


def test_fixed_qparams_spec_validates_scale_and_zero_point() -> None:
    with pytest.raises(ValidationError, match="scale must be a finite float > 0"):
        FixedQParamsQuantizationSpec(torch.uint8, 0.0, 0)
    with pytest.raises(ValidationError, match="zero_point 300 is outside"):
        FixedQParamsQuantizationSpec(torch.uint8, 1 / 256, 300)


def test_shared_and_derived_specs_validate_what_they_point_at() -> None:
    gm = _exported()
    conv = _node(gm, aten.conv2d.default)
    with pytest.raises(ValidationError, match="expected a node"):
        SharedQuantizationSpec("conv")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="derived_from is empty"):
        DerivedQuantizationSpec([], lambda obs: (torch.ones(1), torch.zeros(1)), torch.int32)
    derived = DerivedQuantizationSpec([conv], lambda obs: (torch.ones(1), torch.zeros(1)), torch.int32)
    assert derived.derived_from == (conv,)


def test_quantizer_is_abstract() -> None:
    class Incomplete(Quantizer):
        def annotate(self, model):
            return model

    with pytest.raises(TypeError):
        Incomplete()  # type: ignore[abstract]


# --------------------------------------------------------------------------- annotation helpers and conflicts


def test_annotate_helpers_refuse_a_second_spec_on_one_edge() -> None:
    gm = _exported()
    conv = _node(gm, aten.conv2d.default)
    x = conv.args[0]
    annotate_input_qspec_map(conv, x, INT8)
    annotate_input_qspec_map(conv, x, INT8)  # the same spec again is fine
    with pytest.raises(AnnotationConflictError) as info:
        annotate_input_qspec_map(conv, x, UINT8)
    message = str(info.value)
    assert f"'{x.name}' -> '{conv.name}'" in message
    assert "int8" in message and "uint8" in message
    annotate_output_qspec(conv, INT8)
    with pytest.raises(AnnotationConflictError, match=f"output of node '{conv.name}'"):
        annotate_output_qspec(conv, UINT8)


def test_annotate_input_rejects_a_node_that_is_not_an_input() -> None:
    gm = _exported()
    conv = _node(gm, aten.conv2d.default)
    linear = _node(gm, aten.linear.default)
    with pytest.raises(ValidationError, match=f"'{linear.name}' is not an input of '{conv.name}'"):
        annotate_input_qspec_map(conv, linear, INT8)


class _AnnotateConvInput(Quantizer):
    """Annotates the conv's activation input with one spec, claiming nothing."""

    def __init__(self, spec: QuantizationSpec) -> None:
        self.spec = spec

    def annotate(self, model):
        conv = _node(model, aten.conv2d.default)
        annotation = conv.meta.setdefault(Q_ANNOTATION_KEY, QuantizationAnnotation())
        annotation.input_qspec_map[conv.args[0]] = self.spec  # direct write, as torchao quantizers do
        return model

    def validate(self, model) -> None:
        pass


def test_composable_quantizer_reports_an_overwritten_edge_with_both_nodes_and_quantizers() -> None:
    gm = _exported()
    composed = ComposableQuantizer([_AnnotateConvInput(INT8), _AnnotateConvInput(UINT8)])
    with pytest.raises(AnnotationConflictError) as info:
        composed.annotate(gm)
    conv = _node(gm, aten.conv2d.default)
    message = str(info.value)
    assert f"'{conv.args[0].name}' -> '{conv.name}'" in message
    assert "quantizer #1 (_AnnotateConvInput)" in message and "quantizer #2 (_AnnotateConvInput)" in message


def test_composable_quantizer_earlier_quantizer_wins_without_conflict() -> None:
    gm = _exported()
    first = SymmetricQuantizer().set_module_name("head", get_symmetric_quantization_config(is_per_channel=True))
    second = SymmetricQuantizer().set_global(get_symmetric_quantization_config())
    ComposableQuantizer([first, second]).annotate(gm)
    linear = _node(gm, aten.linear.default)
    conv = _node(gm, aten.conv2d.default)
    assert linear.meta[Q_ANNOTATION_KEY].input_qspec_map[linear.args[1]].qscheme == torch.per_channel_symmetric
    assert conv.meta[Q_ANNOTATION_KEY].input_qspec_map[conv.args[1]].qscheme == torch.per_tensor_symmetric


def test_composable_quantizer_rejects_non_quantizers() -> None:
    with pytest.raises(ValidationError, match="item 1 is str"):
        ComposableQuantizer([SymmetricQuantizer(), "xnnpack"])  # type: ignore[list-item]


# --------------------------------------------------------------------------- SymmetricQuantizer


def test_symmetric_config_matches_the_xnnpack_scheme() -> None:
    config = get_symmetric_quantization_config(is_per_channel=True)
    act, weight = config.input_activation, config.weight
    assert (act.dtype, act.quant_min, act.quant_max, act.qscheme) == (torch.int8, -128, 127, torch.per_tensor_affine)
    assert act.observer_or_fake_quant_ctr.p.func is HistogramObserver
    assert (weight.dtype, weight.quant_min, weight.quant_max, weight.qscheme, weight.ch_axis) == (
        torch.int8, -127, 127, torch.per_channel_symmetric, 0,
    )
    assert config.bias is None and config.output_activation == act
    assert get_symmetric_quantization_config(is_per_channel=True) is config  # cached: usable as a dict key
    dynamic = get_symmetric_quantization_config(is_dynamic=True)
    assert dynamic.input_activation.is_dynamic and dynamic.output_activation is None


def test_conv_relu_is_annotated_as_one_pattern_and_pooling_shares() -> None:
    gm = SymmetricQuantizer(get_symmetric_quantization_config(is_per_channel=True)).annotate(_exported())
    conv, relu = _node(gm, aten.conv2d.default), _node(gm, aten.relu.default)
    conv_annotation = conv.meta[Q_ANNOTATION_KEY]
    assert conv_annotation.output_qspec is None  # the observer goes after the relu
    assert set(conv_annotation.input_qspec_map) == {conv.args[0], conv.args[1], conv.args[2]}
    assert conv_annotation.input_qspec_map[conv.args[2]] is None  # float bias
    assert relu.meta[Q_ANNOTATION_KEY].output_qspec is not None
    mean = _node(gm, aten.mean.dim)
    assert mean.meta[Q_ANNOTATION_KEY].output_qspec == SharedQuantizationSpec(relu)


def test_module_name_none_leaves_that_module_float() -> None:
    quantizer = SymmetricQuantizer(get_symmetric_quantization_config()).set_module_name("head", None)
    gm = quantizer.annotate(_exported())
    assert Q_ANNOTATION_KEY not in _node(gm, aten.linear.default).meta
    assert Q_ANNOTATION_KEY in _node(gm, aten.conv2d.default).meta


def test_module_type_config_applies_only_inside_that_type() -> None:
    quantizer = SymmetricQuantizer().set_module_type(nn.Linear, get_symmetric_quantization_config())
    gm = quantizer.annotate(_exported())
    assert Q_ANNOTATION_KEY in _node(gm, aten.linear.default).meta
    assert Q_ANNOTATION_KEY not in _node(gm, aten.conv2d.default).meta


def test_a_weight_read_by_two_calls_is_quantized_for_both() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    gm = torch.export.export(Twice().eval(), (torch.randn(2, 4),)).module()
    SymmetricQuantizer(get_symmetric_quantization_config()).annotate(gm)
    linears = [n for n in gm.graph.nodes if n.target == aten.linear.default]
    assert len(linears) == 2
    for linear in linears:
        assert linear.meta[Q_ANNOTATION_KEY].input_qspec_map[linear.args[1]] is not None


def test_unknown_annotator_name_is_reported() -> None:
    class Broken(SymmetricQuantizer):
        STATIC_OPS = ["linear", "no_such_pattern"]

    with pytest.raises(ValidationError, match="'no_such_pattern', which is not registered"):
        Broken(get_symmetric_quantization_config()).annotate(_exported())


def test_reference_backend_provides_the_symmetric_quantizer() -> None:
    import quantfx

    quantizer = quantfx.get_backend("reference").get_quantizer()
    assert isinstance(quantizer, SymmetricQuantizer)
    assert quantizer.global_config == get_symmetric_quantization_config(is_per_channel=True)


# --------------------------------------------------------------------------- PatternQuantizer: regions and hooks


def test_set_operator_type_none_leaves_that_operator_float() -> None:
    from quantfx.quantizer import PatternQuantizer

    gm = _exported()
    quantizer = SymmetricQuantizer(get_symmetric_quantization_config()).set_operator_type(aten.linear, None)
    assert isinstance(quantizer, PatternQuantizer)
    quantizer.annotate(gm)
    assert Q_ANNOTATION_KEY not in _node(gm, aten.linear.default).meta
    assert _node(gm, aten.conv2d.default).meta[Q_ANNOTATION_KEY].input_qspec_map


def test_operator_type_region_includes_the_fused_relu() -> None:
    """conv -> relu with a per-operator config: the relu belongs to the conv's region and carries its output spec."""
    per_channel = get_symmetric_quantization_config(is_per_channel=True)
    gm = _exported()
    SymmetricQuantizer().set_operator_type("conv2d", per_channel).annotate(gm)
    conv, relu = _node(gm, aten.conv2d.default), _node(gm, aten.relu.default)
    assert conv.meta[Q_ANNOTATION_KEY].input_qspec_map[conv.args[1]] == per_channel.weight
    assert relu.meta[Q_ANNOTATION_KEY].output_qspec == per_channel.output_activation
    assert Q_ANNOTATION_KEY not in _node(gm, aten.linear.default).meta  # no global config


def test_module_name_beats_operator_type_beats_global() -> None:
    per_tensor, per_channel = get_symmetric_quantization_config(), get_symmetric_quantization_config(is_per_channel=True)
    gm = _exported()
    (SymmetricQuantizer(per_tensor)
     .set_operator_type(aten.linear.default, per_channel)
     .set_module_name("head", None)
     .annotate(gm))
    assert Q_ANNOTATION_KEY not in _node(gm, aten.linear.default).meta
    conv = _node(gm, aten.conv2d.default)
    assert conv.meta[Q_ANNOTATION_KEY].input_qspec_map[conv.args[1]] == per_tensor.weight

    gm = _exported()
    SymmetricQuantizer(per_tensor).set_operator_type(aten.linear.default, per_channel).annotate(gm)
    linear = _node(gm, aten.linear.default)
    assert linear.meta[Q_ANNOTATION_KEY].input_qspec_map[linear.args[1]] == per_channel.weight


@pytest.mark.parametrize("bad", [nn.Linear, "", F.linear, 3])
def test_set_operator_type_rejects_what_is_not_an_aten_operator(bad) -> None:
    with pytest.raises(ValidationError, match="set_operator_type expects an aten operator"):
        SymmetricQuantizer().set_operator_type(bad, None)


def test_config_for_annotator_can_vary_or_drop_a_pattern() -> None:
    """A backend's per-pattern variant of the config (e.g. per-tensor weights for one op) is what gets annotated."""
    from quantfx.quantizer import PatternQuantizer

    per_tensor, per_channel = get_symmetric_quantization_config(), get_symmetric_quantization_config(is_per_channel=True)

    class Backendish(PatternQuantizer):
        STATIC_OPS = ["conv_relu", "linear"]

        def config_for_annotator(self, name, config):
            return None if name == "linear" else per_tensor

    gm = _exported()
    Backendish(per_channel).annotate(gm)
    conv = _node(gm, aten.conv2d.default)
    assert conv.meta[Q_ANNOTATION_KEY].input_qspec_map[conv.args[1]] == per_tensor.weight
    assert Q_ANNOTATION_KEY not in _node(gm, aten.linear.default).meta


def test_matmul_annotator_quantizes_both_inputs_and_output() -> None:
    from quantfx.quantizer import ANNOTATORS

    class Attn(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return torch.matmul(q, k.transpose(-1, -2))

    gm = torch.export.export(Attn(), (torch.randn(2, 4, 8), torch.randn(2, 4, 8))).module()
    config = get_symmetric_quantization_config()
    ANNOTATORS["matmul"](gm, config, None)
    mm = _node(gm, aten.matmul.default)
    annotation = mm.meta[Q_ANNOTATION_KEY]
    assert set(annotation.input_qspec_map) == set(mm.all_input_nodes) and len(mm.all_input_nodes) == 2
    assert all(spec == config.input_activation for spec in annotation.input_qspec_map.values())
    assert annotation.output_qspec == config.output_activation
