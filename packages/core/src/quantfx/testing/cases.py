"""Op-level test cases generated from a BackendConfig.

For every pattern a backend declares (an execution-order tuple such as
``(nn.Conv2d, nn.BatchNorm2d, nn.ReLU)``, a function like ``torch.add`` or a
method name like ``"relu"``), ``op_cases`` builds the smallest model whose
graph contains exactly that chain, with sensible shapes and weights. Patterns
it cannot build (fused / QAT module types, ops it does not know how to feed)
come back skipped with the reason, so a conformance run shows what was not
exercised instead of hiding it.

Each case model is a ``torch.fx.GraphModule`` built node by node, so
``print(case.model.code)`` shows exactly what is exercised; extra operands
(the second input of ``add``, ``cat`` or ``matmul``) are extra model inputs.
"""

from __future__ import annotations

import math
import operator
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from quantfx.fx.match import match_chain
from quantfx.fx.tracer import QuantizationTracer

__all__ = ["OpCase", "op_cases", "build_op_case", "pattern_configs", "case_name"]


@dataclass
class OpCase:
    """One pattern of a backend and the smallest model exercising it.

    ``model`` is None (and ``skip_reason`` set) when no model could be built.
    ``quant_mode`` is what the backend's dtype configs allow for the pattern:
    ``"static"``, ``"dynamic"``, ``"weight_only"`` or ``"none"``.
    """

    name: str
    pattern: tuple
    model: fx.GraphModule | None
    example_inputs: tuple[Any, ...]
    skip_reason: str | None = None
    quant_mode: str = "static"

    @property
    def skipped(self) -> bool:
        return self.model is None


class _CantBuild(Exception):
    """This op cannot consume the current tensor (wrong rank, dtype ...)."""


class _NeverBuildable(_CantBuild):
    """No input shape can help: report this reason as is."""


# --------------------------------------------------------------------------- naming

_FN_NAMES: dict[int, str] | None = None


def _function_names() -> dict[int, str]:
    global _FN_NAMES
    if _FN_NAMES is None:
        names: dict[int, str] = {}
        for prefix, ns in (("operator.", operator), ("torch.", torch), ("F.", F)):
            for k, v in vars(ns).items():
                if callable(v) and not k.startswith("_") and not isinstance(v, type):
                    names[id(v)] = prefix + k  # later namespaces win: F.relu over torch.relu when identical
        _FN_NAMES = names
    return _FN_NAMES


def _op_label(op: Any) -> str:
    if isinstance(op, str):
        return "." + op
    if isinstance(op, type):
        mod = op.__module__
        if mod.startswith("torch.nn.") or mod.startswith("torch.ao.nn.") or mod.startswith("quantfx.nn."):
            ns = mod.split(".modules")[0].replace("torch.", "").replace("quantfx.", "")
            return op.__name__ if ns == "nn" else f"{ns}.{op.__name__}"
        return op.__name__
    name = _function_names().get(id(op))
    if name:
        return name
    return getattr(op, "__name__", None) or repr(op)


def case_name(pattern: Any) -> str:
    """A readable, id-friendly name: ``Conv2d+BatchNorm2d+ReLU``, ``torch.add+F.relu``, ``.relu_``."""
    ops = pattern if isinstance(pattern, tuple) else (pattern,)
    return "+".join(_op_label(op) for op in ops)


# --------------------------------------------------------------------------- graph builder

_CUR = object()  # marker: the chain's current tensor


@dataclass
class _Input:
    value: torch.Tensor


@dataclass
class _Param:
    value: torch.Tensor
    trainable: bool = True


@dataclass
class _Spec:
    kind: str  # "module" | "function" | "method"
    target: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    tuple_output: bool = False  # output is a tuple: element 0 continues the chain
    non_tensor: bool = False  # output is an int / size: consumed by a reshape epilogue


class _Builder:
    def __init__(self, first_input: torch.Tensor) -> None:
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.inputs: list[torch.Tensor] = [first_input]
        self.cur_node: fx.Node = self.graph.placeholder("x")
        self.cur_val: Any = first_input
        self.values: dict[fx.Node, Any] = {self.cur_node: first_input}
        self._names: dict[str, int] = {}

    def _fresh(self, base: str) -> str:
        base = "".join(c if c.isalnum() else "_" for c in base.lower()).strip("_") or "op"
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def _materialize(self, a: Any) -> tuple[Any, Any]:
        """(graph argument, concrete value) for a spec argument."""
        if a is _CUR:
            return self.cur_node, self.cur_val
        if isinstance(a, _Input):
            node = self.graph.placeholder(f"x{len(self.inputs)}")
            self.inputs.append(a.value)
            self.values[node] = a.value
            return node, a.value
        if isinstance(a, _Param):
            name = self._fresh("w")
            if a.trainable:
                self.root.register_parameter(name, nn.Parameter(a.value))
            else:
                self.root.register_buffer(name, a.value)
            return self.graph.get_attr(name), getattr(self.root, name)
        if isinstance(a, (list, tuple)):
            pairs = [self._materialize(v) for v in a]
            return type(a)(p[0] for p in pairs), type(a)(p[1] for p in pairs)
        if isinstance(a, dict):
            pairs_d = {k: self._materialize(v) for k, v in a.items()}
            return {k: p[0] for k, p in pairs_d.items()}, {k: p[1] for k, p in pairs_d.items()}
        return a, a

    def apply(self, spec: _Spec) -> None:
        arg_nodes, arg_vals = self._materialize(spec.args)
        kw_nodes, kw_vals = self._materialize(spec.kwargs)
        try:
            with torch.no_grad():
                if spec.kind == "module":
                    name = self._fresh(type(spec.target).__name__)
                    self.root.add_module(name, spec.target)
                    value = spec.target(*arg_vals, **kw_vals)
                    node = self.graph.call_module(name, arg_nodes, kw_nodes)
                elif spec.kind == "method":
                    value = getattr(arg_vals[0], spec.target)(*arg_vals[1:], **kw_vals)
                    node = self.graph.call_method(spec.target, arg_nodes, kw_nodes)
                else:
                    value = spec.target(*arg_vals, **kw_vals)
                    node = self.graph.call_function(spec.target, arg_nodes, kw_nodes)
        except _CantBuild:
            raise
        except Exception as err:  # the op rejected these shapes / dtypes
            raise _CantBuild(f"{type(err).__name__}: {err}") from err
        self.cur_node, self.cur_val = node, value
        self.values[node] = value

    def call_function(self, fn: Callable, node_args: tuple, value: Any) -> None:
        """Append a helper node (not part of the pattern) whose value is already known."""
        self.cur_node = self.graph.call_function(fn, node_args)
        self.cur_val = value
        self.values[self.cur_node] = value


# --------------------------------------------------------------------------- op table

def _need_rank(x: torch.Tensor, *ranks: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in ranks:
        got = x.dim() if isinstance(x, torch.Tensor) else type(x).__name__
        raise _CantBuild(f"needs a {'/'.join(map(str, ranks))}-D input, got {got}")


def _need_float(x: Any) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise _CantBuild("needs a float tensor")


def _w(*shape: int, fan_in: int) -> _Param:
    return _Param(torch.randn(*shape) / math.sqrt(max(fan_in, 1)))


def _b(n: int) -> _Param:
    return _Param(torch.randn(n) * 0.1)


_CONV_OUT = 8
_LINEAR_OUT = 16


def _conv_module(n: int, cls: type) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, n + 2)
        _need_float(x)
        return _Spec("module", cls(x.shape[1], _CONV_OUT, 3, padding=1), (_CUR,))
    return build


def _convt_module(n: int, cls: type) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, n + 2)
        _need_float(x)
        return _Spec("module", cls(x.shape[1], _CONV_OUT, 2, stride=2), (_CUR,))
    return build


def _conv_fn(n: int, fn: Callable) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, n + 2)
        c = x.shape[1]
        k = (3,) * n
        return _Spec("function", fn, (_CUR, _w(_CONV_OUT, c, *k, fan_in=c * 3**n), _b(_CONV_OUT)), {"padding": 1})
    return build


def _convt_fn(n: int, fn: Callable) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, n + 2)
        c = x.shape[1]
        return _Spec("function", fn, (_CUR, _w(c, _CONV_OUT, *(2,) * n, fan_in=c * 2**n), _b(_CONV_OUT)), {"stride": 2})
    return build


def _channels_module(ranks: tuple[int, ...], make: Callable[[int], nn.Module]) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, *ranks)
        _need_float(x)
        return _Spec("module", make(x.shape[1]), (_CUR,))
    return build


def _spatial_module(n: int, make: Callable[[], nn.Module]) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, n + 2)
        return _Spec("module", make(), (_CUR,))
    return build


def _spatial_fn(n: int, fn: Callable, *args: Any, **kwargs: Any) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, n + 2)
        return _Spec("function", fn, (_CUR, *args), dict(kwargs))
    return build


def _bn(cls: type) -> Callable[[int], nn.Module]:
    def make(c: int) -> nn.Module:
        bn = cls(c)
        with torch.no_grad():
            bn.running_mean.copy_(torch.randn(c) * 0.1)
            bn.running_var.copy_(torch.rand(c) * 0.5 + 0.75)
            bn.weight.copy_(torch.rand(c) * 0.5 + 0.75)
            bn.bias.copy_(torch.randn(c) * 0.1)
        return bn.eval()
    return make


def _linear(x: torch.Tensor) -> _Spec:
    _need_rank(x, 2, 3, 4)
    _need_float(x)
    return _Spec("module", nn.Linear(x.shape[-1], _LINEAR_OUT), (_CUR,))


def _f_linear(x: torch.Tensor) -> _Spec:
    _need_rank(x, 2, 3, 4)
    f = x.shape[-1]
    return _Spec("function", F.linear, (_CUR, _w(_LINEAR_OUT, f, fan_in=f), _b(_LINEAR_OUT)))


def _layer_norm_module(x: torch.Tensor) -> _Spec:
    _need_float(x)
    return _Spec("module", nn.LayerNorm(x.shape[-1]), (_CUR,))


def _f_layer_norm(x: torch.Tensor) -> _Spec:
    _need_float(x)
    d = x.shape[-1]
    return _Spec("function", F.layer_norm, (_CUR, [d], _Param(1 + 0.1 * torch.randn(d)), _b(d)))


def _group_norm_module(x: torch.Tensor) -> _Spec:
    _need_rank(x, 3, 4, 5)
    if x.shape[1] % 2:
        raise _CantBuild("GroupNorm needs an even channel count")
    return _Spec("module", nn.GroupNorm(2, x.shape[1]), (_CUR,))


def _f_group_norm(x: torch.Tensor) -> _Spec:
    _need_rank(x, 3, 4, 5)
    c = x.shape[1]
    if c % 2:
        raise _CantBuild("group_norm needs an even channel count")
    return _Spec("function", F.group_norm, (_CUR, 2, _Param(1 + 0.1 * torch.randn(c)), _b(c)))


def _f_instance_norm(x: torch.Tensor) -> _Spec:
    _need_rank(x, 3, 4, 5)
    c = x.shape[1]
    return _Spec("function", F.instance_norm, (_CUR,), {"weight": _Param(1 + 0.1 * torch.randn(c)), "bias": _b(c)})


def _f_batch_norm(x: torch.Tensor) -> _Spec:
    _need_rank(x, 2, 3, 4, 5)
    c = x.shape[1]
    return _Spec(
        "function",
        F.batch_norm,
        (_CUR, _Param(torch.randn(c) * 0.1, False), _Param(torch.rand(c) * 0.5 + 0.75, False)),
        {"weight": _Param(1 + 0.1 * torch.randn(c)), "bias": _b(c), "training": False},
    )


def _binary(fn: Callable, positive: bool = False) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_float(x)
        other = torch.rand(x.shape) + 0.5 if positive else torch.randn(x.shape)
        return _Spec("function", fn, (_CUR, _Input(other)))
    return build


def _matmul(fn: Callable, ranks: tuple[int, ...]) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, *ranks)
        _need_float(x)
        other = torch.randn(*x.shape[:-2], x.shape[-1], x.shape[-2])
        return _Spec("function", fn, (_CUR, _Input(other)))
    return build


def _cat_like(fn: Callable) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_float(x)
        return _Spec("function", fn, ([_CUR, _Input(torch.randn(x.shape))],), {"dim": 1})
    return build


def _fn(fn: Callable, *args: Any, **kwargs: Any) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_float(x)
        return _Spec("function", fn, (_CUR, *args), dict(kwargs))
    return build


def _fn_min_rank(r: int, fn: Callable, *args: Any, **kwargs: Any) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        if x.dim() < r:
            raise _CantBuild(f"needs at least a {r}-D input")
        return _Spec("function", fn, (_CUR, *args), dict(kwargs))
    return build


def _narrow(x: torch.Tensor) -> _Spec:
    _need_rank(x, 2, 3, 4, 5)
    return _Spec("function", torch.narrow, (_CUR, 1, 0, max(1, x.shape[1] // 2)))


def _rnn(cls: type) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, 3)
        _need_float(x)
        return _Spec("module", cls(x.shape[-1], 8, batch_first=True), (_CUR,), tuple_output=True)
    return build


def _rnn_cell(cls: type, tuple_output: bool) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        _need_rank(x, 2)
        _need_float(x)
        return _Spec("module", cls(x.shape[-1], 8), (_CUR,), tuple_output=tuple_output)
    return build


def _mha(x: torch.Tensor) -> _Spec:
    _need_rank(x, 3)
    _need_float(x)
    e = x.shape[-1]
    if e % 2:
        raise _CantBuild("MultiheadAttention needs an even embedding size")
    return _Spec("module", nn.MultiheadAttention(e, 2, batch_first=True), (_CUR, _CUR, _CUR), tuple_output=True)


def _embedding(x: torch.Tensor) -> _Spec:
    if x.dtype not in (torch.int64, torch.int32):
        raise _CantBuild("needs integer indices")
    return _Spec("module", nn.Embedding(_NUM_EMBEDDINGS, 8), (_CUR,))


def _embedding_bag(x: torch.Tensor) -> _Spec:
    if x.dtype not in (torch.int64, torch.int32):
        raise _CantBuild("needs integer indices")
    _need_rank(x, 2)
    return _Spec("module", nn.EmbeddingBag(_NUM_EMBEDDINGS, 8, mode="sum"), (_CUR,))


def _method(name: str, *args: Any, min_rank: int = 0, **kwargs: Any) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        if x.dim() < min_rank:
            raise _CantBuild(f"needs at least a {min_rank}-D input")
        return _Spec("method", name, (_CUR, *args), dict(kwargs))
    return build


def _method_shaped(name: str, make_args: Callable[[torch.Tensor], tuple]) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        return _Spec("method", name, (_CUR, *make_args(x)))
    return build


def _method_shaped_fn(fn: Callable, make_args: Callable[[torch.Tensor], tuple]) -> Callable[[torch.Tensor], _Spec]:
    def build(x: torch.Tensor) -> _Spec:
        return _Spec("function", fn, (_CUR, *make_args(x)))
    return build


_NUM_EMBEDDINGS = 20

_MODULE_BUILDERS: dict[type, Callable[[torch.Tensor], _Spec]] = {
    nn.Conv1d: _conv_module(1, nn.Conv1d),
    nn.Conv2d: _conv_module(2, nn.Conv2d),
    nn.Conv3d: _conv_module(3, nn.Conv3d),
    nn.ConvTranspose1d: _convt_module(1, nn.ConvTranspose1d),
    nn.ConvTranspose2d: _convt_module(2, nn.ConvTranspose2d),
    nn.ConvTranspose3d: _convt_module(3, nn.ConvTranspose3d),
    nn.Linear: _linear,
    nn.BatchNorm1d: _channels_module((2, 3), _bn(nn.BatchNorm1d)),
    nn.BatchNorm2d: _channels_module((4,), _bn(nn.BatchNorm2d)),
    nn.BatchNorm3d: _channels_module((5,), _bn(nn.BatchNorm3d)),
    nn.InstanceNorm1d: _channels_module((3,), lambda c: nn.InstanceNorm1d(c, affine=True)),
    nn.InstanceNorm2d: _channels_module((4,), lambda c: nn.InstanceNorm2d(c, affine=True)),
    nn.InstanceNorm3d: _channels_module((5,), lambda c: nn.InstanceNorm3d(c, affine=True)),
    nn.LayerNorm: _layer_norm_module,
    nn.GroupNorm: _group_norm_module,
    nn.Softmax: lambda x: _Spec("module", nn.Softmax(dim=-1), (_CUR,)),
    nn.LeakyReLU: lambda x: _Spec("module", nn.LeakyReLU(0.1), (_CUR,)),
    nn.MaxPool1d: _spatial_module(1, lambda: nn.MaxPool1d(2)),
    nn.MaxPool2d: _spatial_module(2, lambda: nn.MaxPool2d(2)),
    nn.MaxPool3d: _spatial_module(3, lambda: nn.MaxPool3d(2)),
    nn.AvgPool1d: _spatial_module(1, lambda: nn.AvgPool1d(2)),
    nn.AvgPool2d: _spatial_module(2, lambda: nn.AvgPool2d(2)),
    nn.AvgPool3d: _spatial_module(3, lambda: nn.AvgPool3d(2)),
    nn.AdaptiveAvgPool1d: _spatial_module(1, lambda: nn.AdaptiveAvgPool1d(2)),
    nn.AdaptiveAvgPool2d: _spatial_module(2, lambda: nn.AdaptiveAvgPool2d(2)),
    nn.AdaptiveAvgPool3d: _spatial_module(3, lambda: nn.AdaptiveAvgPool3d(2)),
    nn.AdaptiveMaxPool2d: _spatial_module(2, lambda: nn.AdaptiveMaxPool2d(2)),
    nn.PixelShuffle: _spatial_module(2, lambda: nn.PixelShuffle(2)),
    nn.PixelUnshuffle: _spatial_module(2, lambda: nn.PixelUnshuffle(2)),
    nn.Upsample: _spatial_module(2, lambda: nn.Upsample(scale_factor=2.0, mode="nearest")),
    nn.UpsamplingNearest2d: _spatial_module(2, lambda: nn.UpsamplingNearest2d(scale_factor=2)),
    nn.UpsamplingBilinear2d: _spatial_module(2, lambda: nn.UpsamplingBilinear2d(scale_factor=2)),
    nn.ZeroPad1d: _spatial_module(1, lambda: nn.ZeroPad1d(1)),
    nn.ZeroPad2d: _spatial_module(2, lambda: nn.ZeroPad2d(1)),
    nn.ZeroPad3d: _spatial_module(3, lambda: nn.ZeroPad3d(1)),
    nn.ConstantPad1d: _spatial_module(1, lambda: nn.ConstantPad1d(1, 0.5)),
    nn.ConstantPad2d: _spatial_module(2, lambda: nn.ConstantPad2d(1, 0.5)),
    nn.ConstantPad3d: _spatial_module(3, lambda: nn.ConstantPad3d(1, 0.5)),
    nn.ReflectionPad1d: _spatial_module(1, lambda: nn.ReflectionPad1d(1)),
    nn.ReflectionPad2d: _spatial_module(2, lambda: nn.ReflectionPad2d(1)),
    nn.ReflectionPad3d: _spatial_module(3, lambda: nn.ReflectionPad3d(1)),
    nn.ReplicationPad1d: _spatial_module(1, lambda: nn.ReplicationPad1d(1)),
    nn.ReplicationPad2d: _spatial_module(2, lambda: nn.ReplicationPad2d(1)),
    nn.ReplicationPad3d: _spatial_module(3, lambda: nn.ReplicationPad3d(1)),
    nn.Dropout: lambda x: _Spec("module", nn.Dropout(0.5).eval(), (_CUR,)),
    nn.Embedding: _embedding,
    nn.EmbeddingBag: _embedding_bag,
    nn.LSTM: _rnn(nn.LSTM),
    nn.GRU: _rnn(nn.GRU),
    nn.RNN: _rnn(nn.RNN),
    nn.LSTMCell: _rnn_cell(nn.LSTMCell, True),
    nn.GRUCell: _rnn_cell(nn.GRUCell, False),
    nn.RNNCell: _rnn_cell(nn.RNNCell, False),
    nn.MultiheadAttention: _mha,
}

_FUNCTION_BUILDERS: dict[Any, Callable[[torch.Tensor], _Spec]] = {
    F.conv1d: _conv_fn(1, F.conv1d),
    F.conv2d: _conv_fn(2, F.conv2d),
    F.conv3d: _conv_fn(3, F.conv3d),
    F.conv_transpose1d: _convt_fn(1, F.conv_transpose1d),
    F.conv_transpose2d: _convt_fn(2, F.conv_transpose2d),
    F.conv_transpose3d: _convt_fn(3, F.conv_transpose3d),
    F.linear: _f_linear,
    F.layer_norm: _f_layer_norm,
    F.group_norm: _f_group_norm,
    F.instance_norm: _f_instance_norm,
    F.batch_norm: _f_batch_norm,
    F.softmax: _fn(F.softmax, dim=-1),
    torch.softmax: _fn(torch.softmax, -1),
    F.log_softmax: _fn(F.log_softmax, dim=-1),
    F.leaky_relu: _fn(F.leaky_relu, 0.1),
    F.dropout: _fn(F.dropout, p=0.5, training=False),
    F.interpolate: _fn_min_rank(3, F.interpolate, scale_factor=2.0, mode="nearest"),
    F.max_pool1d: _spatial_fn(1, F.max_pool1d, 2),
    F.max_pool2d: _spatial_fn(2, F.max_pool2d, 2),
    F.max_pool3d: _spatial_fn(3, F.max_pool3d, 2),
    F.avg_pool1d: _spatial_fn(1, F.avg_pool1d, 2),
    F.avg_pool2d: _spatial_fn(2, F.avg_pool2d, 2),
    F.avg_pool3d: _spatial_fn(3, F.avg_pool3d, 2),
    torch.adaptive_avg_pool1d: _spatial_fn(1, torch.adaptive_avg_pool1d, 2),
    F.adaptive_avg_pool1d: _spatial_fn(1, F.adaptive_avg_pool1d, 2),
    F.adaptive_avg_pool2d: _spatial_fn(2, F.adaptive_avg_pool2d, 2),
    F.adaptive_avg_pool3d: _spatial_fn(3, F.adaptive_avg_pool3d, 2),
    torch.pixel_shuffle: _spatial_fn(2, torch.pixel_shuffle, 2),
    torch.pixel_unshuffle: _spatial_fn(2, torch.pixel_unshuffle, 2),
    F.pad: _fn(F.pad, (1, 1)),
    torch.permute: _method_shaped_fn(torch.permute, lambda x: ((0, *range(x.dim() - 1, 0, -1)),)),
    torch.clamp: _fn(torch.clamp, -1.0, 1.0),
    torch.clip: _fn(torch.clip, -1.0, 1.0),
    F.hardtanh: _fn(F.hardtanh),
    torch.flatten: _fn_min_rank(2, torch.flatten, 1),
    torch.mean: _fn(torch.mean, -1, keepdim=True),
    torch.narrow: _narrow,
    torch.repeat_interleave: _fn_min_rank(2, torch.repeat_interleave, 2, dim=1),
    torch.transpose: _fn_min_rank(2, torch.transpose, -2, -1),
    torch.unsqueeze: _fn(torch.unsqueeze, 1),
    torch.squeeze: _fn(torch.squeeze),
    torch.reshape: lambda x: _Spec("function", torch.reshape, (_CUR, (x.shape[0], -1))),
    torch.stack: _cat_like(torch.stack),
    torch.cat: _cat_like(torch.cat),
    torch.concat: _cat_like(torch.concat),
    operator.floordiv: _fn(operator.floordiv, 2),
    operator.add: _binary(operator.add),
    torch.add: _binary(torch.add),
    operator.mul: _binary(operator.mul),
    torch.mul: _binary(torch.mul),
    operator.sub: _binary(operator.sub),
    torch.sub: _binary(torch.sub),
    operator.truediv: _binary(operator.truediv, positive=True),
    torch.div: _binary(torch.div, positive=True),
    torch.matmul: _matmul(torch.matmul, (2, 3, 4)),
    torch.bmm: _matmul(torch.bmm, (3,)),
}

_METHOD_BUILDERS: dict[str, Callable[[torch.Tensor], _Spec]] = {
    "clamp": _method("clamp", -1.0, 1.0),
    "clamp_": _method("clamp_", -1.0, 1.0),
    "mean": _method("mean", -1, keepdim=True),
    "permute": _method_shaped("permute", lambda x: (0, *range(x.dim() - 1, 0, -1))),
    "repeat": _method_shaped("repeat", lambda x: (*(1,) * (x.dim() - 1), 2)),
    "repeat_interleave": _method("repeat_interleave", 2, min_rank=2, dim=1),
    "reshape": _method_shaped("reshape", lambda x: (x.shape[0], -1)),
    "view": _method_shaped("view", lambda x: (x.shape[0], -1)),
    "flatten": _method("flatten", 1, min_rank=2),
    "transpose": _method("transpose", -2, -1, min_rank=2),
    "unsqueeze": _method("unsqueeze", 1),
    "unsqueeze_": _method("unsqueeze_", 1),
    "chunk": _method("chunk", 2, 1, min_rank=2),
    "split": _method("split", 2, 1, min_rank=2),
    "size": lambda x: _Spec("method", "size", (_CUR, 0), non_tensor=True),
    "softmax": _method("softmax", -1),
    "log_softmax": _method("log_softmax", -1),
    "narrow": _method_shaped("narrow", lambda x: (1, 0, max(1, x.shape[1] // 2))),
    "expand": _method_shaped("expand", lambda x: (2, *x.shape)),
    "add": lambda x: _Spec("method", "add", (_CUR, _Input(torch.randn(x.shape)))),
    "mul": lambda x: _Spec("method", "mul", (_CUR, _Input(torch.randn(x.shape)))),
    "sub": lambda x: _Spec("method", "sub", (_CUR, _Input(torch.randn(x.shape)))),
    "div": lambda x: _Spec("method", "div", (_CUR, _Input(torch.rand(x.shape) + 0.5))),
    "matmul": lambda x: _Spec("method", "matmul", (_CUR, _Input(torch.randn(*x.shape[:-2], x.shape[-1], x.shape[-2])))),
}

_UNBUILDABLE_METHODS = {
    "shape": "x.shape is an attribute access (a getattr node), not a method call",
    "resize_": "in-place resize is not exercised",
}

# preferred input rank of ops that constrain it; the first such op in a pattern picks the input
_PREFERRED_RANK: dict[Any, int | str] = {}
for _ops, _rank in (
    ((nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.MaxPool1d, nn.AvgPool1d,
      nn.AdaptiveAvgPool1d, F.conv1d, F.conv_transpose1d, F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d,
      torch.adaptive_avg_pool1d, nn.ZeroPad1d, nn.ConstantPad1d, nn.ReflectionPad1d, nn.ReplicationPad1d), 3),
    ((nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.MaxPool2d, nn.AvgPool2d,
      nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.PixelShuffle, nn.PixelUnshuffle, nn.Upsample,
      F.conv2d, F.conv_transpose2d, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.pixel_shuffle,
      torch.pixel_unshuffle, F.interpolate, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d,
      nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d), 4),
    ((nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d, nn.InstanceNorm3d, nn.MaxPool3d, nn.AvgPool3d,
      nn.AdaptiveAvgPool3d, F.conv3d, F.conv_transpose3d, F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d,
      nn.ZeroPad3d, nn.ConstantPad3d, nn.ReflectionPad3d, nn.ReplicationPad3d), 5),
    ((nn.Linear, F.linear, nn.LSTMCell, nn.GRUCell, nn.RNNCell), 2),
    ((nn.LayerNorm, F.layer_norm, nn.LSTM, nn.GRU, nn.RNN, nn.MultiheadAttention, torch.bmm), 3),
    ((nn.Embedding, nn.EmbeddingBag), "indices"),
):
    for _op in _ops:
        _PREFERRED_RANK.setdefault(_op, _rank)

_INPUT_SHAPES: dict[Any, tuple[int, ...]] = {2: (2, 16), 3: (2, 4, 16), 4: (2, 4, 8, 8), 5: (2, 4, 4, 6, 6)}


def _initial_input(kind: Any) -> torch.Tensor:
    if kind == "indices":
        return torch.randint(0, _NUM_EMBEDDINGS, (2, 5))
    return torch.randn(*_INPUT_SHAPES[kind])


def _is_quantization_module_type(op: Any) -> bool:
    mod = getattr(op, "__module__", "") or ""
    return isinstance(op, type) and (mod.startswith("torch.ao.nn.") or mod.startswith("quantfx.nn."))


def _is_inplace(op: Any) -> bool:
    name = op if isinstance(op, str) else getattr(op, "__name__", "")
    return isinstance(name, str) and name.endswith("_") and not name.endswith("__")


def _builder_for(op: Any) -> Callable[[torch.Tensor], _Spec]:
    if isinstance(op, str):
        if op in _UNBUILDABLE_METHODS:
            raise _CantBuild(_UNBUILDABLE_METHODS[op])
        if not callable(getattr(torch.Tensor, op, None)):
            raise _CantBuild(f"torch.Tensor has no method {op!r}, so no graph can hold this call_method node")
        return _METHOD_BUILDERS.get(op) or _method(op)
    if isinstance(op, type):
        if not issubclass(op, nn.Module):
            raise _CantBuild(f"{op.__qualname__} is a class but not an nn.Module")
        if op in _MODULE_BUILDERS:
            return _MODULE_BUILDERS[op]

        def generic_module(x: torch.Tensor) -> _Spec:
            try:
                mod = op()
            except Exception as err:
                raise _CantBuild(f"don't know how to construct {op.__qualname__}: {err}") from err
            return _Spec("module", mod.eval(), (_CUR,))

        return generic_module
    if callable(op):
        for key, build in _FUNCTION_BUILDERS.items():
            if key is op:
                return build
        return _fn(op)  # a unary elementwise op: relu, sigmoid, hardswish ...
    raise _CantBuild(f"unsupported pattern element {op!r}")


def build_op_case(pattern: Any, quant_mode: str = "static", name: str | None = None) -> OpCase:
    """Build the smallest model whose graph holds ``pattern`` as a chain; skipped with a reason if impossible."""
    ops = tuple(pattern) if isinstance(pattern, (tuple, list)) else (pattern,)
    name = name or case_name(ops)

    def skipped(reason: str) -> OpCase:
        return OpCase(name, ops, None, (), skip_reason=reason, quant_mode=quant_mode)

    if not ops:
        return skipped("empty pattern")
    for op in ops:
        if _is_quantization_module_type(op):
            return skipped(
                f"{_op_label(op)} is a fused / QAT / quantized module type produced by the passes; "
                "it is exercised through its float pattern"
            )
    try:
        builders = [_builder_for(op) for op in ops]
    except _CantBuild as err:
        return skipped(str(err))

    preferred = next((_PREFERRED_RANK[op] for op in ops if _hashable(op) and op in _PREFERRED_RANK), None)
    kinds: list[Any] = [preferred] if preferred is not None else []
    kinds += [k for k in (4, 2, 3, 5) if k != preferred]
    seed = zlib.crc32(name.encode())
    reasons: list[str] = []
    for kind in kinds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                return _build(name, ops, builders, _initial_input(kind), quant_mode)
            except _NeverBuildable as err:
                return skipped(str(err))
            except _CantBuild as err:
                reasons.append(f"{kind}-D input: {err}" if isinstance(kind, int) else f"{kind}: {err}")
    return skipped("no input shape works; " + "; ".join(reasons[:2]))


def _hashable(op: Any) -> bool:
    try:
        hash(op)
    except TypeError:
        return False
    return True


def _build(name: str, ops: tuple, builders: list, first_input: torch.Tensor, quant_mode: str) -> OpCase:
    b = _Builder(first_input)
    if any(_is_inplace(op) for op in ops):  # never mutate the caller's input tensor
        b.apply(_Spec("method", "clone", (_CUR,)))
    for i, (op, build) in enumerate(zip(ops, builders)):
        if not isinstance(b.cur_val, torch.Tensor):
            raise _CantBuild(f"{_op_label(ops[i - 1])} does not return a tensor to feed {_op_label(op)}")
        spec = build(b.cur_val)
        if spec.kind == "module" and isinstance(spec.target, nn.Module):
            spec.target.eval()
        before = b.cur_node
        b.apply(spec)
        last = i == len(ops) - 1
        if spec.non_tensor:  # x.size(0): feed it to a reshape of the op's input
            if not last:
                raise _CantBuild(f"{_op_label(op)} returns a non-tensor; it can only end a pattern")
            size_node, size_val = b.cur_node, b.cur_val
            b.cur_node = b.graph.call_method("reshape", (before, size_node, -1))
            b.cur_val = b.values[before].reshape(size_val, -1)
            b.values[b.cur_node] = b.cur_val
        elif spec.tuple_output or isinstance(b.cur_val, (tuple, list)):
            if not last:
                raise _CantBuild(f"{_op_label(op)} returns a tuple; it can only end a pattern")
            b.call_function(operator.getitem, (b.cur_node, 0), b.cur_val[0])
    if not isinstance(b.cur_val, torch.Tensor) or not b.cur_val.is_floating_point():
        raise _CantBuild("the pattern's output is not a float tensor")
    b.graph.output(b.cur_node)
    b.graph.lint()
    gm = fx.GraphModule(b.root, b.graph, class_name="OpCase_" + "".join(c if c.isalnum() else "_" for c in name))
    gm.eval()
    _check_survives_tracing(gm, ops)
    inputs = tuple(b.inputs)
    with torch.no_grad():
        out = gm(*inputs)
    if not torch.isfinite(out).all():
        raise _CantBuild("non-finite output")
    return OpCase(name, ops, gm, inputs, quant_mode=quant_mode)


def _check_survives_tracing(gm: fx.GraphModule, ops: tuple) -> None:
    """prepare_fx re-traces the model: the chain must still be there (F.sigmoid, say, is traced through)."""
    tracer = QuantizationTracer()
    tracer.record_stack_traces = False
    graph = tracer.trace(gm)
    modules = dict(gm.named_modules())
    if not any(match_chain(n, ops, modules) for n in graph.nodes):
        traced = ", ".join(f"{n.op}:{getattr(n.target, '__name__', n.target)}" for n in graph.nodes
                           if n.op not in ("placeholder", "output", "get_attr"))
        raise _NeverBuildable(
            f"the pattern never appears in a traced graph: torch.fx records this code as [{traced}]"
        )


# --------------------------------------------------------------------------- backend configs

def _quant_mode(dtype_configs: Iterable[Any]) -> str:
    dcs = list(dtype_configs or [])
    if not dcs:
        return "static"

    def intlike(dt: Any) -> bool:
        s = str(dt) if dt is not None else ""
        return "int" in s

    modes = set()
    for dc in dcs:
        input_dtype = getattr(dc, "input_dtype", None)
        weight_dtype = getattr(dc, "weight_dtype", None)
        if getattr(dc, "is_dynamic", False):
            modes.add("dynamic")
        elif intlike(input_dtype):
            modes.add("static")
        elif intlike(weight_dtype):
            modes.add("weight_only")
        elif str(input_dtype).endswith("float16") or str(weight_dtype).endswith("float16"):
            modes.add("float16")
    for m in ("static", "dynamic", "weight_only", "float16"):
        if m in modes:
            return m
    return "none"


@dataclass
class _ComplexPattern:
    """A torch.ao pattern config that only has the old reversed nested tuple format."""

    value: Any


def pattern_configs(backend_config: Any) -> list[tuple[Any, str]]:
    """(pattern, quant_mode) for each pattern of a BackendConfig.

    Accepts quantfx's or torch.ao's ``BackendConfig`` (``.configs`` of pattern
    configs with ``.pattern`` and ``.dtype_configs``), or a plain list of
    patterns (treated as static).
    """
    configs = getattr(backend_config, "configs", backend_config)
    if isinstance(configs, dict):
        configs = list(configs.values())
    out: list[tuple[Any, str]] = []
    for cfg in configs:
        if hasattr(cfg, "dtype_configs") or hasattr(cfg, "pattern"):
            pattern = getattr(cfg, "pattern", None)
            if pattern is None:
                pattern = _ComplexPattern(getattr(cfg, "_pattern_complex_format", None))
            out.append((pattern, _quant_mode(getattr(cfg, "dtype_configs", None))))
        else:
            out.append((cfg, "static"))
    return out


def _case_for(pattern: Any, mode: str) -> OpCase:
    if isinstance(pattern, _ComplexPattern):
        return OpCase(
            f"complex:{pattern.value!r}", (pattern.value,), None, (), quant_mode=mode,
            skip_reason="pattern given only in torch.ao's reversed nested tuple format",
        )
    return build_op_case(pattern, mode)


def op_cases(backend_config: Any, include_skipped: bool = False) -> list[OpCase]:
    """One ``OpCase`` per pattern of ``backend_config`` (names made unique).

    Skipped patterns (with ``skip_reason``) are returned only with
    ``include_skipped=True``, which is what a conformance run uses to report them.
    """
    cases: list[OpCase] = []
    seen: dict[str, int] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only add contention (restored below)
    try:
        built = [(p, m, _case_for(p, m)) for p, m in pattern_configs(backend_config)]
    finally:
        torch.set_num_threads(threads)
    for pattern, mode, case in built:
        n = seen.get(case.name, 0)
        seen[case.name] = n + 1
        if n:
            case.name = f"{case.name}#{n + 1}"
        if include_skipped or not case.skipped:
            cases.append(case)
    return cases
