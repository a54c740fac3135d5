"""Saving and loading lowered fbgemm / x86 models without pickle: one ``.safetensors`` file, tensors + a JSON graph.

The codec is core's :mod:`quantfx.graph_artifact` (see its docstring for the
layout and the allow-list); this module adds what is fbgemm-specific:

* the allow-list gains ``quantfx_fbgemm`` (its modules, kernels and
  dataclasses such as ``PostOp``);
* opaque packed weights (oneDNN ``_packed``, FBGEMM ``_packed_fbgemm``) are saved
  as ``None`` and rebuilt from the stored int8 weights + scales on first call, so
  outputs are bit-exact with the model that was saved;
* the backend name, float fallbacks and ``LoweringReport`` travel as extra
  metadata; loading warns again when the report says this CPU will saturate.

Files written with format ``quantfx-fbgemm/1`` (quantfx's own codec before it
moved to core) are refused with an error naming the expected format: re-save.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any

from quantfx.errors import ValidationError
from quantfx.graph_artifact import (
    ArtifactError,
    load_graph_module,
    read_metadata,
    save_graph_module,
)
from torch import nn
from torch.fx import GraphModule

__all__ = ["FORMAT", "ArtifactError", "load", "save"]

FORMAT = "quantfx-fbgemm/2"
_OLD_FORMATS = ("quantfx-fbgemm/1",)
_ALLOWED = ("quantfx_fbgemm",)
_TRANSIENT = ("_packed", "_packed_fbgemm")


def save(lowered: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write a lowered fbgemm / x86 model (a GraphModule) to ``path`` as one safetensors file."""
    if not isinstance(lowered, GraphModule):
        raise ValidationError(
            f"fbgemm/x86 save expects the GraphModule returned by lowering (convert_fx / quantfx.quantize), "
            f"got {type(lowered).__name__}"
        )
    report = getattr(lowered, "quantfx_lowering_report", None)
    extra = {
        "backend": getattr(lowered, "quantfx_backend", None),
        "float_ops": list(getattr(lowered, "quantfx_float_ops", [])),
        "report": dataclasses.asdict(report) if dataclasses.is_dataclass(report) else None,
    }
    save_graph_module(lowered, path, format=FORMAT, allowed_modules=_ALLOWED, transient_attrs=_TRANSIENT, extra=extra)


def load(path: str | os.PathLike[str]) -> GraphModule:
    """Rebuild the model ``save`` wrote; imports only allow-listed classes / functions (see module docstring)."""
    path = os.fspath(path)
    try:
        found = read_metadata(path).get("format")
    except Exception as exc:
        raise ArtifactError(
            f"{path} is not a quantfx fbgemm/x86 artifact ({exc}); expected a safetensors file of format {FORMAT!r}"
        ) from exc
    if found != FORMAT:
        hint = " written by an older quantfx: re-save the model with this version" if found in _OLD_FORMATS else ""
        raise ArtifactError(
            f"{path} is not a quantfx fbgemm/x86 artifact (format {found!r}, expected {FORMAT!r}){hint}; "
            "write it with quantfx.get_backend('x86').save(model, path)"
        )
    gm, extra = load_graph_module(path, format=FORMAT, allowed_modules=_ALLOWED, class_name="LoweredX86Module")
    gm.quantfx_backend = extra.get("backend")
    gm.quantfx_float_ops = list(extra.get("float_ops", []))
    if extra.get("report") is not None:
        from quantfx_fbgemm.lowering import LoweringReport

        rep = extra["report"]
        gm.quantfx_lowering_report = LoweringReport(
            int8=[tuple(x) for x in rep.get("int8", [])],
            float_ops=[tuple(x) for x in rep.get("float_ops", [])],
            saturation=list(rep.get("saturation", [])),
            wide_inputs=list(rep.get("wide_inputs", [])),
        )
        _warn_if_saturating(gm.quantfx_lowering_report, path)
    return gm


def _warn_if_saturating(report: Any, path: str) -> None:
    from quantfx_fbgemm import kernels
    from quantfx_fbgemm.lowering import SaturationWarning

    wide = getattr(report, "wide_inputs", [])
    if wide and kernels.needs_reduce_range():
        warnings.warn(
            f"{path} was quantized with full-range 8-bit activations feeding {', '.join(wide)}, but this CPU "
            f"({kernels.cpu_isa()}, no VNNI) saturates u8 x s8 products at int16: expect lost accuracy. "
            "Re-quantize with backend 'fbgemm' (7-bit activations, exact on every x86 CPU) for this fleet.",
            SaturationWarning,
            stacklevel=3,
        )
