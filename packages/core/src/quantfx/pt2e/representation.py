"""``convert_pt2e(..., use_reference_representation=True)``: quantized ops as explicit integer arithmetic.

The q / dq form says *what* is quantized; this form says *how an integer
kernel computes it*, for integer-only targets and for checking one:

- ``dq -> linear / conv1d / conv2d (int8 constant weight) -> [relu] -> q``
  becomes :func:`quantized_linear` / :func:`quantized_conv`: int32 accumulation
  of ``(x - x_zp) * (w - w_zp)``, bias quantized to int32 with scale
  ``x_scale * w_scale``, requantized with the float multiplier
  ``x_scale * w_scale / out_scale``;
- ``dq, dq -> add -> [relu] -> q`` becomes :func:`quantized_add`: each input
  rescaled to the output scale, rounded, summed.

Only static per-tensor activations are rewritten; other patterns keep their
q / dq form. Results differ from the q / dq form by integer rounding only
(bias and requantization), as in torchao's reference representation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx import GraphModule, Node

import quantfx.ops  # noqa: F401  (registers torch.ops.quantfx.*)
from quantfx.pt2e.graph_utils import constant_value

__all__ = ["reference_representation_rewrite", "quantized_linear", "quantized_conv", "quantized_add"]

aten = torch.ops.aten
_q = torch.ops.quantfx
_RELU = (aten.relu.default, aten.relu_.default)


def _centered(t: Tensor, zp: Any, axis: int | None = None) -> Tensor:
    t = t.to(torch.int32)
    if isinstance(zp, Tensor) and zp.numel() > 1 and axis is not None:
        shape = [1] * t.dim()
        shape[axis] = -1
        return t - zp.to(torch.int32).reshape(shape)
    return t - (int(zp) if not isinstance(zp, Tensor) else zp.to(torch.int32).reshape(()))


def _requantize(acc: Tensor, multiplier: Tensor, out_zp: int, qmin: int, qmax: int, dtype: torch.dtype, relu: bool) -> Tensor:
    out = torch.round(acc.to(torch.float32) * multiplier) + out_zp
    out = torch.clamp(out, out_zp if relu else qmin, qmax)
    return out.clamp(qmin, qmax).to(dtype)


def _weight_scale(w_scale: Any, channels: int, shape_dims: int, channel_dim: int) -> Tensor:
    s = torch.as_tensor(w_scale, dtype=torch.float32).reshape(-1)
    if s.numel() == 1:
        s = s.expand(channels)
    shape = [1] * shape_dims
    shape[channel_dim] = channels
    return s.reshape(shape)


def _int32_bias(bias: Tensor | None, x_scale: float, w_scale: Tensor) -> Tensor | None:
    if bias is None:
        return None
    return torch.round(bias.float() / (x_scale * w_scale.reshape(-1))).to(torch.int32)


def quantized_linear(
    x: Tensor, x_scale: float, x_zp: int,
    w: Tensor, w_scale: Any, w_zp: Any, w_axis: int | None,
    bias: Tensor | None,
    out_scale: float, out_zp: int, out_qmin: int, out_qmax: int, out_dtype: torch.dtype, relu: bool = False,
) -> Tensor:
    """int8 linear: int32 accumulate, int32 bias, float requantization multiplier."""
    xi = _centered(x, x_zp)
    wi = _centered(w, w_zp, w_axis)
    acc = F.linear(xi.to(torch.float64), wi.to(torch.float64)).to(torch.int32)  # exact: |acc| < 2**53
    ws = _weight_scale(w_scale, w.shape[0], 1, 0)
    b = _int32_bias(bias, x_scale, ws)
    if b is not None:
        acc = acc + b
    return _requantize(acc, (x_scale * ws / out_scale).reshape(-1), out_zp, out_qmin, out_qmax, out_dtype, relu)


def quantized_conv(
    x: Tensor, x_scale: float, x_zp: int,
    w: Tensor, w_scale: Any, w_zp: Any, w_axis: int | None,
    bias: Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int,
    out_scale: float, out_zp: int, out_qmin: int, out_qmax: int, out_dtype: torch.dtype, relu: bool = False,
) -> Tensor:
    """int8 conv1d / conv2d: int32 accumulate (zero padding of ``x - x_zp``), int32 bias, float requantization."""
    xi = _centered(x, x_zp).to(torch.float64)
    wi = _centered(w, w_zp, w_axis).to(torch.float64)
    conv = F.conv1d if w.dim() == 3 else F.conv2d
    acc = conv(xi, wi, None, stride, padding, dilation, groups).to(torch.int32)
    ws = _weight_scale(w_scale, w.shape[0], w.dim(), 1)
    b = _int32_bias(bias, x_scale, ws)
    if b is not None:
        acc = acc + b.reshape([1, -1] + [1] * (w.dim() - 2))
    return _requantize(acc, x_scale * ws / out_scale, out_zp, out_qmin, out_qmax, out_dtype, relu)


def quantized_add(
    a: Tensor, a_scale: float, a_zp: int, b: Tensor, b_scale: float, b_zp: int,
    out_scale: float, out_zp: int, out_qmin: int, out_qmax: int, out_dtype: torch.dtype, relu: bool = False,
) -> Tensor:
    """int8 add: both inputs rescaled to the output scale and rounded, then summed."""
    ai = torch.round(_centered(a, a_zp).to(torch.float32) * (a_scale / out_scale)).to(torch.int32)
    bi = torch.round(_centered(b, b_zp).to(torch.float32) * (b_scale / out_scale)).to(torch.int32)
    out = ai + bi + out_zp
    return torch.clamp(out, out_zp if relu else out_qmin, out_qmax).clamp(out_qmin, out_qmax).to(out_dtype)


# --------------------------------------------------------------------------- the rewrite


def _is(node: Any, *targets: Any) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def _static_dq_input(dq: Any) -> tuple | None:
    """(int tensor node, scale, zp) of a per-tensor static dequantize."""
    if not _is(dq, _q.dequantize_per_tensor.default):
        return None
    return dq.args[0], float(dq.args[1]), int(dq.args[2])


def _output_q(node: Node) -> tuple[Node, bool] | None:
    """The per-tensor quantize reading ``node`` (through a relu), and whether a relu sits between."""
    users = list(node.users)
    if len(users) != 1:
        return None
    relu = _is(users[0], *_RELU)
    if relu:
        users = list(users[0].users)
        if len(users) != 1:
            return None
    if not _is(users[0], _q.quantize_per_tensor.default):
        return None
    return users[0], relu


def _weight(gm: GraphModule, dq: Any) -> tuple | None:
    if _is(dq, _q.dequantize_per_tensor.default):
        w, scale, zp = dq.args[0], float(dq.args[1]), int(dq.args[2])
        axis = None
    elif _is(dq, _q.dequantize_per_channel.default):
        w, scale, zp, axis = dq.args[0], dq.args[1], dq.args[2], int(dq.args[3])
    else:
        return None
    if not isinstance(w, Node) or w.op != "get_attr":
        return None
    return w, scale, zp, axis


def reference_representation_rewrite(gm: GraphModule) -> GraphModule:
    """Rewrite quantized linear / conv / add patterns of ``gm`` (in place) into integer arithmetic."""
    linear_ops = (aten.linear.default,)
    conv_ops = (aten.conv1d.default, aten.conv2d.default)
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        out = _output_q(node) if node.target in (*linear_ops, *conv_ops, aten.add.Tensor) else None
        if out is None:
            continue
        q_out, relu = out
        out_args = (float(q_out.args[1]), int(q_out.args[2]), int(q_out.args[3]), int(q_out.args[4]), q_out.args[5])
        if node.target is aten.add.Tensor:
            a, b = (_static_dq_input(x) for x in node.args[:2])
            if a is None or b is None or node.kwargs:
                continue
            target, args = quantized_add, (*a, *b, *out_args, relu)
        else:
            x = _static_dq_input(node.args[0])
            w = _weight(gm, node.args[1]) if len(node.args) > 1 else None
            bias = node.args[2] if len(node.args) > 2 else None
            ok_bias = bias is None or constant_value(gm, bias)[0]
            if x is None or w is None or not ok_bias or node.kwargs:
                continue
            if node.target in linear_ops:
                target, args = quantized_linear, (*x, *w, bias, *out_args, relu)
            else:
                stride, padding, dilation, groups = (list(node.args[3:]) + [1, 0, 1, 1][len(node.args[3:]):])[:4]
                if isinstance(padding, str):
                    continue
                target, args = quantized_conv, (*x, *w, bias, stride, padding, dilation, groups, *out_args, relu)
        with gm.graph.inserting_before(q_out):
            new = gm.graph.call_function(target, args)
        new.meta.update({k: v for k, v in q_out.meta.items() if k in ("val", "tensor_meta")})
        q_out.replace_all_uses_with(new)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm
