"""Where an exported ONNX model and its reference model part ways, quantize point by quantize point.

Why: end-to-end SQNR between two int8 implementations of one model mixes two
things, an export error (a wrong scale, zero point or weight layout) and the
model's sensitivity to last-bit float differences (a value on a rounding
boundary quantized up in one runtime and down in the other, then amplified by
the layers after it). :func:`compare_quantize_points` separates them: it
pairs every activation ``QuantizeLinear`` of the ONNX model with the
reference model's quantize node, and with ``teacher_forced=True`` (the
default) feeds every ``DequantizeLinear`` of an activation the *reference's*
integer tensor, so each segment between two quantize points is checked on
its own. An exact export then differs from the reference by at most one
quantization step on a few elements per point; a wrong one shows at the
point it is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from quantfx.errors import LoweringError
from quantfx.onnx.graph import GraphIndex

__all__ = ["QuantPointDiff", "LayerwiseReport", "compare_quantize_points"]

_FORCED_SUFFIX = "__reference"


@dataclass(frozen=True)
class QuantPointDiff:
    """One activation quantize point: the ONNX runtime's integers against the reference's."""

    reference_node: str
    onnx_tensor: str
    scale: float
    mismatch: float
    """fraction of elements whose integer differs"""
    max_steps: int
    """largest difference, in quantization steps"""
    sqnr_db: float
    """SQNR of the dequantized values, the reference's as signal (inf when identical)"""


@dataclass
class LayerwiseReport:
    """Per-quantize-point differences, in graph order."""

    rows: list[QuantPointDiff] = field(default_factory=list)
    teacher_forced: bool = True

    def first_divergence(self, max_steps: int = 1, max_mismatch: float | None = None) -> QuantPointDiff | None:
        """The first point differing by more than ``max_steps`` steps (or on more than ``max_mismatch`` of it).

        One-step differences are what two correct runtimes produce: values on a
        rounding boundary after float ops computed in another order (measured,
        teacher-forced: 0.003% of a point's elements with ONNX Runtime's float Conv,
        up to 0.4% with its integer QLinearConv, 8% after its Softmax's own ``exp``).
        A wrong scale, zero point, bias or weight layout moves values by more.
        """
        for row in self.rows:
            if row.max_steps > max_steps or (max_mismatch is not None and row.mismatch > max_mismatch):
                return row
        return None

    def min_sqnr(self) -> float:
        """The lowest per-point SQNR (inf when every point is identical)."""
        return min((r.sqnr_db for r in self.rows), default=math.inf)

    def summary(self, limit: int | None = None) -> str:
        mode = "teacher-forced (each segment fed the reference's integers)" if self.teacher_forced else "propagated"
        lines = [f"{len(self.rows)} quantize points, {mode}:",
                 f"  {'reference node':40s} {'scale':>9s} {'mismatch':>9s} {'max':>4s} {'SQNR dB':>8s}"]
        for row in self.rows[:limit]:
            lines.append(
                f"  {row.reference_node:40s} {row.scale:9.4g} {row.mismatch:9.2e} {row.max_steps:4d} {row.sqnr_db:8.1f}"
            )
        return "\n".join(lines)


def _reference_quantize_outputs(model: torch.nn.Module, args: tuple[Any, ...]) -> list[tuple[str, torch.Tensor, float]]:
    """Run the reference model, keeping every static per-tensor quantize node's integer output."""
    from quantfx.ops import is_quantize_node

    graph_module = model if isinstance(model, torch.fx.GraphModule) else None
    if graph_module is None:
        raise LoweringError(
            f"compare_quantize_points needs the reference model (a torch.fx.GraphModule from "
            f"convert_to_reference_fx), got {type(model).__name__}"
        )
    captured: list[tuple[str, torch.Tensor, float]] = []
    target = torch.ops.quantfx.quantize_per_tensor.default

    class _Capture(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            if is_quantize_node(n):
                if n.target is not target:
                    raise LoweringError(
                        f"compare_quantize_points: node '{n.name}' ({n.target}) is not a static per-tensor "
                        "quantize; only static activation quantization can be compared point by point"
                    )
                captured.append((n.name, out, float(n.args[1])))
            return out

    with torch.no_grad():
        _Capture(graph_module).run(*args)
    return captured


def _activation_quantizes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    index = GraphIndex(model.graph)
    return [n for n in model.graph.node if n.op_type == "QuantizeLinear" and not index.is_constant(n.input[0])]


def _elem_type(index: GraphIndex, node: onnx.NodeProto) -> int:
    if len(node.input) > 2 and node.input[2]:
        elem = index.constant_elem_type(node.input[2])
        if elem is not None:
            return elem
    return TensorProto.UINT8


def _sqnr(ref: np.ndarray, other: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = float(np.sum((ref - other.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def compare_quantize_points(
    reference_model: torch.nn.Module,
    onnx_model: onnx.ModelProto,
    example_inputs: Any,
    *,
    teacher_forced: bool = True,
    providers: Sequence[str] | None = None,
    session_options: Any = None,
) -> LayerwiseReport:
    """Compare every activation quantize point of ``onnx_model`` (run in ONNX Runtime) with the reference's.

    Args:
        reference_model: the reference model the ONNX model was exported from.
        onnx_model: the result of :func:`quantfx.onnx.export_onnx` on it.
        example_inputs: positional inputs (a tensor or a tuple) to run both on.
        teacher_forced: feed each activation ``DequantizeLinear`` the reference's
            integers, so a point's difference comes from its own segment only;
            ``False`` lets differences propagate as in a normal run.
        providers / session_options: passed to ``onnxruntime.InferenceSession``.

    Raises:
        LoweringError: the two graphs' quantize points cannot be paired (count,
            shape or scale differ), naming the first that does not match.
    """
    import onnxruntime as ort

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    reference = _reference_quantize_outputs(reference_model, args)
    model = onnx.ModelProto()
    model.CopyFrom(onnx_model)
    quantizes = _activation_quantizes(model)
    if len(quantizes) != len(reference):
        raise LoweringError(
            f"compare_quantize_points: the ONNX model has {len(quantizes)} activation QuantizeLinear nodes, the "
            f"reference model {len(reference)} quantize nodes; compare a model with the reference it was exported from"
        )
    index = GraphIndex(model.graph)
    graph = model.graph
    feeds: dict[str, np.ndarray] = {}
    outputs = {o.name for o in graph.output}
    pairs: list[tuple[str, onnx.NodeProto, np.ndarray, float]] = []
    for (ref_name, ref_q, ref_scale), q in zip(reference, quantizes):
        scale_value = index.constant(q.input[1])
        onnx_scale = float(np.asarray(scale_value).reshape(-1)[0]) if scale_value is not None else math.nan
        if not math.isclose(onnx_scale, ref_scale, rel_tol=1e-6):
            raise LoweringError(
                f"compare_quantize_points: reference node '{ref_name}' (scale {ref_scale:.6g}) pairs with ONNX "
                f"{q.name or q.output[0]} (scale {onnx_scale:.6g}); the graphs do not line up"
            )
        ref_np = ref_q.numpy()
        out = q.output[0]
        if out not in outputs:
            graph.output.append(helper.make_tensor_value_info(out, _elem_type(index, q), None))
            outputs.add(out)
        if teacher_forced:
            forced = out + _FORCED_SUFFIX
            for consumer in index.consumers.get(out, []):
                for i, name in enumerate(consumer.input):
                    if name == out:
                        consumer.input[i] = forced
            graph.input.append(helper.make_tensor_value_info(forced, _elem_type(index, q), list(ref_np.shape)))
            feeds[forced] = ref_np
        pairs.append((ref_name, q, ref_np, ref_scale))
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=session_options, providers=list(providers or ["CPUExecutionProvider"])
    )
    input_names = [i.name for i in session.get_inputs() if not i.name.endswith(_FORCED_SUFFIX)]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    for name, tensor in zip(input_names, tensors):
        feeds[name] = tensor.detach().cpu().numpy()
    names = [q.output[0] for _, q, _, _ in pairs]
    results = dict(zip(names, session.run(names, feeds)))
    report = LayerwiseReport(teacher_forced=teacher_forced)
    for ref_name, q, ref_np, scale in pairs:
        got = results[q.output[0]]
        if got.shape != ref_np.shape:
            raise LoweringError(
                f"compare_quantize_points: reference node '{ref_name}' has shape {tuple(ref_np.shape)}, its ONNX "
                f"pair {q.output[0]} {tuple(got.shape)}; the graphs do not line up"
            )
        diff = np.abs(got.astype(np.int32) - ref_np.astype(np.int32))
        zp = 0
        if len(q.input) > 2 and q.input[2]:
            zp_value = index.constant(q.input[2])
            zp = int(np.asarray(zp_value).reshape(-1)[0]) if zp_value is not None else 0
        report.rows.append(
            QuantPointDiff(
                reference_node=ref_name,
                onnx_tensor=q.output[0],
                scale=scale,
                mismatch=float(np.count_nonzero(diff)) / max(diff.size, 1),
                max_steps=int(diff.max(initial=0)),
                sqnr_db=_sqnr(ref_np.astype(np.int32) - zp, got.astype(np.int32) - zp),
            )
        )
    return report
