"""The PT2E annotation API: quantization specs, the annotation stored on each node, and ``Quantizer``.

A ``Quantizer`` says how a ``torch.export`` graph is quantized by writing a
:class:`QuantizationAnnotation` into ``node.meta["quantization_annotation"]``:
one spec per input edge (``input_qspec_map``) and one for the node's output
(``output_qspec``). ``prepare_pt2e`` reads only these annotations, so any
backend can express its constraints without touching the passes.

Names, fields and semantics follow torchao's ``torchao.quantization.pt2e.quantizer``
(formerly ``torch/ao/quantization/quantizer``), so a quantizer written for
torchao ports by changing its imports. Differences: specs validate their
fields in ``__post_init__`` and raise :class:`quantfx.errors.ValidationError`
naming the field, and dtypes are plain (``torch.quint8`` becomes ``torch.uint8``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import Tensor
from torch.fx import GraphModule, Node

from quantfx.dtypes import normalize_dtype
from quantfx.errors import ValidationError

if TYPE_CHECKING:
    from quantfx.observers import ObserverOrFakeQuantize

__all__ = [
    "Q_ANNOTATION_KEY",
    "EdgeOrNode",
    "QuantizationSpecBase",
    "QuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "SharedQuantizationSpec",
    "DerivedQuantizationSpec",
    "QuantizationAnnotation",
    "Quantizer",
    "describe_edge_or_node",
]

#: ``node.meta`` key holding a node's :class:`QuantizationAnnotation` (torchao's key, so tools agree).
Q_ANNOTATION_KEY = "quantization_annotation"

#: An input edge ``(producer, consumer)`` or a node (its output value).
EdgeOrNode = Union[tuple[Node, Node], Node]

_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)
_PER_TENSOR = (torch.per_tensor_affine, torch.per_tensor_symmetric)


def _module_path(node: Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path or None


def _describe_node(node: Node) -> str:
    where = _module_path(node)
    return f"'{node.name}'" + (f" (from module '{where}')" if where else "")


def describe_edge_or_node(edge_or_node: Any) -> str:
    """Human-readable name of an edge or node for error messages: ``edge 'conv2d' -> 'relu'``."""
    if isinstance(edge_or_node, Node):
        return f"output of node {_describe_node(edge_or_node)}"
    if isinstance(edge_or_node, tuple) and len(edge_or_node) == 2:
        a, b = edge_or_node
        if isinstance(a, Node) and isinstance(b, Node):
            return f"edge {_describe_node(a)} -> {_describe_node(b)}"
    return repr(edge_or_node)


def _check_range(owner: str, dtype: torch.dtype, quant_min: int | None, quant_max: int | None) -> None:
    if quant_min is not None and not isinstance(quant_min, int):
        raise ValidationError(f"{owner}: quant_min must be an int, got {quant_min!r}")
    if quant_max is not None and not isinstance(quant_max, int):
        raise ValidationError(f"{owner}: quant_max must be an int, got {quant_max!r}")
    if quant_min is not None and quant_max is not None and quant_min > quant_max:
        raise ValidationError(f"{owner}: quant_min {quant_min} must be <= quant_max {quant_max}")
    if dtype.is_floating_point or dtype == torch.bool:
        return
    info = torch.iinfo(dtype)
    for name, value in (("quant_min", quant_min), ("quant_max", quant_max)):
        if value is not None and not info.min <= value <= info.max:
            raise ValidationError(
                f"{owner}: {name}={value} does not fit dtype {dtype} ([{info.min}, {info.max}]); "
                "pick a range inside the dtype or a wider dtype"
            )


def _normalized_dtype(owner: str, dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise ValidationError(f"{owner}: dtype must be a torch.dtype (e.g. torch.int8), got {dtype!r}")
    return normalize_dtype(dtype)  # type: ignore[return-value]


def _check_qscheme(owner: str, qscheme: Any, ch_axis: int | None) -> None:
    if qscheme is not None and qscheme not in _PER_CHANNEL + _PER_TENSOR:
        raise ValidationError(f"{owner}: qscheme must be a torch.per_tensor_* / per_channel_* qscheme, got {qscheme!r}")
    if ch_axis is not None and (not isinstance(ch_axis, int) or ch_axis < 0):
        raise ValidationError(f"{owner}: ch_axis must be a non-negative int (the channel dimension), got {ch_axis!r}")
    if qscheme in _PER_CHANNEL and ch_axis is None:
        raise ValidationError(f"{owner}: per-channel qscheme {qscheme} needs ch_axis (e.g. ch_axis=0 for conv / linear weights)")


class QuantizationSpecBase(ABC):
    """Base of every spec: how one tensor (an input edge or an output) is quantized."""


@dataclass(eq=True, frozen=True)
class QuantizationSpec(QuantizationSpecBase):
    """Quantize a tensor with an observer (PTQ) or fake-quant (QAT) built by ``observer_or_fake_quant_ctr``.

    ``prepare_pt2e`` builds one observer per sharing group with
    ``observer_or_fake_quant_ctr.with_args(dtype=..., quant_min=..., ...)()``,
    so the spec's fields win over what the constructor was bound with.
    """

    dtype: torch.dtype
    observer_or_fake_quant_ctr: Callable[..., Any]
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    ch_axis: int | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "dtype", _normalized_dtype(owner, self.dtype))
        if not callable(self.observer_or_fake_quant_ctr):
            raise ValidationError(
                f"{owner}: observer_or_fake_quant_ctr must be an observer / fake-quant class or a "
                f"with_args(...) factory, got {self.observer_or_fake_quant_ctr!r}"
            )
        _check_range(owner, self.dtype, self.quant_min, self.quant_max)
        _check_qscheme(owner, self.qscheme, self.ch_axis)
        if self.is_dynamic and self.qscheme in _PER_CHANNEL:
            raise ValidationError(f"{owner}: dynamic quantization is per tensor; got qscheme {self.qscheme}")


@dataclass(eq=True, frozen=True)
class FixedQParamsQuantizationSpec(QuantizationSpecBase):
    """Quantize with a fixed scale / zero point (ops with a known output range: sigmoid, tanh)."""

    dtype: torch.dtype
    scale: float
    zero_point: int
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        object.__setattr__(self, "dtype", _normalized_dtype(owner, self.dtype))
        if not isinstance(self.scale, (int, float)) or not self.scale > 0 or self.scale == float("inf"):
            raise ValidationError(f"{owner}: scale must be a finite float > 0, got {self.scale!r}")
        if not isinstance(self.zero_point, int):
            raise ValidationError(f"{owner}: zero_point must be an int, got {self.zero_point!r}")
        _check_range(owner, self.dtype, self.quant_min, self.quant_max)
        _check_qscheme(owner, self.qscheme, None)
        if self.qscheme in _PER_CHANNEL:
            raise ValidationError(f"{owner}: fixed qparams are per tensor; got qscheme {self.qscheme}")
        if self.is_dynamic:
            raise ValidationError(f"{owner}: fixed qparams cannot be dynamic")
        lo = self.quant_min if self.quant_min is not None else (None if self.dtype.is_floating_point else torch.iinfo(self.dtype).min)
        hi = self.quant_max if self.quant_max is not None else (None if self.dtype.is_floating_point else torch.iinfo(self.dtype).max)
        if lo is not None and hi is not None and not lo <= self.zero_point <= hi:
            raise ValidationError(f"{owner}: zero_point {self.zero_point} is outside the quant range [{lo}, {hi}]")


def _check_edge_or_node(owner: str, edge_or_node: Any) -> None:
    if isinstance(edge_or_node, Node):
        return
    if (
        isinstance(edge_or_node, tuple)
        and len(edge_or_node) == 2
        and all(isinstance(n, Node) for n in edge_or_node)
    ):
        return
    raise ValidationError(
        f"{owner}: expected a node (its output) or an input edge (producer_node, consumer_node), got {edge_or_node!r}"
    )


@dataclass(eq=True, frozen=True)
class SharedQuantizationSpec(QuantizationSpecBase):
    """Use the same observer / fake-quant (hence the same qparams) as ``edge_or_node``.

    For ops whose inputs and output must agree (cat, max_pool, reshape): the
    output of ``cat`` shares with its first input edge, for instance.
    """

    edge_or_node: EdgeOrNode

    def __post_init__(self) -> None:
        _check_edge_or_node(type(self).__name__, self.edge_or_node)


@dataclass(eq=True, frozen=True)
class DerivedQuantizationSpec(QuantizationSpecBase):
    """Qparams computed from other observers, e.g. an int32 bias with scale = input scale * weight scale.

    ``derive_qparams_fn`` receives the observers / fake-quants of ``derived_from``
    (in order) and returns ``(scale, zero_point)`` tensors.
    """

    derived_from: Sequence[EdgeOrNode]
    derive_qparams_fn: Callable[[list[ObserverOrFakeQuantize]], tuple[Tensor, Tensor]]
    dtype: torch.dtype
    quant_min: int | None = None
    quant_max: int | None = None
    qscheme: torch.qscheme | None = None
    ch_axis: int | None = None
    is_dynamic: bool = False

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if isinstance(self.derived_from, (Node, str)) or not isinstance(self.derived_from, Sequence):
            raise ValidationError(f"{owner}: derived_from must be a list of edges / nodes, got {self.derived_from!r}")
        if not self.derived_from:
            raise ValidationError(f"{owner}: derived_from is empty; name the edges / nodes whose observers the qparams derive from")
        for item in self.derived_from:
            _check_edge_or_node(owner, item)
        object.__setattr__(self, "derived_from", tuple(self.derived_from))  # hashable, immutable
        if not callable(self.derive_qparams_fn):
            raise ValidationError(f"{owner}: derive_qparams_fn must be callable, got {self.derive_qparams_fn!r}")
        object.__setattr__(self, "dtype", _normalized_dtype(owner, self.dtype))
        _check_range(owner, self.dtype, self.quant_min, self.quant_max)
        _check_qscheme(owner, self.qscheme, self.ch_axis)


@dataclass
class QuantizationAnnotation:
    """How a node's inputs and output are quantized; lives in ``node.meta["quantization_annotation"]``.

    ``input_qspec_map`` maps each input node (the edge ``input -> this node``)
    to its spec (None: leave that input float). ``output_qspec`` quantizes the
    node's output. ``allow_implicit_sharing``: an input edge whose spec matches
    the producer's output spec reuses the producer's observer (no requantize);
    set False to force a separate observer. ``_annotated`` marks nodes a
    quantizer has claimed, so later annotators skip them.
    """

    input_qspec_map: dict[Node, QuantizationSpecBase | None] = field(default_factory=dict)
    output_qspec: QuantizationSpecBase | None = None
    allow_implicit_sharing: bool = True
    _annotated: bool = False


class Quantizer(ABC):
    """A backend's description of how to quantize a ``torch.export`` graph.

    ``prepare_pt2e`` calls, in order: ``transform_for_annotation`` (optional
    rewrites, e.g. scalars to tensors), ``annotate`` (write annotations),
    ``validate`` (reject graphs the backend cannot run), and after observers
    are built, ``prepare_obs_or_fq_callback``.
    """

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """Rewrite the graph before annotation (decompose an op, turn scalars into tensors); default: none."""
        return model

    @abstractmethod
    def annotate(self, model: GraphModule) -> GraphModule:
        """Write a :class:`QuantizationAnnotation` on every node to quantize; return the model."""

    @abstractmethod
    def validate(self, model: GraphModule) -> None:
        """Raise if the annotated graph cannot run on this backend."""

    def prepare_obs_or_fq_callback(
        self,
        model: GraphModule,
        edge_or_node_to_obs_or_fq: dict[EdgeOrNode, ObserverOrFakeQuantize],
    ) -> None:
        """Adjust the observers built for each sharing group before they are inserted (default: nothing).

        Several edges / nodes may map to one instance (shared specs); replace
        entries in the dict to force, say, fixed qparams on the model input.
        """
        return None
