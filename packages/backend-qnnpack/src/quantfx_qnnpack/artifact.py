"""Saving and loading lowered ``qnnpack`` models.

- ``PteModule`` (ExecuTorch route): the ``.pte`` program bytes, exactly what a
  phone app loads; the output structure travels inside it as a constant
  method, so the file alone is the artifact.
- ``QnnpackModule`` (in-process route): one ``.safetensors`` file through
  core's ``quantfx.graph_artifact`` (int8 weights, scales, zero points, float
  biases as tensors; the FX graph and module attributes as JSON). No pickle:
  loading imports only allow-listed classes and functions. Packed qnnpack
  weights are engine objects, saved as ``None`` and rebuilt on first call, so
  the reloaded model is bit-exact with the saved one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from quantfx.errors import ValidationError

__all__ = ["FORMAT", "is_pte", "load", "save"]

FORMAT = "quantfx-qnnpack/1"
_ALLOWED = ("quantfx_qnnpack",)

_PTE_IDENTIFIER = b"ET"  # flatbuffer file identifier "ET12"... at bytes 4..8


def is_pte(data: bytes) -> bool:
    """True for an ExecuTorch program (flatbuffer identifier ``ET..`` at offset 4)."""
    return len(data) >= 8 and data[4:6] == _PTE_IDENTIFIER


def save(lowered: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Write a ``PteModule`` as its ``.pte`` bytes, or a ``QnnpackModule`` as safetensors + JSON."""
    from quantfx_qnnpack.executorch_lowering import PteModule
    from quantfx_qnnpack.inprocess import QnnpackModule

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(lowered, PteModule):
        p.write_bytes(lowered.pte)
    elif isinstance(lowered, QnnpackModule):
        from quantfx.graph_artifact import save_graph_module

        save_graph_module(
            lowered.graph_module, p, format=FORMAT, allowed_modules=_ALLOWED, transient_attrs=("_packed",),
            extra={"float_ops": [list(op) for op in lowered.float_ops]},
        )
    else:
        raise ValidationError(
            f"qnnpack save expects the module returned by lowering with backend='qnnpack' (QnnpackModule or "
            f"PteModule), got {type(lowered).__name__}"
        )


def load(path: str | os.PathLike[str]) -> torch.nn.Module:
    """Read what ``save`` wrote: a ``PteModule`` for a ``.pte`` file, a ``QnnpackModule`` for safetensors."""
    p = Path(path)
    if not p.exists():
        raise ValidationError(f"qnnpack load: {p} does not exist")
    with p.open("rb") as f:
        head = f.read(8)
    if is_pte(head):
        from quantfx_qnnpack.executorch_lowering import PteModule

        return PteModule(p.read_bytes())
    from quantfx.graph_artifact import load_graph_module

    from quantfx_qnnpack.inprocess import QnnpackModule

    gm, extra = load_graph_module(p, format=FORMAT, allowed_modules=_ALLOWED, class_name="LoweredQnnpackModule")
    return QnnpackModule(gm, [tuple(op) for op in extra.get("float_ops", [])])
