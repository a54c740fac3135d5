"""Matching BackendConfig patterns against FX graph nodes.

A pattern is one op or a tuple of ops in *execution order*, e.g.
``(nn.Conv2d, nn.BatchNorm2d, nn.ReLU)``: each node's output is the first
positional input of the next and has no other user. An op is

- an ``nn.Module`` subclass: a ``call_module`` node whose module is exactly that type;
- a ``str``: a ``call_method`` node with that method name (``"relu"``);
- any other callable: a ``call_function`` node with that target (``torch.relu``, ``operator.add``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch.fx import Node

__all__ = ["Pattern", "normalize_pattern", "node_matches_op", "match_chain", "pattern_to_str"]

Pattern = Any  # an op, or a tuple of ops in execution order


def normalize_pattern(pattern: Pattern) -> tuple:
    """Return the pattern as a tuple of ops in execution order."""
    return tuple(pattern) if isinstance(pattern, (tuple, list)) else (pattern,)


def node_matches_op(node: Node, op: Any, modules: Mapping[str, torch.nn.Module]) -> bool:
    if isinstance(op, type) and issubclass(op, torch.nn.Module):
        return node.op == "call_module" and type(modules.get(node.target)) is op
    if isinstance(op, str):
        return node.op == "call_method" and node.target == op
    return node.op == "call_function" and node.target is op


def match_chain(last: Node, pattern: Pattern, modules: Mapping[str, torch.nn.Module]) -> list[Node] | None:
    """Match ``pattern`` ending at ``last``; return the nodes in execution order, or None."""
    ops = normalize_pattern(pattern)
    if not node_matches_op(last, ops[-1], modules):
        return None
    matched = [last]
    current = last
    for op in reversed(ops[:-1]):
        if not current.args or not isinstance(current.args[0], Node):
            return None
        prev = current.args[0]
        if len(prev.users) != 1 or not node_matches_op(prev, op, modules):
            return None
        matched.append(prev)
        current = prev
    matched.reverse()
    return matched


def _op_name(op: Any) -> str:
    from ..qconfig_mapping import _type_name  # one readable-name rule for the whole package

    return _type_name(op)


def pattern_to_str(pattern: Pattern) -> str:
    """Readable pattern, for errors and reports: 'torch.nn.Conv2d -> torch.nn.ReLU'."""
    return " -> ".join(_op_name(op) for op in normalize_pattern(pattern))
