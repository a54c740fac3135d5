"""Exact rewrites of the captured OpenVINO model that let OpenVINO fuse quantization where NNCF's models have it.

Each rewrite leaves every output value unchanged; it only moves nodes so that
OpenVINO's low-precision transformations see the patterns they fuse.
"""

from __future__ import annotations

from typing import Any

__all__ = ["hoist_fake_quantize_over_movement"]

#: ops that only move elements: a per-tensor FakeQuantize commutes with them exactly
_MOVEMENT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze"})


def _per_tensor(fq: Any) -> bool:
    """Whether all four range inputs of ``fq`` are single-value constants."""
    import numpy as np

    for i in range(1, 5):
        node = fq.input_value(i).get_node()
        if node.get_type_name() != "Constant" or np.asarray(node.get_data()).size != 1:
            return False
    return True


def _constant_like(node: Any) -> bool:
    """Whether ``node`` computes from constants only (a weight, possibly fake-quantized / converted)."""
    if node.get_type_name() == "Constant":
        return True
    if node.get_type_name() in ("FakeQuantize", "Convert", "Multiply", "Subtract", "Reshape", "Transpose"):
        return all(_constant_like(node.input_value(i).get_node()) for i in range(node.get_input_size()))
    return False


def _fully_connected_output(node: Any) -> bool:
    """Whether ``node`` is a MatMul with a constant operand, or the bias Add after one (OpenVINO's FullyConnected)."""
    if node.get_type_name() == "Add":
        inputs = [node.input_value(i).get_node() for i in range(2)]
        if not any(_constant_like(n) for n in inputs):
            return False
        node = next((n for n in inputs if not _constant_like(n)), None)
        if node is None:
            return False
    if node.get_type_name() != "MatMul":
        return False
    return any(_constant_like(node.input_value(i).get_node()) for i in range(2))


def _through_movement(node: Any) -> Any:
    """The first producer above ``node`` that is not a movement op."""
    while node.get_type_name() in _MOVEMENT:
        node = node.input_value(0).get_node()
    return node


def hoist_fake_quantize_over_movement(ov_model: Any) -> int:
    """``X -> Reshape / Transpose -> FakeQuantize`` -> ``X -> FakeQuantize -> Reshape / Transpose``; returns moves made.

    The reference IR quantizes a matmul's input where the matmul reads it,
    after the head-splitting reshape / transpose; OpenVINO then runs that
    FakeQuantize as a standalone node over the whole tensor. Moved up to the
    producer (the FullyConnected's bias add), it fuses into the
    FullyConnected as its int8 output, which is where NNCF places it. Only a
    per-tensor FakeQuantize moves (element order does not matter to it), only
    over a movement op whose sole reader it is, and only towards a
    FullyConnected (a MatMul with a constant operand, or its bias Add): after
    attention's second matmul the movement ops belong to the fused attention
    kernel, and a FakeQuantize already in place stays where it is.
    """
    import numpy as np
    from openvino import opset13

    moved = 0
    changed = True
    while changed:
        changed = False
        for fq in ov_model.get_ordered_ops():
            if fq.get_type_name() != "FakeQuantize" or not _per_tensor(fq):
                continue
            mover = fq.input_value(0).get_node()
            if mover.get_type_name() not in _MOVEMENT or mover.get_output_size() != 1:
                continue
            if len(mover.output(0).get_target_inputs()) != 1:
                continue
            source = mover.input_value(0)
            if not _fully_connected_output(_through_movement(source.get_node())):
                continue  # only a FullyConnected takes the FakeQuantize as its int8 output
            # scalar ranges: the originals carry the moved-over tensor's rank ([1, 1, 1, 1]), which would broadcast
            ranges = [opset13.constant(np.asarray(fq.input_value(i).get_node().get_data()).reshape(()))
                      for i in range(1, 5)]
            hoisted = opset13.fake_quantize(source, *ranges, fq.get_levels())
            hoisted.set_friendly_name(fq.get_friendly_name())
            mover.input(0).replace_source_output(hoisted.output(0))
            for target in list(fq.output(0).get_target_inputs()):
                target.replace_source_output(mover.output(0))
            moved += 1
            changed = True
            break  # the op list changed: start over
    if moved:
        ov_model.validate_nodes_and_infer_types()
    return moved
