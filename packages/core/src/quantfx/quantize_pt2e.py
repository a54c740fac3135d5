"""PT2E quantization: ``prepare_pt2e`` / ``prepare_qat_pt2e`` / ``convert_pt2e`` on ``torch.export`` graphs.

The seed API (``torch/ao/quantization/quantize_pt2e``, now in torchao), kept
with its names, signatures and semantics, on quantfx's observers and reference
IR::

    exported = torch.export.export(model.eval(), example_inputs).module()
    quantizer = quantfx.get_backend("reference").get_quantizer()   # or any backend's, or your own
    prepared = prepare_pt2e(exported, quantizer)
    for x in calibration_batches:
        prepared(x)
    quantized = convert_pt2e(prepared)       # aten ops between torch.ops.quantfx q / dq ops
    int8_model = quantfx.lower(quantized, "fbgemm", example_inputs)   # same lowering as convert_fx output

Differences from torchao: no function mutates the model it is given (each
works on a copy), a graph not captured by ``torch.export`` is rejected with
the capture call to use, ``quantizer`` may also be an installed backend's name,
and the result lowers through any quantfx backend.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch.fx import GraphModule

from quantfx.errors import CaptureError, QuantfxError, ValidationError
from quantfx.pt2e.capture import (
    CONVERTED_KEY,
    PREPARED_KEY,
    is_pt2e_converted,
    is_pt2e_prepared,
    move_exported_model_to_eval,
    move_exported_model_to_train,
    node_name_to_scope,
    require_exported,
)
from quantfx.pt2e.graph_utils import deepcopy_module
from quantfx.quantizer.quantizer import Quantizer

__all__ = [
    "prepare_pt2e",
    "prepare_qat_pt2e",
    "convert_pt2e",
    "move_exported_model_to_eval",
    "move_exported_model_to_train",
]


def _resolve_quantizer(quantizer: Any, fn: str) -> tuple[Quantizer, str | None]:
    if isinstance(quantizer, str):
        from quantfx import api

        backend = api.get_backend(quantizer)  # UnknownBackendError lists the installed ones
        get_quantizer = backend.get_quantizer
        if fn == "prepare_qat_pt2e" and "is_qat" in inspect.signature(get_quantizer).parameters:
            quantizer_obj = get_quantizer(is_qat=True)  # the backend's QAT config: fake-quants, conv-bn patterns
        else:
            quantizer_obj = get_quantizer()
        if not isinstance(quantizer_obj, Quantizer):
            raise ValidationError(
                f"Backend '{quantizer}'.get_quantizer() returned {type(quantizer_obj).__name__}, not a "
                f"quantfx.quantizer.Quantizer"
            )
        return quantizer_obj, quantizer
    if not isinstance(quantizer, Quantizer):
        hint = ""
        if type(quantizer).__module__.startswith(("torchao", "torch.ao", "executorch")):
            hint = (
                " torchao / torch.ao / executorch quantizers write their own annotation classes; use a quantfx "
                "quantizer (quantfx.quantizer.SymmetricQuantizer, or quantfx.get_backend(name).get_quantizer())."
            )
        raise ValidationError(
            f"{fn} expects a quantfx.quantizer.Quantizer (or an installed backend's name), got "
            f"{type(quantizer).__module__}.{type(quantizer).__name__}.{hint}"
        )
    return quantizer, None


def _check_input(model: Any, fn: str) -> GraphModule:
    if is_pt2e_prepared(model) or is_pt2e_converted(model):
        raise CaptureError(
            f"{fn} got a model that was already prepared / converted by quantfx; pass the torch.export capture of the "
            f"float model (torch.export.export(model, example_inputs).module())"
        )
    return require_exported(model, fn)


def _prepare(model: GraphModule, quantizer: Any, is_qat: bool) -> GraphModule:
    from quantfx.pt2e.fuse_bn import fuse_conv_bn
    from quantfx.pt2e.prepare import prepare_graph
    from quantfx.pt2e.qat import fuse_conv_bn_qat

    fn = "prepare_qat_pt2e" if is_qat else "prepare_pt2e"
    model = _check_input(model, fn)
    quantizer, backend = _resolve_quantizer(quantizer, fn)
    original_meta = dict(model.meta)
    model = deepcopy_module(model)  # the user's capture is never modified
    scope = node_name_to_scope(model)
    if not is_qat:
        fuse_conv_bn(model)
    model = quantizer.transform_for_annotation(model)
    quantizer.annotate(model)
    quantizer.validate(model)
    if is_qat:
        # after annotation, so the annotator sees conv -> bn; the weight annotation moves to the scaled weight
        fuse_conv_bn_qat(model)
    model = prepare_graph(model, is_qat, quantizer.prepare_obs_or_fq_callback)
    model.meta.update(original_meta)
    model.meta[PREPARED_KEY] = {
        "is_qat": is_qat,
        "quantizer": type(quantizer).__name__,
        "backend": backend,
        "node_name_to_scope": scope,
    }
    return model


def prepare_pt2e(model: GraphModule, quantizer: Quantizer | str) -> GraphModule:
    """Insert observers for post-training quantization, as ``quantizer`` annotates the graph.

    Args:
        model: the GraphModule of a ``torch.export`` capture of the float model in eval mode
            (``torch.export.export(model.eval(), example_inputs).module()``). It is not modified.
        quantizer: a :class:`quantfx.quantizer.Quantizer`, or the name of an installed backend
            (its ``get_quantizer()``).

    Returns a copy with BatchNorm folded into the preceding convs and observers inserted;
    run calibration batches through it, then call :func:`convert_pt2e`.
    """
    return _prepare(model, quantizer, is_qat=False)


def prepare_qat_pt2e(model: GraphModule, quantizer: Quantizer | str) -> GraphModule:
    """Insert fake-quants for quantization-aware training (capture the model in train mode).

    Conv -> BatchNorm pairs are rewritten to train with the weight fake-quantized
    as it will be once BN is folded; :func:`convert_pt2e` folds them. Use a QAT
    config (e.g. ``get_symmetric_quantization_config(is_qat=True)``) so the specs
    build fake-quants. ``model.train()`` / ``.eval()`` do not work on exported
    graphs: use :func:`move_exported_model_to_eval` / ``_to_train``.
    """
    return _prepare(model, quantizer, is_qat=True)


def convert_pt2e(
    model: GraphModule,
    use_reference_representation: bool = False,
    fold_quantize: bool = True,
) -> GraphModule:
    """Turn a calibrated / trained model into quantfx's reference IR on aten ops.

    Args:
        model: the output of :func:`prepare_pt2e` / :func:`prepare_qat_pt2e` after calibration
            or training. It is not modified.
        use_reference_representation: also rewrite quantized linear / conv / add patterns into
            explicit integer arithmetic (see ``quantfx.pt2e.representation``).
        fold_quantize: quantize weights now and store them as integer constants
            (``get_attr(int8) -> dequantize``) instead of quantizing on every call.

    Every observer becomes ``torch.ops.quantfx.quantize_*`` plus one ``dequantize_*`` per
    consumer. ``quantfx.lower(result, backend, example_inputs)`` lowers it.
    """
    from quantfx.pt2e.convert import fold_quantize_ops, replace_observers
    from quantfx.pt2e.normalize import drop_unused_attributes
    from quantfx.pt2e.qat import fold_conv_bn_qat

    if not isinstance(use_reference_representation, bool):
        raise ValidationError(
            f"convert_pt2e: use_reference_representation must be a bool, got {use_reference_representation!r}; "
            f"did you mean to pass it as another argument?"
        )
    if not isinstance(fold_quantize, bool):
        raise ValidationError(f"convert_pt2e: fold_quantize must be a bool, got {fold_quantize!r}")
    if is_pt2e_converted(model):
        raise QuantfxError("convert_pt2e got a model that is already converted; convert the prepared model once")
    if not is_pt2e_prepared(model):
        raise CaptureError(
            f"convert_pt2e expects the model returned by prepare_pt2e / prepare_qat_pt2e (after calibration), got "
            f"{type(model).__name__} without PT2E observers. Run: prepared = prepare_pt2e(torch.export.export(model, "
            f"example_inputs).module(), quantizer); calibrate; then convert_pt2e(prepared)."
        )
    original_meta = dict(model.meta)
    gm = deepcopy_module(model)
    fold_conv_bn_qat(gm)
    replace_observers(gm)
    if fold_quantize:
        fold_quantize_ops(gm)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    drop_unused_attributes(gm)
    gm.graph.lint()
    gm.recompile()
    if use_reference_representation:
        from quantfx.pt2e.representation import reference_representation_rewrite

        gm = reference_representation_rewrite(gm)
    gm.meta.update(original_meta)
    gm.meta[CONVERTED_KEY] = True
    return gm
