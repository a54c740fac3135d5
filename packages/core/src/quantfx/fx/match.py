"""Matching BackendConfig patterns against FX graph nodes.

A pattern is one op or a tuple of ops in *execution order*, e.g.
``(nn.Conv2d, nn.BatchNorm2d, nn.ReLU)``: each node's output is the first
positional input of the next and has no other user. An op is

- an ``nn.Module`` subclass: a ``call_module`` node whose module is exactly that type;
- a ``str``: a ``call_method`` node with that method name (``"relu"``);
- any other callable: a ``call_function`` node with that target (``torch.relu``, ``operator.add``).
"""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

import torch
from torch.fx import Node

__all__ = ["Pattern", "PatternIndex", "normalize_pattern", "node_matches_op", "match_chain", "pattern_to_str"]

T = TypeVar("T")

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


#: binary ops whose operands may be swapped: a chain may continue through either operand
_COMMUTATIVE = frozenset({operator.add, torch.add})


def _chain_inputs(node: Node) -> list[Node]:
    """The inputs of ``node`` a pattern chain may come through: the first, or either operand of ``x + y``."""
    args = [a for a in node.args[:2] if isinstance(a, Node)]
    if node.op == "call_function" and node.target in _COMMUTATIVE and len(node.args) == 2 and not node.kwargs:
        return args  # x + conv(y) is conv(y) + x
    return args[:1] if node.args and isinstance(node.args[0], Node) else []


def match_chain(last: Node, pattern: Pattern, modules: Mapping[str, torch.nn.Module]) -> list[Node] | None:
    """Match ``pattern`` ending at ``last``; return the nodes in execution order, or None.

    Each op's output is the *first* input of the next, except into ``x + y``
    (``operator.add`` / ``torch.add`` without ``alpha``), which is commutative:
    there the chain may come through either operand, the first tried first.
    """
    ops = normalize_pattern(pattern)
    if not node_matches_op(last, ops[-1], modules):
        return None
    return _match_upwards(last, ops[:-1], modules)


def _match_upwards(current: Node, ops: tuple, modules: Mapping[str, torch.nn.Module]) -> list[Node] | None:
    if not ops:
        return [current]
    for prev in _chain_inputs(current):
        if len(prev.users) != 1 or not node_matches_op(prev, ops[-1], modules):
            continue
        upstream = _match_upwards(prev, ops[:-1], modules)
        if upstream is not None:
            return [*upstream, current]
    return None


def _op_key(op: Any) -> tuple[str, Any] | None:
    """What a node must be for ``node_matches_op(node, op)``: (node.op, module type / method name / target)."""
    if isinstance(op, type) and issubclass(op, torch.nn.Module):
        key: tuple[str, Any] = ("call_module", op)
    elif isinstance(op, str):
        key = ("call_method", op)
    else:
        key = ("call_function", op)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _node_key(node: Node, modules: Mapping[str, torch.nn.Module]) -> tuple[str, Any] | None:
    if node.op == "call_module":
        return ("call_module", type(modules.get(node.target)))
    key = (node.op, node.target)
    try:
        hash(key)
    except TypeError:
        return None
    return key


class PatternIndex(Generic[T]):
    """Items (pattern configs) grouped by the op their pattern ends with.

    ``match_chain`` starts from the last op, so a node can only match the
    patterns ending with its own op: looking those up instead of trying every
    pattern on every node makes matching linear in the graph size. Candidates
    come back in the order the items were given (first match wins stays true).
    """

    def __init__(self, items: Sequence[T], pattern_of: Callable[[T], Pattern]) -> None:
        self._by_key: dict[tuple[str, Any], list[tuple[int, T]]] = defaultdict(list)
        self._always: list[tuple[int, T]] = []  # ops that cannot be dict keys: tried on every node
        for i, item in enumerate(items):
            key = _op_key(normalize_pattern(pattern_of(item))[-1])
            (self._always if key is None else self._by_key[key]).append((i, item))

    def candidates(self, node: Node, modules: Mapping[str, torch.nn.Module]) -> list[T]:
        """The items whose pattern may end at ``node``, in their original order."""
        key = _node_key(node, modules)
        found = self._by_key.get(key, []) if key is not None else []
        if self._always:
            found = sorted(found + self._always, key=lambda pair: pair[0])
        return [item for _, item in found]


def _op_name(op: Any) -> str:
    from ..qconfig_mapping import _type_name  # one readable-name rule for the whole package

    return _type_name(op)


def pattern_to_str(pattern: Pattern) -> str:
    """Readable pattern, for errors and reports: 'torch.nn.Conv2d -> torch.nn.ReLU'."""
    return " -> ".join(_op_name(op) for op in normalize_pattern(pattern))
