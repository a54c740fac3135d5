"""Lowering: reference IR -> fake-quant GraphModule -> ``openvino.Model`` -> compiled ``OpenVINOModule``.

The reference model is rewritten into plain torch ops with FakeQuantize-able
quantization points (``quantfx_openvino.fake_quant``), captured with
OpenVINO's PyTorch frontend (``openvino.convert_model``), and compiled for the
requested device. OpenVINO's low-precision transformations then turn every
FakeQuantize + int8 weight into int8 kernels, exactly as they do for models
NNCF quantized.

Lowering rules (``quantfx_register_lowering_rules`` for ``"openvino"``) are
callables ``rule(gm: GraphModule) -> GraphModule | None`` applied, in order,
to the fake-quant GraphModule before capture (None: edited in place): the
place to rewrite an op OpenVINO's frontend does not know into one it does.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from quantfx.errors import LoweringError, ValidationError
from torch import fx
from torch.utils import _pytree as pytree

from quantfx_openvino.fake_quant import check_convertible, to_fake_quant
from quantfx_openvino.runtime import OpenVINOModule

__all__ = ["CAPTURE_MODES", "lower_to_openvino", "to_openvino_model"]

CAPTURE_MODES = ("torchscript", "export")


def _input_specs(example_inputs: tuple[Any, ...], dynamic_batch: bool) -> list[Any]:
    import openvino as ov

    specs = []
    for i, x in enumerate(example_inputs):
        if not isinstance(x, torch.Tensor):
            raise ValidationError(
                f"openvino lowering needs tensor example inputs; input #{i} is {type(x).__name__}. "
                "Bake non-tensor arguments into the model (functools.partial or a wrapper module) before quantizing"
            )
        dims = list(x.shape)
        if dynamic_batch and dims:
            dims[0] = -1
        et = ov.Type.f32 if x.is_floating_point() else ov.Type(x.numpy().dtype) if x.numel() else ov.Type.dynamic
        specs.append((ov.PartialShape(dims), et))
    return specs


def _has_dynamic_rank(ov_model: Any) -> bool:
    return any(
        op.get_output_partial_shape(i).rank.is_dynamic
        for op in ov_model.get_ordered_ops()
        for i in range(op.get_output_size())
    )


def _output_spec(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> pytree.TreeSpec:
    with torch.no_grad():
        out = gm(*example_inputs)
    leaves, spec = pytree.tree_flatten(out)
    bad = [type(v).__name__ for v in leaves if not isinstance(v, torch.Tensor)]
    if bad:
        raise LoweringError(
            f"openvino: the model returns non-tensor values ({', '.join(sorted(set(bad)))}); an OpenVINO "
            "model returns tensors only. Return tensors (or tuples / dicts of tensors) from forward()"
        )
    return spec


def _fq_constants(fq: Any) -> list[Any] | None:
    import numpy as np

    values = []
    for i in range(1, 5):
        node = fq.input_value(i).get_node()
        if node.get_type_name() != "Constant":
            return None
        values.append(np.asarray(node.get_data()))
    return values


def _drop_requantize_after_pad(ov_model: Any) -> int:
    """``FakeQuantize -> Pad -> FakeQuantize`` (the same range) -> ``FakeQuantize -> Pad``; returns the count.

    A pad shares its input's quantization parameters, so the reference IR
    requantizes its output on the very grid its input is on: an exact no-op
    (the pad constant 0 is on the grid), but the second FakeQuantize sits
    between the Pad and the convolution, which stops OpenVINO fusing the
    Pad into the convolution's padding. Measured on EfficientNet-Lite0
    (``Conv2dStaticSamePadding``): 5 extra ``Pad`` nodes and 5 ``Reorder``
    nodes at run time, and an i8 -> u8 requantize after the stem's pad, none
    of which NNCF's model has; without the second FakeQuantize the runtime
    graph matches NNCF's node for node and the outputs are bit-identical.
    """
    import numpy as np

    dropped = 0
    for pad in ov_model.get_ordered_ops():
        if pad.get_type_name() != "Pad" or pad.get_output_size() != 1:
            continue
        src = pad.input_value(0).get_node()
        users = list(pad.output(0).get_target_inputs())
        if src.get_type_name() != "FakeQuantize" or len(users) != 1:
            continue
        fq = users[0].get_node()
        if fq.get_type_name() != "FakeQuantize" or fq.get_levels() != src.get_levels():
            continue
        if fq.get_output_element_type(0) != pad.get_output_element_type(0):
            continue
        a, b = _fq_constants(src), _fq_constants(fq)
        if a is None or b is None or not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b)):
            continue
        if pad.get_input_size() > 3:  # an explicit pad value: only 0 is surely on the grid
            value = pad.input_value(3).get_node()
            if value.get_type_name() != "Constant" or np.any(np.asarray(value.get_data()) != 0):
                continue
        if str(pad.get_pad_mode()).lower().split(".")[-1] != "constant":
            continue
        if any(t.get_node().get_type_name() == "Result" for t in fq.output(0).get_target_inputs()):
            continue  # keep the model's output tensors (and their names) as they are
        for target in list(fq.output(0).get_target_inputs()):
            target.replace_source_output(pad.output(0))
        dropped += 1
    if dropped:
        ov_model.validate_nodes_and_infer_types()
    return dropped


def to_openvino_model(
    reference_model: fx.GraphModule,
    example_inputs: tuple[Any, ...],
    *,
    lowering_rules: Sequence[Any] = (),
    capture: str = "torchscript",
    dynamic_batch: bool = True,
) -> tuple[Any, pytree.TreeSpec]:
    """The ``openvino.Model`` (FakeQuantize form) of a reference model, and its output structure.

    ``capture="torchscript"`` traces with ``torch.jit.trace`` (keeps shape
    arithmetic symbolic, so ``dynamic_batch`` works for any model);
    ``"export"`` captures with ``torch.export`` (static shapes).
    """
    import openvino as ov

    if capture not in CAPTURE_MODES:
        raise ValidationError(f"openvino: capture must be one of {CAPTURE_MODES}, got {capture!r}")
    if not isinstance(example_inputs, tuple) or not example_inputs:
        raise ValidationError(
            "openvino lowering needs example_inputs: a non-empty tuple of the model's positional tensors "
            "(prepare_fx stores them; pass example_inputs= to quantfx.api.lower)"
        )
    input_specs = _input_specs(example_inputs, dynamic_batch)  # refuses non-tensor inputs up front
    gm = to_fake_quant(reference_model)
    for rule in lowering_rules:
        if not callable(rule):
            raise LoweringError(
                f"openvino: lowering rule {rule!r} is not callable; rules for 'openvino' are functions "
                "GraphModule -> GraphModule | None applied to the fake-quant model"
            )
        result = rule(gm)
        if result is not None:
            gm = result
    gm.recompile()
    check_convertible(gm)
    spec = _output_spec(gm, example_inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # torch 2.13 deprecates torch.jit.trace; OpenVINO's frontend still uses it for nn.Modules, and
        # it is the capture that keeps shape arithmetic symbolic (dynamic batch). capture="export" avoids it.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=DeprecationWarning)
        try:
            if capture == "export":
                ov_model = ov.convert_model(gm, example_input=example_inputs, dynamo=True)
            else:
                ov_model = ov.convert_model(gm, example_input=example_inputs, input=input_specs)
                if dynamic_batch and _has_dynamic_rank(ov_model):
                    # e.g. x.squeeze() with no dim: its rank depends on the batch size, and OpenVINO's
                    # CPU plugin refuses dynamic ranks, so this model keeps the example's batch size
                    ov_model = ov.convert_model(
                        gm, example_input=example_inputs, input=_input_specs(example_inputs, False)
                    )
        except Exception as exc:
            raise LoweringError(
                f"openvino: openvino.convert_model could not convert the fake-quant model ({capture} capture): "
                f"{type(exc).__name__}: {exc}. Try capture={'export' if capture == 'torchscript' else 'torchscript'!r}, "
                "or keep the failing op in float with QConfigMapping.set_object_type(op, None)"
            ) from exc
    _drop_requantize_after_pad(ov_model)
    if len(ov_model.outputs) != spec.num_leaves:
        raise LoweringError(
            f"openvino: the converted model has {len(ov_model.outputs)} outputs, the reference model "
            f"{spec.num_leaves}; an output is probably an input passed through or a duplicate"
        )
    return ov_model, spec


def lower_to_openvino(
    reference_model: fx.GraphModule,
    example_inputs: tuple[Any, ...],
    *,
    lowering_rules: Sequence[Any] = (),
    device: str = "CPU",
    config: Mapping[str, Any] | None = None,
    capture: str = "torchscript",
    dynamic_batch: bool = True,
) -> OpenVINOModule:
    """Reference model -> ``OpenVINOModule`` compiled for ``device`` with OpenVINO ``config``."""
    ov_model, spec = to_openvino_model(
        reference_model, example_inputs, lowering_rules=lowering_rules, capture=capture, dynamic_batch=dynamic_batch
    )
    return OpenVINOModule(ov_model, spec, device=device, config=config)
