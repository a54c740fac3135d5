"""graph_rewrites.hoist_fake_quantize_over_movement: the FakeQuantize moves to the producer, the values stay.

Oracle: the same OpenVINO model without the rewrite, compiled on CPU. Moved
onto the MatMul, the FakeQuantize runs fused into it, and OpenVINO's fused
rounding puts a few values one step away from the standalone FakeQuantize's
(measured: 5 of 96); nothing moves further than that.
"""

from __future__ import annotations

import warnings

import numpy as np
import openvino as ov
import quantfx
import torch
from openvino import opset13 as ops
from quantfx.testing.models import MODEL_SUITE, calibration_data
from quantfx_openvino.graph_rewrites import _fully_connected_output, hoist_fake_quantize_over_movement
from quantfx_openvino.qconfig import get_openvino_qconfig_mapping


def _fq(x, lo: float, hi: float):  # noqa: ANN001, ANN202 - openvino node
    c = [ops.constant(np.array(v, dtype=np.float32).reshape(1, 1, 1, 1)) for v in (lo, hi, lo, hi)]
    return ops.fake_quantize(x, *c, 256)


def _head_split_model(source_is_fq: bool = False) -> ov.Model:
    x = ops.parameter([2, 6, 8], np.float32, name="x")
    w = ops.constant(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))
    y = ops.matmul(x, w, False, True)
    if source_is_fq:
        y = _fq(y, -4.0, 4.0)
    heads = ops.reshape(y, ops.constant(np.array([2, 6, 2, 4], dtype=np.int64)), False)
    moved = ops.transpose(heads, ops.constant(np.array([0, 2, 1, 3], dtype=np.int64)))
    return ov.Model([_fq(moved, -4.0, 4.0)], [x])


def _run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(ov.Core().compile_model(model, "CPU")(x)[0])


def test_fake_quantize_moves_to_the_producer_with_identical_outputs() -> None:
    model = _head_split_model()
    x = np.random.default_rng(1).standard_normal((2, 6, 8)).astype(np.float32) * 2
    want = _run(model, x)

    assert hoist_fake_quantize_over_movement(model) == 2  # over the Transpose, then over the Reshape

    types = [op.get_type_name() for op in model.get_ordered_ops() if op.get_type_name() not in ("Constant",)]
    assert types == ["Parameter", "MatMul", "FakeQuantize", "Reshape", "Transpose", "Result"]
    assert model.get_results()[0].get_output_partial_shape(0) == ov.PartialShape([2, 2, 6, 4])
    got, step = _run(model, x), 8.0 / 255
    off = np.abs(got - want)
    assert off.max() <= step * 1.001 and (off > 1e-6).mean() <= 0.1


def test_already_quantized_source_is_left_alone() -> None:
    model = _head_split_model(source_is_fq=True)
    assert hoist_fake_quantize_over_movement(model) == 0


def test_transformer_preset_quantizes_at_the_linear_outputs() -> None:
    """No FakeQuantize after a linear's head split: it sits on the linear's output (Q / K of attention)."""
    model, example_inputs = MODEL_SUITE["transformer_block"]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lowered = quantfx.quantize(
            model, backend="openvino", calibration_data=list(calibration_data(example_inputs, n=4)),
            example_inputs=example_inputs, qconfig_mapping=get_openvino_qconfig_mapping("transformer"), progress=False,
        )
    fqs = [op for op in lowered.ov_model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    on_linears, behind_moves = 0, []
    for fq in fqs:
        node = fq.input_value(0).get_node()
        moved = node.get_type_name() in ("Reshape", "Transpose")
        while node.get_type_name() in ("Reshape", "Transpose"):
            node = node.input_value(0).get_node()
        if _fully_connected_output(node):
            on_linears += not moved
            if moved:
                behind_moves.append(fq.get_friendly_name())
    assert on_linears >= 2 and not behind_moves, (on_linears, behind_moves)
    with torch.no_grad():
        want = model(*example_inputs)
    assert quantfx.testing.sqnr(want, lowered(*example_inputs)) > 25
