"""Check that an ONNX model is in the explicit Q/DQ form runtimes can fuse.

TensorRT, ONNX Runtime and OpenVINO fuse ``DequantizeLinear -> Conv / Gemm /
MatMul -> QuantizeLinear`` into int8 kernels only where every data input of
the compute op comes through a Q/DQ pair (activations) or a DequantizeLinear
of an integer initializer (weights). ``check_qdq`` lists every place where
that does not hold, by node name, so a test or a backend can assert it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from quantfx.onnx.graph import GraphIndex

__all__ = ["QDQReport", "check_qdq", "COMPUTE_OPS"]

#: op type -> indices of its inputs that must come through Q/DQ (bias stays float)
COMPUTE_OPS: dict[str, tuple[int, ...]] = {
    "Conv": (0, 1),
    "ConvTranspose": (0, 1),
    "Gemm": (0, 1),
    "MatMul": (0, 1),
}

_INT_TYPES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32}


@dataclass
class QDQReport:
    """What ``check_qdq`` found; each entry is a sentence naming the node."""

    quantized_compute_nodes: list[str] = field(default_factory=list)
    unquantized_inputs: list[str] = field(default_factory=list)
    float_weights: list[str] = field(default_factory=list)
    dangling_quantize: list[str] = field(default_factory=list)
    dangling_dequantize: list[str] = field(default_factory=list)
    weight_types: dict[str, int] = field(default_factory=dict)
    """initializer name -> ONNX element type of every integer weight read by a DequantizeLinear."""

    @property
    def problems(self) -> list[str]:
        return self.unquantized_inputs + self.float_weights + self.dangling_quantize + self.dangling_dequantize

    @property
    def ok(self) -> bool:
        """True when every compute input has its Q/DQ pair and no Q or DQ dangles."""
        return not self.problems

    def summary(self) -> str:
        lines = [f"{len(self.quantized_compute_nodes)} compute node(s) fully quantized"]
        for title, items in (
            ("inputs without a Q/DQ pair", self.unquantized_inputs),
            ("float weights", self.float_weights),
            ("dangling QuantizeLinear", self.dangling_quantize),
            ("dangling DequantizeLinear", self.dangling_dequantize),
        ):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines)


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def check_qdq(model: onnx.ModelProto, compute_ops: Iterable[str] | None = None) -> QDQReport:
    """Check Q/DQ placement: a pair in front of each compute input, no dangling Q or DQ.

    - every data input of ``compute_ops`` (default: Conv, ConvTranspose, Gemm,
      MatMul; not the bias) must be a DequantizeLinear output, reading either a
      QuantizeLinear (activation) or an integer initializer (weight);
    - a QuantizeLinear is dangling when something other than a DequantizeLinear
      reads it, or nothing does, or it is a graph output;
    - a DequantizeLinear is dangling when it reads neither a QuantizeLinear nor
      an integer constant.
    """
    ops = {op: COMPUTE_OPS.get(op, (0, 1)) for op in (compute_ops if compute_ops is not None else COMPUTE_OPS)}
    index = GraphIndex(model.graph)
    report = QDQReport()
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            out = node.output[0]
            readers = index.consumers.get(out, [])
            if out in index.graph_outputs:
                report.dangling_quantize.append(f"{_label(node)}: its int output is a graph output")
            elif not readers:
                report.dangling_quantize.append(f"{_label(node)}: nothing reads its output")
            else:
                others = sorted({_label(r) for r in readers if r.op_type != "DequantizeLinear"})
                if others:
                    report.dangling_quantize.append(
                        f"{_label(node)}: read by {', '.join(others)} instead of a DequantizeLinear"
                    )
        elif node.op_type == "DequantizeLinear":
            src = node.input[0]
            producer = index.producer.get(src)
            if producer is not None and producer.op_type == "QuantizeLinear":
                continue
            elem = index.constant_elem_type(src)
            if elem in _INT_TYPES:
                report.weight_types[src] = elem
                continue
            what = f"{_label(producer)}" if producer is not None else (
                "a graph input" if src in index.graph_inputs else f"'{src}'"
            )
            report.dangling_dequantize.append(f"{_label(node)}: reads {what}, not a QuantizeLinear or an integer constant")
    for node in model.graph.node:
        if node.op_type not in ops:
            continue
        fine = True
        for i in ops[node.op_type]:
            if i >= len(node.input) or not node.input[i]:
                continue
            name = node.input[i]
            producer = index.producer.get(name)
            if producer is None or producer.op_type != "DequantizeLinear":
                fine = False
                if index.is_constant(name):
                    report.float_weights.append(f"{_label(node)} input {i} ('{name}') is a float constant, not an int8 weight behind a DequantizeLinear")
                else:
                    src = _label(producer) if producer is not None else "a graph input"
                    report.unquantized_inputs.append(f"{_label(node)} input {i} ('{name}') comes from {src}, not a Q/DQ pair")
                continue
            if index.constant_elem_type(producer.input[0]) == TensorProto.FLOAT:
                fine = False
                report.float_weights.append(f"{_label(node)} input {i}: {_label(producer)} dequantizes a float constant")
        if fine:
            report.quantized_compute_nodes.append(_label(node))
    return report
