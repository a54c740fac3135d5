"""The optional dependencies of ``quantfx.onnx``, checked once with an install hint."""

from __future__ import annotations

import importlib.util

__all__ = ["require_onnx", "ONNX_EXTRA_HINT"]

ONNX_EXTRA_HINT = "pip install 'quantfx-core[onnx]'"

# import name -> what it is needed for
_NEEDED = {
    "onnx": "building and checking ONNX models",
    "onnxscript": "torch.onnx's exporter (torch.onnx.export(dynamo=True))",
    "onnxruntime": "running exported models (OnnxRuntimeModule)",
}


def require_onnx(*names: str) -> None:
    """Raise ImportError naming every missing package and the extra that installs them."""
    wanted = names or tuple(_NEEDED)
    missing = [n for n in wanted if importlib.util.find_spec(n) is None]
    if missing:
        details = "; ".join(f"'{n}' ({_NEEDED.get(n, 'needed')})" for n in missing)
        raise ImportError(
            f"quantfx.onnx needs packages that are not installed: {details}. "
            f"Install the optional extra: {ONNX_EXTRA_HINT}"
        )
