"""A read-only index over an ONNX graph: producers, consumers, constants.

The passes and the checker ask the same questions ("what produces this
input?", "is it a constant?", "who reads this output?"); answering them from
one index keeps each pass a few lines.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["GraphIndex", "attr"]


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of attribute ``name`` of ``node`` (ints, floats, lists), or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class GraphIndex:
    """Producers / consumers / constants of one ``onnx.GraphProto`` (rebuild it after editing the graph)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.graph_outputs = {o.name for o in graph.output}
        self.graph_inputs = {i.name for i in graph.input}

    def is_constant(self, name: str) -> bool:
        """An initializer or the output of a ``Constant`` node."""
        if name in self.initializers:
            return True
        node = self.producer.get(name)
        return node is not None and node.op_type == "Constant"

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant input (initializer or ``Constant`` node), else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            value = attr(node, "value")
            if isinstance(value, onnx.TensorProto):
                return numpy_helper.to_array(value)
        return None

    def constant_elem_type(self, name: str) -> int | None:
        """The ONNX element type of a constant input, else None."""
        if name in self.initializers:
            return self.initializers[name].data_type
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            value = attr(node, "value")
            if isinstance(value, onnx.TensorProto):
                return value.data_type
        return None

    def unique_name(self, base: str) -> str:
        """A tensor name not used in the graph yet."""
        taken = set(self.initializers) | set(self.producer) | self.graph_inputs
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        return name
