"""Saving and loading lowered ``qnnpack`` models.

- ``PteModule`` (ExecuTorch route): the ``.pte`` program bytes, exactly what a
  phone app loads; the output structure travels inside it as a constant
  method, so the file alone is the artifact.
- ``QnnpackModule`` (in-process route): ``torch.save`` of the module (plain
  int8 weights and scales; packed weights are rebuilt on first call). This is
  a pickle: load only files you trust.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from quantfx.errors import ValidationError

__all__ = ["save", "load", "is_pte"]

_PTE_IDENTIFIER = b"ET"  # flatbuffer file identifier "ET12"... at bytes 4..8


def is_pte(data: bytes) -> bool:
    """True for an ExecuTorch program (flatbuffer identifier ``ET..`` at offset 4)."""
    return len(data) >= 8 and data[4:6] == _PTE_IDENTIFIER


def save(lowered: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Write a ``PteModule`` as its ``.pte`` bytes, or a ``QnnpackModule`` with ``torch.save``."""
    from quantfx_qnnpack.executorch_lowering import PteModule
    from quantfx_qnnpack.inprocess import QnnpackModule

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(lowered, PteModule):
        p.write_bytes(lowered.pte)
    elif isinstance(lowered, QnnpackModule):
        torch.save(lowered, p)
    else:
        raise ValidationError(
            f"qnnpack save expects the module returned by lowering with backend='qnnpack' (QnnpackModule or "
            f"PteModule), got {type(lowered).__name__}"
        )


def load(path: str | os.PathLike[str]) -> torch.nn.Module:
    """Read what ``save`` wrote: a ``PteModule`` for a ``.pte`` file, else the pickled ``QnnpackModule``."""
    p = Path(path)
    if not p.exists():
        raise ValidationError(f"qnnpack load: {p} does not exist")
    with p.open("rb") as f:
        head = f.read(8)
    if is_pte(head):
        from quantfx_qnnpack.executorch_lowering import PteModule

        return PteModule(p.read_bytes())
    return torch.load(p, weights_only=False)
