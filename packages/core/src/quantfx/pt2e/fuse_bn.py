"""Post-training BatchNorm folding on exported graphs: ``conv -> batch_norm`` becomes one conv.

Runs before annotation in ``prepare_pt2e``, so the weight observer sees the
folded weight (what the quantized conv will compute with). Folded weights are
written to new attributes, never over the original parameter: a weight shared
by two convs (a module called twice) folds correctly for each call.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import torch
from torch.fx import GraphModule, Node

from quantfx.errors import QuantfxWarning
from quantfx.nn.intrinsic.folding import fold_bn_weights
from quantfx.pt2e.graph_utils import get_attr_value, set_attr, unique_attr_name
from quantfx.quantizer.annotators import CONV_OPS, CONV_TRANSPOSE_OPS, LINEAR_OPS

__all__ = ["fuse_conv_bn", "bn_args"]

aten = torch.ops.aten
_BN_EVAL = {aten._native_batch_norm_legit_no_training.default}


def bn_args(bn: Node) -> dict[str, Any]:
    """weight / bias / running_mean / running_var nodes, eps and training flag of a batch_norm node."""
    a = list(bn.args)
    if bn.target is aten.batch_norm.default:
        # (input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
        names = ["input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"]
        out = dict(zip(names, a))
        out.update({k: v for k, v in bn.kwargs.items() if k in names})
        return out
    if bn.target in _BN_EVAL:
        # (input, weight, bias, running_mean, running_var, momentum, eps)
        names = ["input", "weight", "bias", "running_mean", "running_var", "momentum", "eps"]
        out = dict(zip(names, a))
        out["training"] = False
        return out
    raise ValueError(f"node '{bn.name}' is not a batch_norm ({bn.target})")


def _tensor(gm: GraphModule, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if not isinstance(node, Node) or node.op != "get_attr":
        raise ValueError(f"expected a get_attr node, got {node}")
    return get_attr_value(gm, str(node.target))


def _new_attr_node(gm: GraphModule, before: Node, base: str, value: torch.Tensor, like: Node) -> Node:
    name = unique_attr_name(gm, base)
    set_attr(gm, name, value, parameter=True)
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(name)
    fake = getattr(like.meta.get("val"), "fake_mode", None)
    node.meta["val"] = fake.from_tensor(value, static_shapes=True) if fake is not None else value
    return node


def _bn_output_users(bn: Node) -> list[Node] | None:
    """Nodes reading the normalized output (for tuple-returning BN ops, their getitem(0)); None if other outputs are used."""
    if bn.target is aten.batch_norm.default:
        return [bn]
    outs = []
    for user in bn.users:
        if user.op == "call_function" and user.target is operator.getitem:
            if user.args[1] == 0:
                outs.append(user)
            elif user.users:
                return None
    return outs


def fuse_conv_bn(gm: GraphModule) -> bool:
    """Fold every eval-mode BatchNorm that directly follows a conv / conv_transpose / 2-D linear; return True if any."""
    changed = False
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target not in (aten.batch_norm.default, *_BN_EVAL):
            continue
        args = bn_args(bn)
        op = args["input"]
        if not isinstance(op, Node) or op.op != "call_function" or len(op.users) != 1:
            continue
        is_conv = op.target in CONV_OPS or op.target in CONV_TRANSPOSE_OPS
        if not is_conv and op.target not in LINEAR_OPS:
            continue
        if op.target in LINEAR_OPS:
            val = op.args[0].meta.get("val") if isinstance(op.args[0], Node) else None
            if val is None or val.dim() != 2:
                continue  # BatchNorm1d normalizes dim 1, linear the last: foldable only for (N, C) inputs
        weight_node = op.args[1]
        bias_node = op.args[2] if len(op.args) > 2 else None
        stats = [args.get(k) for k in ("weight", "bias", "running_mean", "running_var")]
        if not isinstance(weight_node, Node) or weight_node.op != "get_attr":
            continue
        if bias_node is not None and (not isinstance(bias_node, Node) or bias_node.op != "get_attr"):
            continue
        if any(s is not None and (not isinstance(s, Node) or s.op != "get_attr") for s in stats) or stats[2] is None:
            continue
        outputs = _bn_output_users(bn)
        if outputs is None:
            continue
        if args.get("training"):
            warnings.warn(
                f"batch_norm node '{bn.name}' runs in training mode but post-training quantization folds it with its "
                f"running statistics; export the model in eval mode (model.eval() before torch.export) or call "
                f"quantfx.quantize_pt2e.move_exported_model_to_eval(exported) first.",
                QuantfxWarning,
                stacklevel=3,
            )
        w = _tensor(gm, weight_node)
        b = _tensor(gm, bias_node)
        bn_w, bn_b, rm, rv = (_tensor(gm, s) for s in stats)
        transpose = op.target in CONV_TRANSPOSE_OPS
        groups = op.args[6] if is_conv and len(op.args) > 6 else 1
        new_w, new_b = fold_bn_weights(w, b, rm, rv, float(args.get("eps", 1e-5)), bn_w, bn_b, transpose=transpose, groups=groups)
        w_node = _new_attr_node(gm, op, f"{weight_node.target}_fused_bn", new_w, weight_node)
        b_node = _new_attr_node(gm, op, f"{weight_node.target}_fused_bn_bias", new_b, weight_node)
        new_args = list(op.args) + [None] * max(0, 3 - len(op.args))
        new_args[1], new_args[2] = w_node, b_node
        op.args = tuple(new_args)
        for out in outputs:
            out.replace_all_uses_with(op)
        for out in outputs:
            if out is not bn and not out.users:
                gm.graph.erase_node(out)
        if not bn.users:
            gm.graph.erase_node(bn)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return changed
