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

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from quantfx.errors import LoweringError, ValidationError
from torch import Tensor, fx
from torch.utils import _pytree as pytree

from quantfx_openvino.fake_quant import check_convertible, to_fake_quant
from quantfx_openvino.graph_rewrites import hoist_fake_quantize_over_movement
from quantfx_openvino.runtime import OpenVINOModule, _to_numpy, compile_for_device

__all__ = ["CAPTURE_MODES", "LayerDivergence", "layerwise_divergence", "lower_to_openvino", "to_openvino_model"]

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


def _rewrite(reference_model: fx.GraphModule, lowering_rules: Sequence[Any]) -> fx.GraphModule:
    """The fake-quant GraphModule of ``reference_model`` with the lowering rules applied."""
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
    return gm


def _capture(gm: fx.GraphModule, example_inputs: tuple[Any, ...], capture: str, dynamic_batch: bool) -> Any:
    """``openvino.convert_model`` of the fake-quant GraphModule (FakeQuantize form)."""
    import openvino as ov

    input_specs = _input_specs(example_inputs, dynamic_batch)
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
    hoist_fake_quantize_over_movement(ov_model)
    return ov_model


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
    if capture not in CAPTURE_MODES:
        raise ValidationError(f"openvino: capture must be one of {CAPTURE_MODES}, got {capture!r}")
    if not isinstance(example_inputs, tuple) or not example_inputs:
        raise ValidationError(
            "openvino lowering needs example_inputs: a non-empty tuple of the model's positional tensors "
            "(prepare_fx stores them; pass example_inputs= to quantfx.api.lower)"
        )
    _input_specs(example_inputs, dynamic_batch)  # refuses non-tensor inputs up front
    gm = _rewrite(reference_model, lowering_rules)
    spec = _output_spec(gm, example_inputs)
    ov_model = _capture(gm, example_inputs, capture, dynamic_batch)
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


# ----------------------------------------------------------------------------- diagnostics

_FQ_OPS = (torch.fake_quantize_per_tensor_affine, torch.fake_quantize_per_channel_affine)


@dataclass(frozen=True)
class LayerDivergence:
    """OpenVINO vs the reference at one quantization point (a FakeQuantize), in quantization steps.

    ``local_*`` compare OpenVINO's output with the reference op run on
    *OpenVINO's own* inputs at that point, so they measure this layer alone:
    a lowering or fusion bug (a skipped rounding, a range off by half a step)
    shows as a large ``local_mismatch``; float rounding-order noise as a few
    elements in 10^5 one step apart. ``accumulated_sqnr_db`` compares with the
    reference run end to end, i.e. includes everything upstream.
    """

    node: str  #: the FakeQuantize node of the fake-quant model
    source: str  #: the node whose output it quantizes (the op's output, or the model input)
    step: float  #: quantization step (per channel: the smallest)
    local_mismatch: float  #: fraction of elements more than half a step from the reference op on OpenVINO's inputs
    local_max_steps: float  #: the largest such difference, in steps
    accumulated_sqnr_db: float  #: SQNR(reference end to end, OpenVINO) at this point


def _is_constant_pad(gm: fx.GraphModule, node: Any) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        return isinstance(mod, (torch.nn.ConstantPad1d, torch.nn.ConstantPad2d, torch.nn.ConstantPad3d))
    if node.op == "call_function" and node.target is torch.constant_pad_nd:
        return True
    if node.op == "call_function" and node.target is torch.nn.functional.pad:
        return node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant") == "constant"
    return False


def _probes(gm: fx.GraphModule) -> list[fx.Node]:
    """The FakeQuantize nodes to expose, minus those the lowering drops (a requantize right after a pad)."""
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _FQ_OPS:
            continue
        src = node.args[0]
        if _is_constant_pad(gm, src) and isinstance(src.args[0], fx.Node) and src.args[0].target is node.target \
                and src.args[0].args[1:] == node.args[1:]:
            continue  # dropped by _drop_requantize_after_pad; a Result on it would keep the Pad unfused
        out.append(node)
    return out


def _step(gm: fx.GraphModule, fq: fx.Node, ndim: int) -> Tensor:
    if fq.target is torch.fake_quantize_per_tensor_affine:
        return torch.tensor(float(fq.args[1]))
    scale: Any = gm
    for part in str(fq.args[1].target).split("."):
        scale = getattr(scale, part)
    shape = [1] * ndim
    shape[int(fq.args[3]) % ndim] = -1
    return scale.detach().float().reshape(shape)


def _sqnr_db(ref: Tensor, got: Tensor) -> float:
    noise = float(((ref.double() - got.double()) ** 2).sum())
    signal = float((ref.double() ** 2).sum())
    return math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)


class _Substitute(fx.Interpreter):
    """Runs the fake-quant model with some nodes' outputs replaced, remembering what ``keep`` nodes computed."""

    def __init__(self, gm: fx.GraphModule, replace: Mapping[fx.Node, Tensor], keep: Sequence[fx.Node]) -> None:
        super().__init__(gm)
        self.replace = replace
        self.keep = set(keep)
        self.own: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if n in self.keep:
            self.own[n] = value
        return self.replace.get(n, value)


def layerwise_divergence(
    reference_model: fx.GraphModule,
    example_inputs: tuple[Any, ...],
    inputs: tuple[Any, ...] | None = None,
    *,
    lowering_rules: Sequence[Any] = (),
    device: str = "CPU",
    config: Mapping[str, Any] | None = None,
    capture: str = "torchscript",
) -> list[LayerDivergence]:
    """Where does OpenVINO's int8 execution leave the reference? One row per FakeQuantize, in graph order.

    Lowers ``reference_model`` as ``lower_to_openvino`` does and, for each
    FakeQuantize, compiles the model up to it (one compile per row: this is
    a debugging tool: about 15 s for EfficientNet-Lite0); runs ``inputs``
    (default: ``example_inputs``) through those and through the fake-quant
    model in torch (which computes what the reference model computes).
    Use it when OpenVINO and the reference disagree: the first row with a
    large ``local_mismatch`` is the layer to look at. A fused op shows up at
    the next quantization point (``conv -> FQ -> add`` run as one fused
    kernel that skips the conv's rounding: a mismatch in the add's row).
    """
    import numpy as np
    import openvino as ov

    inputs = example_inputs if inputs is None else inputs
    if capture not in CAPTURE_MODES:
        raise ValidationError(f"openvino: capture must be one of {CAPTURE_MODES}, got {capture!r}")
    gm = _rewrite(reference_model, lowering_rules)
    probes = _probes(gm)
    debug = copy.deepcopy(gm)
    by_name = {n.name: n for n in debug.graph.nodes}
    output = next(n for n in debug.graph.nodes if n.op == "output")
    leaves, _ = pytree.tree_flatten(output.args[0])
    extras = [by_name[p.name] for p in probes if by_name[p.name] not in leaves]
    output.args = (tuple(leaves) + tuple(extras),)
    debug.recompile()
    ov_debug = _capture(debug, example_inputs, capture, dynamic_batch=True)
    results = ov_debug.get_results()
    if len(results) != len(leaves) + len(extras):
        raise LoweringError(
            f"openvino: layerwise_divergence expected {len(leaves) + len(extras)} outputs from the instrumented "
            f"model, OpenVINO made {len(results)}; an output is probably an input passed through"
        )
    feed = [_to_numpy(x, f"#{i}") for i, x in enumerate(inputs)]
    ov_values: dict[fx.Node, Tensor] = {}
    for p in probes:
        node = by_name[p.name]
        i = leaves.index(node) if node in leaves else len(leaves) + extras.index(node)
        # a model ending at this FakeQuantize: the production graph up to here, with no extra consumer
        # anywhere (an extra Result on a tensor stops OpenVINO fusing its consumer, e.g. conv + add)
        upstream = ov.Model([results[i].input_value(0)], ov_debug.get_parameters(), f"upto_{p.name}")
        compiled = compile_for_device(upstream, device, config)
        ov_values[p] = torch.from_numpy(np.array(compiled(feed)[compiled.outputs[0]]))
        del compiled
    with torch.no_grad():
        end_to_end = _Substitute(gm, {}, probes)
        end_to_end.run(*inputs)
        local = _Substitute(gm, ov_values, probes)
        local.run(*inputs)
    rows = []
    for p in probes:
        ov_value, own = ov_values[p], local.own[p]
        if ov_value.shape != own.shape:
            raise LoweringError(
                f"openvino: layerwise_divergence matched {p.name!r} {tuple(own.shape)} to an OpenVINO output of "
                f"shape {tuple(ov_value.shape)}; the instrumented model's outputs are out of order"
            )
        step = _step(gm, p, own.dim())
        diff = (ov_value - own).abs() / step
        src = p.args[0]
        rows.append(LayerDivergence(
            node=p.name,
            source=src.name if isinstance(src, fx.Node) else str(src),
            step=float(step.min()),
            local_mismatch=float((diff > 0.5).float().mean()) if diff.numel() else 0.0,
            local_max_steps=float(diff.max().round()) if diff.numel() else 0.0,
            accumulated_sqnr_db=_sqnr_db(end_to_end.own[p], ov_value),
        ))
    return rows
