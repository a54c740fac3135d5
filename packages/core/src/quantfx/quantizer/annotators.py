"""Reusable op annotators for ``torch.export`` (aten) graphs, keyed by name.

Each annotator finds one pattern (``conv -> relu``, ``linear``, ``add`` ...)
and writes annotations from a :class:`QuantizationConfig`, skipping nodes an
earlier annotator claimed and nodes ``filter_fn`` rejects. A backend's
quantizer picks an ordered list of names (fusions before single ops) and may
register its own with :func:`register_annotator`.

The patterns and the specs they write follow executorch's ``XNNPACKQuantizer``
(the successor of torchao's / torch.ao's): relu fusions, per-output-channel
weights for transposed convs (axis 1; grouped transposed convs stay float), cat
sharing with the input that is already quantized, the same share-qparams ops.
Additions: ReLU6 / Hardtanh fused like ReLU (``*_hardtanh``: the output observer
sits after the clamp, so int8 covers only values the model can produce), every
conv rank and ``padding=`` overload, and ``adaptive_avg_pool2d`` / ``cat`` found
by their aten op rather than by source-function metadata torch 2.13 no longer records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from quantfx.errors import ValidationError
from quantfx.quantizer.quantizer import (
    Q_ANNOTATION_KEY,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)
from quantfx.quantizer.utils import is_annotated, is_float_tensor_node, mark_annotated

__all__ = [
    "QuantizationConfig",
    "AnnotatorType",
    "ANNOTATORS",
    "register_annotator",
    "get_input_act_qspec",
    "get_output_act_qspec",
    "get_weight_qspec",
    "get_bias_qspec",
    "propagate_annotation",
    "convert_scalars_to_attrs",
    "CONV_OPS",
    "CONV_TRANSPOSE_OPS",
    "LINEAR_OPS",
    "RELU_OPS",
    "HARDTANH_OPS",
    "RELU_LIKE_OPS",
    "BATCH_NORM_OPS",
    "MATMUL_OPS",
    "PAD_OPS",
    "SHARE_QPARAMS_OPS",
]

aten = torch.ops.aten


@dataclass(eq=True, frozen=True)
class QuantizationConfig:
    """The specs one quantized op uses: input / output activations, weight, bias; ``is_qat`` for training."""

    input_activation: QuantizationSpec | None
    output_activation: QuantizationSpec | None
    weight: QuantizationSpec | None
    bias: QuantizationSpecBase | None
    is_qat: bool = False


AnnotatorType = Callable[[GraphModule, "QuantizationConfig | None", "Callable[[Node], bool] | None"], list[list[Node]]]

#: annotator name -> function; backends add theirs with ``register_annotator``.
ANNOTATORS: dict[str, AnnotatorType] = {}


def register_annotator(name: str) -> Callable[[AnnotatorType], AnnotatorType]:
    """Decorator: make ``fn(gm, quantization_config, filter_fn)`` available as ``ANNOTATORS[name]``."""

    def decorator(fn: AnnotatorType) -> AnnotatorType:
        ANNOTATORS[name] = fn
        return fn

    return decorator


def _ops(*overloads: Any) -> frozenset:
    return frozenset(op for op in overloads if op is not None)


def _overload(packet: Any, name: str) -> Any:
    return getattr(packet, name, None)


CONV_OPS = _ops(
    aten.conv1d.default, _overload(aten.conv1d, "padding"),
    aten.conv2d.default, _overload(aten.conv2d, "padding"),
    aten.conv3d.default, _overload(aten.conv3d, "padding"),
)
CONV_TRANSPOSE_OPS = _ops(aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input)
LINEAR_OPS = _ops(aten.linear.default)
RELU_OPS = _ops(aten.relu.default, aten.relu_.default)
HARDTANH_OPS = _ops(aten.hardtanh.default, aten.hardtanh_.default)  # ReLU6 exports as hardtanh(0, 6)
RELU_LIKE_OPS = RELU_OPS | HARDTANH_OPS
BATCH_NORM_OPS = _ops(
    aten.batch_norm.default,
    aten._native_batch_norm_legit_no_training.default,
    aten._native_batch_norm_legit.default,
)
ADD_OPS = _ops(aten.add.Tensor, aten.add_.Tensor)
MUL_OPS = _ops(aten.mul.Tensor, aten.mul_.Tensor)

#: Ops that only move, select or clamp values: their output shares the input's observer.
SHARE_QPARAMS_OPS = _ops(
    aten.relu.default, aten.hardtanh.default, aten.hardtanh_.default,
    aten.max_pool2d.default, aten.mean.default, aten.mean.dim,
    aten.permute.default, _overload(aten.permute_copy, "default"), aten.transpose.int,
    aten.squeeze.dim, _overload(aten.squeeze_copy, "dim"),
    aten.adaptive_avg_pool2d.default,
    _overload(aten.view_copy, "default"), aten.view.default, aten.reshape.default,
    aten.slice.Tensor, _overload(aten.slice_copy, "Tensor"), aten.flatten.using_ints,
    aten.dropout.default, aten.dropout_.default,  # identity once deployed (eval)
)


#: Padding ops: zero (the zero point) padding needs no requantize, so backends whose FX config shares
#: qparams through ``F.pad`` / ``nn.ZeroPad2d`` add these to their share-qparams set.
PAD_OPS = _ops(aten.pad.default, aten.constant_pad_nd.default)


def _check_act(spec: QuantizationSpec | None, what: str) -> QuantizationSpec | None:
    if spec is not None and spec.qscheme not in (None, torch.per_tensor_affine, torch.per_tensor_symmetric):
        raise ValidationError(f"QuantizationConfig.{what} must be per tensor, got qscheme {spec.qscheme}")
    return spec


def get_input_act_qspec(config: QuantizationConfig | None) -> QuantizationSpec | None:
    """The config's input activation spec (per tensor), or None."""
    return None if config is None else _check_act(config.input_activation, "input_activation")


def get_output_act_qspec(config: QuantizationConfig | None) -> QuantizationSpec | None:
    """The config's output activation spec (per tensor), or None."""
    return None if config is None else _check_act(config.output_activation, "output_activation")


def get_weight_qspec(config: QuantizationConfig | None) -> QuantizationSpec | None:
    """The config's weight spec (symmetric), or None."""
    if config is None or config.weight is None:
        return None
    spec = config.weight
    if spec.qscheme not in (torch.per_tensor_symmetric, torch.per_channel_symmetric, None):
        raise ValidationError(
            f"QuantizationConfig.weight must be symmetric (per_tensor_symmetric / per_channel_symmetric), got {spec.qscheme}"
        )
    return spec


def get_bias_qspec(config: QuantizationConfig | None) -> QuantizationSpecBase | None:
    """The config's bias spec, or None (bias stays float, the usual case)."""
    return None if config is None else config.bias


def _is_op(node: Any, ops: frozenset) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in ops


def _claimed(nodes: list[Node]) -> bool:
    # only ops count: a weight read by two convs (a module called twice) is annotated on both edges
    return is_annotated([n for n in nodes if n.op != "get_attr"])


def _accepted(filter_fn: Callable[[Node], bool] | None, nodes: list[Node]) -> bool:
    # filters look at the op nodes: get_attr weights carry no module stack
    return filter_fn is None or all(filter_fn(n) for n in nodes if n.op == "call_function")


def _output_channel_axis_1(spec: QuantizationSpec) -> QuantizationSpec:
    """A transposed conv's weight is (in, out / groups, k...): per output channel means axis 1.

    torch's fused moving-average fake-quant kernel only handles axis 0, so a
    QAT spec built on it switches to the unfused ``FakeQuantize`` (same observer).
    """
    if spec.qscheme not in (torch.per_channel_symmetric, torch.per_channel_affine):
        return spec
    ctor = spec.observer_or_fake_quant_ctr
    from quantfx.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize

    if getattr(getattr(ctor, "p", None), "func", ctor) is FusedMovingAvgObsFakeQuantize:
        ctor = FakeQuantize.with_args(**getattr(ctor, "keywords", {}))
    return dataclasses.replace(spec, ch_axis=1, observer_or_fake_quant_ctr=ctor)


def _weighted_input_map(op_node: Node, config: QuantizationConfig | None) -> tuple[dict[Node, Any], list[Node]]:
    """input / weight / bias specs of a conv or linear node, and the nodes of its partition."""
    act, weight = op_node.args[0], op_node.args[1]
    if not isinstance(act, Node) or not isinstance(weight, Node):
        raise ValidationError(
            f"node '{op_node.name}' ({op_node.target}) takes its input and weight as tensors from the graph; "
            f"got {type(act).__name__} / {type(weight).__name__}"
        )
    weight_spec = get_weight_qspec(config)
    if weight_spec is not None and op_node.target in CONV_TRANSPOSE_OPS and weight_spec.ch_axis == 0:
        weight_spec = _output_channel_axis_1(weight_spec)
    input_map: dict[Node, Any] = {act: get_input_act_qspec(config), weight: weight_spec}
    partition = [op_node, weight]
    bias = op_node.args[2] if len(op_node.args) > 2 else None
    if isinstance(bias, Node):
        input_map[bias] = get_bias_qspec(config)
        partition.append(bias)
    return input_map, partition


def _grouped_transpose(node: Node) -> bool:
    # aten.conv_transpose*(input, weight, bias, stride, padding, output_padding, groups, dilation)
    return node.target in CONV_TRANSPOSE_OPS and len(node.args) > 6 and node.args[6] != 1


def _annotate_weighted(
    gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any, ops: frozenset
) -> list[list[Node]]:
    partitions = []
    for node in gm.graph.nodes:
        if not _is_op(node, ops) or _grouped_transpose(node):
            continue
        input_map, partition = _weighted_input_map(node, config)
        if _claimed(partition) or not _accepted(filter_fn, partition):
            continue
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map=input_map, output_qspec=get_output_act_qspec(config), _annotated=True
        )
        mark_annotated(partition)
        partitions.append(partition)
    return partitions


def _annotate_weighted_act(
    gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any, ops: frozenset, acts: frozenset = RELU_OPS
) -> list[list[Node]]:
    """``op -> activation``: inputs on the op, the output observer after the activation."""
    partitions = []
    for act in gm.graph.nodes:
        if not _is_op(act, acts):
            continue
        op_node = act.args[0]
        if not _is_op(op_node, ops) or len(op_node.users) > 1 or _grouped_transpose(op_node):
            continue
        input_map, partition = _weighted_input_map(op_node, config)
        partition = [act, *partition]
        if _claimed(partition) or not _accepted(filter_fn, partition):
            continue
        op_node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=input_map, _annotated=True)
        act.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=get_output_act_qspec(config), _annotated=True)
        mark_annotated(partition)
        partitions.append(partition)
    return partitions


@register_annotator("linear")
def annotate_linear(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """aten.linear: input, weight (and bias) specs on the edges, output spec on the node."""
    return _annotate_weighted(gm, config, filter_fn, LINEAR_OPS)


@register_annotator("linear_relu")
def annotate_linear_relu(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """linear -> relu, quantized as one op."""
    return _annotate_weighted_act(gm, config, filter_fn, LINEAR_OPS)


@register_annotator("linear_hardtanh")
def annotate_linear_hardtanh(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """linear -> hardtanh / relu6, quantized as one op (the observer sees the clamped range)."""
    return _annotate_weighted_act(gm, config, filter_fn, LINEAR_OPS, HARDTANH_OPS)


@register_annotator("conv")
def annotate_conv(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """aten.conv1d / 2d / 3d."""
    return _annotate_weighted(gm, config, filter_fn, CONV_OPS)


@register_annotator("conv_relu")
def annotate_conv_relu(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """conv -> relu, quantized as one op."""
    return _annotate_weighted_act(gm, config, filter_fn, CONV_OPS)


@register_annotator("conv_hardtanh")
def annotate_conv_hardtanh(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """conv -> hardtanh / relu6 (MobileNet, EfficientNet-Lite), quantized as one op."""
    return _annotate_weighted_act(gm, config, filter_fn, CONV_OPS, HARDTANH_OPS)


@register_annotator("conv_transpose")
def annotate_conv_transpose(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """aten.conv_transpose1d / 2d / 3d."""
    return _annotate_weighted(gm, config, filter_fn, CONV_TRANSPOSE_OPS)


@register_annotator("conv_transpose_relu")
def annotate_conv_transpose_relu(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """conv_transpose -> relu, quantized as one op."""
    return _annotate_weighted_act(gm, config, filter_fn, CONV_TRANSPOSE_OPS)


@register_annotator("conv_transpose_hardtanh")
def annotate_conv_transpose_hardtanh(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """conv_transpose -> hardtanh / relu6, quantized as one op."""
    return _annotate_weighted_act(gm, config, filter_fn, CONV_TRANSPOSE_OPS, HARDTANH_OPS)


def _annotate_conv_bn(
    gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any, has_relu: bool, ops: frozenset
) -> list[list[Node]]:
    """QAT: conv -> batch_norm [-> relu], the output observer after the last op (BN is folded at convert)."""
    partitions = []
    for bn in gm.graph.nodes:
        if not _is_op(bn, BATCH_NORM_OPS):
            continue
        conv = bn.args[0]
        if not _is_op(conv, ops) or len(conv.users) > 1 or _grouped_transpose(conv):
            continue
        out = bn
        if has_relu:
            users = [u for u in bn.users]
            if len(users) != 1 or not _is_op(users[0], RELU_OPS):
                continue
            out = users[0]
        input_map, partition = _weighted_input_map(conv, config)
        partition = [*partition, bn] + ([out] if has_relu else [])
        if _claimed(partition) or not _accepted(filter_fn, partition):
            continue
        conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=input_map, _annotated=True)
        out.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=get_output_act_qspec(config), _annotated=True)
        mark_annotated(partition)
        partitions.append(partition)
    return partitions


@register_annotator("conv_bn")
def annotate_conv_bn(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """QAT only: conv -> batch_norm (in PTQ the BN is already folded)."""
    return _annotate_conv_bn(gm, config, filter_fn, False, CONV_OPS)


@register_annotator("conv_bn_relu")
def annotate_conv_bn_relu(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """QAT only: conv -> batch_norm -> relu / hardtanh."""
    return _annotate_conv_bn(gm, config, filter_fn, True, CONV_OPS)


@register_annotator("conv_transpose_bn")
def annotate_conv_transpose_bn(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """QAT only: conv_transpose -> batch_norm."""
    return _annotate_conv_bn(gm, config, filter_fn, False, CONV_TRANSPOSE_OPS)


@register_annotator("conv_transpose_bn_relu")
def annotate_conv_transpose_bn_relu(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """QAT only: conv_transpose -> batch_norm -> relu / hardtanh."""
    return _annotate_conv_bn(gm, config, filter_fn, True, CONV_TRANSPOSE_OPS)


def _is_large_scalar(node: Node, gm: GraphModule) -> bool:
    # torch.histc (HistogramObserver) works up to this bound
    if node.op != "get_attr":
        return False
    value = _get_attr(gm, str(node.target))
    return isinstance(value, torch.Tensor) and value.numel() == 1 and abs(float(value)) > 3.4028235e15


def _get_attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _binary_input_map(gm: GraphModule, node: Node, config: QuantizationConfig | None) -> dict[Node, Any] | None:
    spec = get_input_act_qspec(config)
    input_map: dict[Node, Any] = {}
    for arg in node.args[:2]:
        if isinstance(arg, Node):
            if _is_large_scalar(arg, gm) or not is_float_tensor_node(arg):
                return None
            input_map[arg] = spec
    return input_map


def _annotate_binary(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any, ops: frozenset) -> list[list[Node]]:
    partitions = []
    for node in gm.graph.nodes:
        if not _is_op(node, ops) or is_annotated([node]) or not _accepted(filter_fn, [node]):
            continue
        input_map = _binary_input_map(gm, node, config)
        if input_map is None:
            continue
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map=input_map, output_qspec=get_output_act_qspec(config), _annotated=True
        )
        partitions.append([node, *input_map])
    return partitions


def _annotate_binary_relu(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any, ops: frozenset) -> list[list[Node]]:
    partitions = []
    for relu in gm.graph.nodes:
        if not _is_op(relu, RELU_OPS):
            continue
        op_node = relu.args[0]
        if not _is_op(op_node, ops) or len(op_node.users) > 1:
            continue
        partition = [relu, op_node]
        if _claimed(partition) or not _accepted(filter_fn, partition):
            continue
        input_map = _binary_input_map(gm, op_node, config)
        if input_map is None:
            continue
        op_node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=input_map, _annotated=True)
        relu.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=get_output_act_qspec(config), _annotated=True)
        partitions.append([*partition, *input_map])
    return partitions


@register_annotator("add")
def annotate_add(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """aten.add on float tensors (scalars become tensors in ``convert_scalars_to_attrs``)."""
    return _annotate_binary(gm, config, filter_fn, ADD_OPS)


@register_annotator("add_relu")
def annotate_add_relu(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """add -> relu, quantized as one op."""
    return _annotate_binary_relu(gm, config, filter_fn, ADD_OPS)


@register_annotator("mul")
def annotate_mul(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """aten.mul on float tensors."""
    return _annotate_binary(gm, config, filter_fn, MUL_OPS)


@register_annotator("mul_relu")
def annotate_mul_relu(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """mul -> relu, quantized as one op."""
    return _annotate_binary_relu(gm, config, filter_fn, MUL_OPS)


MATMUL_OPS = _ops(aten.matmul.default)


@register_annotator("matmul")
def annotate_matmul(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """aten.matmul of two float tensors (attention scores / context): both inputs and the output quantized."""
    return _annotate_binary(gm, config, filter_fn, MATMUL_OPS)


def _has_annotated_qparam_source(node: Node, share_ops: frozenset = SHARE_QPARAMS_OPS) -> bool:
    """Does ``node`` (through qparam-preserving ops) come from an annotated output? Then cat shares with it."""
    seen: set[Node] = set()
    while node not in seen:
        seen.add(node)
        annotation = node.meta.get(Q_ANNOTATION_KEY)
        if annotation is not None and annotation._annotated and annotation.output_qspec is not None:
            return True
        if node.op != "call_function" or node.target not in share_ops or not node.args or not isinstance(node.args[0], Node):
            return False
        node = node.args[0]
    return False


@register_annotator("cat")
def annotate_cat(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """aten.cat: every input and the output share one observer (no requantize inside cat).

    The owner is the first input that comes from an already quantized output, else the first input.
    """
    partitions = []
    spec = get_input_act_qspec(config)
    if spec is None:
        return partitions
    for node in gm.graph.nodes:
        if not _is_op(node, _ops(aten.cat.default)) or is_annotated([node]) or not _accepted(filter_fn, [node]):
            continue
        inputs = [x for x in node.args[0] if isinstance(x, Node)]
        if not inputs or not all(is_float_tensor_node(x) for x in inputs):
            continue
        first = next((x for x in inputs if _has_annotated_qparam_source(x)), inputs[0])
        shared = SharedQuantizationSpec((first, node))
        input_map: dict[Node, Any] = {first: spec}
        for x in inputs[1:]:
            input_map.setdefault(x, shared)
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=input_map, output_qspec=shared, _annotated=True)
        partitions.append([node, *inputs])
    return partitions


@register_annotator("adaptive_avg_pool2d")
def annotate_adaptive_avg_pool2d(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    """adaptive_avg_pool2d: output shares the input's observer (the producer's, when it has one)."""
    partitions = []
    for node in gm.graph.nodes:
        if not _is_op(node, _ops(aten.adaptive_avg_pool2d.default)) or is_annotated([node]):
            continue
        if not _accepted(filter_fn, [node]):
            continue
        x = node.args[0]
        if not isinstance(x, Node):
            continue
        producer = x.meta.get(Q_ANNOTATION_KEY)
        if producer is not None and producer._annotated and producer.output_qspec is not None:
            in_spec: Any = SharedQuantizationSpec(x)
        else:
            in_spec = get_input_act_qspec(config)
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map={x: in_spec}, output_qspec=SharedQuantizationSpec((x, node)), _annotated=True
        )
        partitions.append([node])
    return partitions


def _dynamic_linear(gm: GraphModule, config: QuantizationConfig | None, filter_fn: Any = None) -> list[list[Node]]:
    partitions = []
    for node in gm.graph.nodes:
        if not _is_op(node, LINEAR_OPS):
            continue
        input_map, partition = _weighted_input_map(node, config)
        if _claimed(partition) or not _accepted(filter_fn, partition):
            continue
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=input_map, _annotated=True)
        mark_annotated(partition)
        partitions.append(partition)
    return partitions


ANNOTATORS["dynamic_linear"] = _dynamic_linear


def propagate_annotation(model: GraphModule, share_ops: frozenset = SHARE_QPARAMS_OPS) -> None:
    """Ops in ``share_ops`` after a quantized output reuse its observer (input and output), so they run on int8."""
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in share_ops:
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, Node):
            continue
        annotation = prev.meta.get(Q_ANNOTATION_KEY)
        if annotation is None or annotation.output_qspec is None:
            continue
        if is_annotated([node]):
            continue
        shared = SharedQuantizationSpec(prev)
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map={prev: shared}, output_qspec=shared, _annotated=True
        )


def convert_scalars_to_attrs(
    model: GraphModule, ops: frozenset = _ops(aten.add.Tensor, aten.mul.Tensor)
) -> GraphModule:
    """Turn Python-number operands of add / mul on float tensors into tensor constants, so they can be observed."""
    counter = 0
    for node in list(model.graph.nodes):
        if node.op != "call_function" or node.target not in ops:
            continue
        if not any(is_float_tensor_node(a) for a in node.args):
            continue  # integer bookkeeping (e.g. num_batches_tracked + 1) stays as it is
        new_args = []
        for arg in node.args:
            if isinstance(arg, Node) or not isinstance(arg, (int, float)) or isinstance(arg, bool):
                new_args.append(arg)
                continue
            while hasattr(model, f"_tensor_constant_{counter}"):
                counter += 1
            name = f"_tensor_constant_{counter}"
            value = torch.tensor(float(arg))
            model.register_buffer(name, value)
            with model.graph.inserting_before(node):
                attr = model.graph.get_attr(name)
            val = node.meta.get("val")
            fake_mode = getattr(val, "fake_mode", None)
            attr.meta["val"] = fake_mode.from_tensor(value, static_shapes=True) if fake_mode is not None else value
            new_args.append(attr)
        node.args = tuple(new_args)
    model.recompile()
    return model
