"""Reference IR -> ONNX that TensorRT's explicit quantization accepts.

The export itself is core's (:func:`quantfx.onnx.export_onnx`, reused by
every backend that reads ONNX); this module adds TensorRT's rules on top and
checks them, naming the ONNX node (whose name follows the reference model's
node) for anything TensorRT would reject or run in float:

- every QuantizeLinear / DequantizeLinear is int8 with zero point 0;
- activations are quantized per tensor; per-channel weights use the output
  channel axis (Conv / Gemm with transB: 0, ConvTranspose: 1, MatMul: last);
- no dangling Q or DQ (a Q read by anything but a DQ, a DQ of a float).

Plugins extend the lowering with rules registered through
``quantfx_register_lowering_rules("tensorrt", register)``: each rule is a
function ``onnx.ModelProto -> onnx.ModelProto | None`` run on the exported
model before the checks (and before the engine build).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto

from quantfx.errors import LoweringError
from quantfx.onnx import DEFAULT_OPSET, QDQReport, check_qdq
from quantfx.onnx import export_onnx as core_export_onnx
from quantfx.onnx.graph import GraphIndex, attr

__all__ = ["export_onnx", "check_tensorrt_qdq", "tensorrt_problems"]


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def _weight_axis_rule(consumer: onnx.NodeProto, weight_rank: int) -> int | None:
    """The per-channel axis TensorRT needs for a weight read by ``consumer`` (None: no rule)."""
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        return 0 if int(attr(consumer, "transB", 0)) else 1
    if consumer.op_type == "MatMul":
        return weight_rank - 1
    return None


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Everything in ``model`` TensorRT's explicit quantization would reject, one sentence each."""
    index = GraphIndex(model.graph)
    problems: list[str] = []
    fix = (
        "prepare with quantfx.get_default_qconfig_mapping('tensorrt') (symmetric int8), "
        "or give this op's qconfig a torch.int8 per_tensor_symmetric / per_channel_symmetric observer"
    )
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zp_name is None:
            # no zero point input: QuantizeLinear defaults to uint8
            if node.op_type == "QuantizeLinear":
                problems.append(f"{_label(node)} has no zero point, so it quantizes to uint8; TensorRT needs int8 ({fix})")
            continue
        elem = index.constant_elem_type(zp_name)
        zp = index.constant(zp_name)
        if elem is not None and elem != TensorProto.INT8:
            problems.append(
                f"{_label(node)} uses {TensorProto.DataType.Name(elem).lower()}; TensorRT's Q/DQ take int8 only ({fix})"
            )
        if zp is None:
            problems.append(f"{_label(node)}: zero point '{zp_name}' is not a constant; TensorRT needs a constant 0")
        elif np.any(zp != 0):
            problems.append(f"{_label(node)} has zero point {zp.reshape(-1)[:4].tolist()}; TensorRT needs 0 (symmetric, {fix})")
        scale = index.constant(node.input[1])
        if scale is None:
            problems.append(f"{_label(node)}: scale '{node.input[1]}' is not a constant; TensorRT needs build-time scales")
            continue
        if scale.ndim == 0:
            continue
        # per-axis: only weights (DQ of a constant), on the output-channel axis
        is_weight = node.op_type == "DequantizeLinear" and index.is_constant(node.input[0])
        if not is_weight:
            problems.append(
                f"{_label(node)} quantizes an activation per channel; TensorRT quantizes activations per tensor "
                "(use a per_tensor_symmetric activation observer)"
            )
            continue
        weight = index.constant(node.input[0])
        rank = weight.ndim if weight is not None else 0
        axis = int(attr(node, "axis", 1)) % max(rank, 1)
        for consumer in index.consumers.get(node.output[0], []):
            want = _weight_axis_rule(consumer, rank)
            if want is not None and axis != want:
                problems.append(
                    f"{_label(node)} quantizes the weight of {_label(consumer)} per channel on axis {axis}; "
                    f"TensorRT needs axis {want} (the output channels). Use per-tensor weights for this op "
                    f"(qconfig_mapping.set_object_type(<op>, get_tensorrt_qconfig(per_channel=False)))"
                )
    return problems


def check_tensorrt_qdq(model: onnx.ModelProto) -> QDQReport:
    """Core's Q/DQ check plus TensorRT's rules; raise ``LoweringError`` listing every violation.

    Compute ops left in float (``report.unquantized_inputs``) are not an error:
    TensorRT runs them in float. Dangling Q / DQ and TensorRT-incompatible
    Q / DQ are.
    """
    report = check_qdq(model)
    problems = report.dangling_quantize + report.dangling_dequantize + tensorrt_problems(model)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise LoweringError(f"the ONNX model does not follow TensorRT's explicit quantization rules:\n{listing}")
    return report


def export_onnx(
    reference_model: torch.nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    opset_version: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    lowering_rules: Sequence[Any] = (),
    check: bool = True,
) -> onnx.ModelProto:
    """Export a reference model to ONNX for TensorRT: core's Q/DQ export, plugin rules, TensorRT's checks.

    Runs on any machine (no GPU, no ``tensorrt`` needed); the result can be
    built with ``trtexec --onnx=...`` or :func:`quantfx_tensorrt.engine.build_engine`,
    and run on CPU with ``quantfx.onnx.OnnxRuntimeModule``.
    """
    for rule in lowering_rules:
        if not callable(rule):
            raise LoweringError(
                f"tensorrt backend: lowering rule {rule!r} is not callable; rules for 'tensorrt' are "
                "functions onnx.ModelProto -> onnx.ModelProto | None, run on the exported ONNX model"
            )
    model = core_export_onnx(
        reference_model, example_inputs, None,
        opset_version=opset_version, dynamic_batch=dynamic_batch, passes=tuple(lowering_rules),
    )
    if check:
        check_tensorrt_qdq(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
