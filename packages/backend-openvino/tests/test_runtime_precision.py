"""Proof that int8 really runs: read OpenVINO's execution graph, not our own graph.

``compiled.get_runtime_model()`` is the graph the CPU plugin executes after
its low-precision transformations; each layer's ``runtimePrecision`` is the
precision its kernel computes in. A quantized conv / linear must run in u8 / i8;
the same model lowered without quantization must not (so the check can fail).
"""

from __future__ import annotations

from typing import Any

import openvino as ov
import torch
from quantfx_openvino.runtime import compile_for_device, runtime_layers

_WEIGHTED = ("Convolution", "FullyConnected", "MatMul")


def _weighted_layers(compiled: Any) -> list[dict[str, str]]:
    return [r for r in runtime_layers(compiled) if r["type"] in _WEIGHTED]


def test_quantized_convs_and_linear_run_in_int8(conv_lowered: Any) -> None:
    layers = _weighted_layers(conv_lowered.compiled_model)
    convs = [r for r in layers if r["type"] == "Convolution"]
    fcs = [r for r in layers if r["type"] == "FullyConnected"]
    assert len(convs) == 2 and len(fcs) == 1, layers  # conv1, conv2 (BN folded), fc
    not_int8 = [r for r in layers if r["runtime_precision"] not in ("u8", "i8")]
    assert not not_int8, f"layers still computing in float: {not_int8}"
    assert conv_lowered.int8_layers() == layers


def test_int8_weights_are_stored_as_int8_constants(conv_lowered: Any) -> None:
    consts = [op for op in conv_lowered.ov_model.get_ordered_ops() if op.get_type_name() == "Constant"]
    int8 = [c for c in consts if c.get_output_element_type(0) == ov.Type.i8]
    assert len(int8) == 3, "each of conv1, conv2, fc should keep its weight as an i8 constant"
    fqs = [op for op in conv_lowered.ov_model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert fqs, "activations are quantized with FakeQuantize nodes"
    assert all(int(fq.get_attributes()["levels"]) == 256 for fq in fqs)


def test_transformer_matmuls_run_in_int8(transformer_reference: Any) -> None:
    from quantfx import api

    _, ref, example_inputs = transformer_reference
    lowered = api.lower(ref, "openvino", example_inputs)
    layers = runtime_layers(lowered.compiled_model)
    fcs = [r for r in layers if r["type"] == "FullyConnected"]
    # q, k, v, out, ff1, ff2 projections
    assert len(fcs) == 6 and all(r["runtime_precision"] in ("u8", "i8") for r in fcs), fcs
    # the attention (matmul, softmax, matmul) runs either as two MatMul layers or as one fused
    # MHA "Subgraph" (OpenVINO's snippets); either way in int8
    matmuls = [r for r in layers if r["type"] == "MatMul"]
    mha = [r for r in layers if r["type"] == "Subgraph"]
    assert (len(matmuls) == 2 and all(r["runtime_precision"] in ("u8", "i8") for r in matmuls)) or (
        len(mha) == 1 and mha[0]["runtime_precision"] in ("u8", "i8")
    ), [r for r in layers if r["type"] in ("MatMul", "Subgraph")]


def test_float_model_runs_in_float(conv_reference: Any) -> None:
    """Negative control: the float model through the same runtime has no int8 conv."""
    model, _, example_inputs = conv_reference
    compiled = compile_for_device(ov.convert_model(model.eval(), example_input=example_inputs), "CPU")
    layers = _weighted_layers(compiled)
    assert layers and all(r["runtime_precision"] == "f32" for r in layers), layers
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(compiled(example_inputs[0].numpy())[0]), model(*example_inputs), atol=1e-4)
