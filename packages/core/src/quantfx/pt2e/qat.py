"""QAT conv-bn: simulate BN folding while training, fold for real at convert.

``fuse_conv_bn_qat`` (in ``prepare_qat_pt2e``, after annotation) rewrites
``conv(x, w, b) -> batch_norm`` into::

    factor   = bn_weight / sqrt(running_var + eps)
    conv_out = conv(x, w * factor[:, None, ...], None)      # weight fake-quant sits on this edge
    y        = conv_out / factor[None, :, None, ...] + b[None, :, None, ...]
    batch_norm(y, ...)                                       # still trains on batch statistics

so the weight is fake-quantized as it will be after folding, and BN keeps
learning. ``fold_conv_bn_qat`` (in ``convert_pt2e``) then folds BN's final
statistics into the conv weight and bias, keeps the weight fake-quant's
qparams and deletes the BN: the converted graph reads ``dq -> conv -> q``.
Same algorithm as torchao's ``_fuse_conv_bn_qat`` / ``_fold_conv_bn_qat``,
written as direct graph edits recorded in ``node.meta`` by node name (so it
survives ``copy.deepcopy``), not as subgraph pattern matching.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import GraphModule, Node

from quantfx.nn.intrinsic.folding import fold_bn_weights
from quantfx.pt2e.fuse_bn import bn_args
from quantfx.pt2e.graph_utils import get_attr_value, set_attr, unique_attr_name
from quantfx.quantizer.annotators import CONV_OPS, CONV_TRANSPOSE_OPS
from quantfx.quantizer.quantizer import Q_ANNOTATION_KEY, QuantizationAnnotation

__all__ = ["fuse_conv_bn_qat", "fold_conv_bn_qat", "QAT_CONV_BN_KEY"]

#: ``node.meta`` key on the batch_norm node: names of the nodes of its simulated-fold pattern.
QAT_CONV_BN_KEY = "quantfx_qat_conv_bn"

aten = torch.ops.aten


def _fake(node: Node) -> None:
    """Fill ``node.meta['val']`` by running the op on its inputs' fake tensors (best effort)."""
    def val(a: Any) -> Any:
        if isinstance(a, Node):
            return a.meta.get("val")
        if isinstance(a, (list, tuple)):
            return type(a)(val(x) for x in a)
        return a

    args, kwargs = val(node.args), {k: val(v) for k, v in node.kwargs.items()}
    fake_mode = next((getattr(v, "fake_mode", None) for v in args if getattr(v, "fake_mode", None) is not None), None)
    if fake_mode is None:
        return
    try:
        with fake_mode:
            node.meta["val"] = node.target(*args, **kwargs)
    except Exception:
        pass


def _call(gm: GraphModule, target: Any, args: tuple) -> Node:
    node = gm.graph.call_function(target, args)
    _fake(node)
    return node


def fuse_conv_bn_qat(gm: GraphModule) -> int:
    """Rewrite each ``conv -> batch_norm`` (conv used only by the BN) for QAT; return how many."""
    count = 0
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target is not aten.batch_norm.default:
            continue
        args = bn_args(bn)
        conv = args["input"]
        if not isinstance(conv, Node) or conv.op != "call_function" or len(conv.users) != 1:
            continue
        transpose = conv.target in CONV_TRANSPOSE_OPS
        if conv.target not in CONV_OPS and not transpose:
            continue
        weight, bias = conv.args[1], conv.args[2] if len(conv.args) > 2 else None
        groups = conv.args[6] if len(conv.args) > 6 else 1
        if not isinstance(weight, Node) or weight.op != "get_attr" or (transpose and groups != 1):
            continue
        running_var, bn_weight = args["running_var"], args["weight"]
        if not isinstance(running_var, Node):
            continue
        ndim = get_attr_value(gm, str(weight.target)).dim()
        w_shape = [1, -1] + [1] * (ndim - 2) if transpose else [-1] + [1] * (ndim - 1)
        out_shape = [1, -1] + [1] * (ndim - 2)
        g = gm.graph
        with g.inserting_before(conv):
            std = _call(gm, aten.sqrt.default, (_call(gm, aten.add.Tensor, (running_var, float(args.get("eps", 1e-5)))),))
            factor = _call(gm, aten.div.Tensor, (bn_weight, std)) if bn_weight is not None else _call(gm, aten.reciprocal.default, (std,))
            scaled_weight = _call(gm, aten.mul.Tensor, (weight, _call(gm, aten.reshape.default, (factor, w_shape))))
            factor_view = _call(gm, aten.reshape.default, (factor, out_shape))
            bias_view = _call(gm, aten.reshape.default, (bias, out_shape)) if isinstance(bias, Node) else None
        new_args = list(conv.args) + [None] * max(0, 3 - len(conv.args))
        new_args[1], new_args[2] = scaled_weight, None
        conv.args = tuple(new_args)
        _fake(conv)
        with g.inserting_after(conv):
            out = _call(gm, aten.div.Tensor, (conv, factor_view))
        if bias_view is not None:
            with g.inserting_after(out):
                out = _call(gm, aten.add.Tensor, (out, bias_view))
        bn.replace_input_with(conv, out)
        annotation = conv.meta.get(Q_ANNOTATION_KEY)
        if annotation is not None:
            input_map = dict(annotation.input_qspec_map)
            if weight in input_map:
                input_map[scaled_weight] = input_map.pop(weight)
            input_map.pop(bias, None)
            annotation.input_qspec_map = input_map
            if annotation.output_qspec is not None:  # the conv's own output (before BN) stays observed
                out.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=annotation.output_qspec, _annotated=True)
                annotation.output_qspec = None
        bn.meta[QAT_CONV_BN_KEY] = {
            "conv": conv.name,
            "weight": weight.name,
            "bias": bias.name if isinstance(bias, Node) else None,
            "scaled_weight": scaled_weight.name,
            "out": out.name,
            "transpose": transpose,
        }
        count += 1
    if count:
        gm.recompile()
    return count


def fold_conv_bn_qat(gm: GraphModule) -> int:
    """Fold the BN of every simulated-fold pattern into its conv (before observers become q / dq)."""
    by_name = {n.name: n for n in gm.graph.nodes}
    count = 0
    for bn in list(gm.graph.nodes):
        info = bn.meta.get(QAT_CONV_BN_KEY)
        if info is None or bn.op != "call_function":
            continue
        conv, weight, out = by_name[info["conv"]], by_name[info["weight"]], by_name[info["out"]]
        scaled_weight = by_name[info["scaled_weight"]]
        bias = by_name[info["bias"]] if info["bias"] else None
        args = bn_args(bn)

        def tensor(n: Any) -> torch.Tensor | None:
            return None if n is None else get_attr_value(gm, str(n.target))

        new_w, new_b = fold_bn_weights(
            tensor(weight), tensor(bias), tensor(args["running_mean"]), tensor(args["running_var"]),
            float(args.get("eps", 1e-5)), tensor(args["weight"]), tensor(args["bias"]), transpose=info["transpose"],
        )
        g = gm.graph
        w_name = unique_attr_name(gm, f"{weight.target}_folded")
        b_name = unique_attr_name(gm, f"{weight.target}_folded_bias")
        set_attr(gm, w_name, new_w.detach())
        set_attr(gm, b_name, new_b.detach())
        with g.inserting_before(scaled_weight):  # precedes both the weight fake-quant and the conv
            w_node = g.get_attr(w_name)
            b_node = g.get_attr(b_name)
        w_node.meta["val"], b_node.meta["val"] = new_w.detach(), new_b.detach()
        # the weight observer / fake-quant (if any) read the scaled weight: point it at the folded one
        for user in list(scaled_weight.users):
            user.replace_input_with(scaled_weight, w_node)
        conv_args = list(conv.args)
        conv_args[2] = b_node
        conv.args = tuple(conv_args)
        bn.replace_all_uses_with(bn.args[0])  # BN output users (the output fake-quant) read BN's input chain ...
        out.replace_all_uses_with(conv)  # ... which now starts at the conv: the div / add go
        g.erase_node(bn)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return count
