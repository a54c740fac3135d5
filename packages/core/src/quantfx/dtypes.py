"""Integer dtypes used by quantfx, and the mapping from torch's deprecated quantized dtypes.

quantfx's configs and artifacts use plain ``torch.uint8`` / ``torch.int8`` /
``torch.int32`` (and ``torch.float16`` for fp16 dynamic quantization). Users
migrating from ``torch.ao.quantization`` may still pass ``torch.quint8`` /
``torch.qint8`` / ``torch.qint32``: :func:`normalize_dtype` maps them.
"""

from __future__ import annotations

import torch

__all__ = ["normalize_dtype", "dtype_range", "is_integer_dtype", "QUANT_INT_DTYPES"]

_QUANTIZED_TO_PLAIN = {
    torch.quint8: torch.uint8,
    torch.qint8: torch.int8,
    torch.qint32: torch.int32,
}
for _name, _plain in (("quint4x2", torch.uint8), ("quint2x4", torch.uint8)):
    if hasattr(torch, _name):
        _QUANTIZED_TO_PLAIN[getattr(torch, _name)] = _plain

QUANT_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32)


def normalize_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """Map torch's quantized dtypes (deprecated in torch 2.13) to plain integer dtypes."""
    return _QUANTIZED_TO_PLAIN.get(dtype, dtype)


def is_integer_dtype(dtype: torch.dtype | None) -> bool:
    return normalize_dtype(dtype) in QUANT_INT_DTYPES


def dtype_range(dtype: torch.dtype) -> tuple[int, int]:
    """Full representable range of an integer dtype."""
    info = torch.iinfo(normalize_dtype(dtype))
    return int(info.min), int(info.max)
