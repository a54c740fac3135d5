"""``export_onnx``: a reference quantized model as ONNX with explicit QuantizeLinear / DequantizeLinear.

Why ``torch.onnx.export(dynamo=True)`` with a translation table, rather than
emitting ONNX node by node: the reference IR is float PyTorch ops between
quantize / dequantize nodes, and the float ops are open-ended (every
``torch`` function, method and module a user's model calls). PyTorch's own
exporter already maps all of them to ONNX and is maintained with PyTorch;
quantfx only has to say what its seven ``torch.ops.quantfx`` ops are
(:mod:`quantfx.onnx.translation`). The few places where PyTorch's output
hides the Q/DQ pattern runtimes fuse (a Transpose between a weight's
DequantizeLinear and its MatMul) are fixed by small ONNX passes
(:mod:`quantfx.onnx.passes`), and :func:`quantfx.onnx.check.check_qdq`
verifies the result.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import onnx
import torch

from quantfx.errors import LoweringError
from quantfx.onnx.passes import DEFAULT_PASSES, OnnxPass
from quantfx.onnx.translation import SUPPORTED_Q_DTYPES, translation_table

__all__ = ["export_onnx", "DEFAULT_OPSET", "OUT_SPEC_KEY", "QUANTFX_VERSION_KEY"]

DEFAULT_OPSET = 18
"""Per-axis Q/DQ needs opset 13; 18 is what PyTorch's exporter writes natively and what
TensorRT (8.6+), ONNX Runtime, OpenVINO and TVM all read."""

OUT_SPEC_KEY = "quantfx.out_spec"
"""metadata_props key: the pytree spec of the model's outputs (so a runtime can rebuild tuples / dicts)."""
QUANTFX_VERSION_KEY = "quantfx.version"

@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress prints and registry warnings (they are not about the user's model)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _check_reference_graph(model: torch.nn.Module, opset_version: int) -> None:
    """Fail early, naming the node, on quantize ops ONNX cannot express at this opset."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return
    from quantfx.ops import is_quantize_node

    for node in graph.nodes:
        if not is_quantize_node(node):
            continue
        name = str(node.target).split("::")[-1].split(".")[0]
        dtype = node.kwargs.get("dtype") or next((a for a in reversed(node.args) if isinstance(a, torch.dtype)), None)
        need = SUPPORTED_Q_DTYPES.get(dtype)
        if need is None:
            raise LoweringError(
                f"ONNX export: node '{node.name}' ({name}) quantizes to {dtype}; ONNX QuantizeLinear produces "
                f"uint8 / int8 (int16 from opset 21). Quantize this op to int8 or uint8 (its qconfig's activation "
                f"observer dtype), or keep it float with qconfig_mapping.set_module_name(..., None)."
            )
        if need > opset_version:
            raise LoweringError(
                f"ONNX export: node '{node.name}' ({name}) quantizes to {dtype}, which QuantizeLinear supports "
                f"from opset {need}; pass opset_version={need} (got {opset_version})."
            )


def _dynamic_batch_shapes(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple({0: torch.export.Dim.DYNAMIC} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)


def export_onnx(
    model: torch.nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    opset_version: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    passes: Sequence[OnnxPass] = (),
) -> onnx.ModelProto:
    """Export a reference quantized model (``convert_to_reference_fx``) to ONNX with Q/DQ nodes.

    Activation quantize / dequantize points become ``QuantizeLinear`` /
    ``DequantizeLinear`` pairs; weights of reference modules are stored as
    int8 initializers read by a (per-axis for per-channel weights)
    ``DequantizeLinear``. A float model exports too (no Q/DQ), which is how to
    get the float baseline of the same graph.

    Args:
        model: the reference model (or any traceable ``nn.Module``). Not modified.
        example_inputs: positional inputs of ``forward`` (a tensor or a tuple).
        path: where to write the ``.onnx`` file (optional).
        opset_version: ONNX opset of the result.
        dynamic_batch: keep dimension 0 of every tensor input symbolic
            (example inputs need a batch of 2 or more).
        input_names / output_names: names of the graph inputs / outputs
            (default: ``forward``'s argument names / the exporter's).
        passes: extra ``ModelProto -> ModelProto`` passes run after the default
            ones (a backend's placement rules).

    Returns:
        The checked ``onnx.ModelProto``; ``metadata_props`` carry the output
        structure so :class:`quantfx.onnx.OnnxRuntimeModule` returns tuples / dicts as the model does.

    Raises:
        LoweringError: a quantize op ONNX cannot express, or the exporter failed
            (the message keeps the exporter's reason).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"export_onnx expects a torch.nn.Module, got {type(model).__name__}")
    args = _as_tuple(example_inputs)
    _check_reference_graph(model, opset_version)
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                args,
                dynamo=True,
                optimize=True,
                opset_version=opset_version,
                custom_translation_table=translation_table(),
                dynamic_shapes=_dynamic_batch_shapes(args) if dynamic_batch else None,
                input_names=list(input_names) if input_names is not None else None,
                output_names=list(output_names) if output_names is not None else None,
                verbose=False,
            )
    except Exception as exc:
        hint = " (dynamic_batch=True: the model may fix the batch size; export with dynamic_batch=False)" if dynamic_batch else ""
        raise LoweringError(
            f"ONNX export of {type(model).__name__} failed{hint}: {type(exc).__name__}: {_first_lines(exc)}"
        ) from exc
    finally:
        model.train(was_training)
    proto = program.model_proto
    for p in (*DEFAULT_PASSES, *passes):
        result = p(proto)
        if result is not None:
            proto = result
    _stamp_metadata(proto, program)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise LoweringError(f"ONNX export of {type(model).__name__} produced an invalid model: {exc}") from exc
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


def _first_lines(exc: BaseException, n: int = 6) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    cause = exc.__cause__
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    text = "\n".join(lines[:n])
    if cause is not None:
        text += f"\n  root cause: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return text


def _stamp_metadata(proto: onnx.ModelProto, program: Any) -> None:
    from quantfx import __version__

    entries = {QUANTFX_VERSION_KEY: __version__}
    exported = getattr(program, "exported_program", None)
    out_spec = getattr(getattr(exported, "call_spec", None), "out_spec", None)
    if out_spec is not None:
        try:
            entries[OUT_SPEC_KEY] = torch.utils._pytree.treespec_dumps(out_spec)
        except Exception:  # noqa: BLE001 - an unserializable spec only loses output nesting
            pass
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in entries.items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)
