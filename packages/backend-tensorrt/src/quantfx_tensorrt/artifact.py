"""Save / load what the ``tensorrt`` backend lowers to: an ONNX file, or a TensorRT engine.

- ``OnnxRuntimeModule`` (the lowering without a GPU): one ``.onnx`` file any
  runtime reads (``trtexec --onnx``, ONNX Runtime, OpenVINO).
- ``TensorRTModule``: the raw engine plan at ``path`` (``trtexec --loadEngine``
  reads it), plus ``path.onnx`` (the model it was built from) and
  ``path.json`` (output structure). An engine only runs on the TensorRT
  version and GPU generation that built it; the ONNX file rebuilds it anywhere.
"""

from __future__ import annotations

import json
import os

import torch

from quantfx.errors import ValidationError
from quantfx.onnx import OnnxRuntimeModule
from quantfx_tensorrt.engine import TensorRTModule, save_engine

__all__ = ["save", "load"]


def save(lowered: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Write a lowered model (engine or ONNX) to ``path``."""
    if isinstance(lowered, TensorRTModule):
        save_engine(lowered, path)
    elif isinstance(lowered, OnnxRuntimeModule):
        lowered.save(path)
    else:
        raise ValidationError(
            f"the tensorrt backend saves what it lowers to (TensorRTModule or quantfx.onnx.OnnxRuntimeModule), "
            f"got {type(lowered).__name__}; lower with quantfx.lower(reference, 'tensorrt', example_inputs) first"
        )


def load(path: str | os.PathLike[str]) -> torch.nn.Module:
    """Read back what :func:`save` wrote: a ``TensorRTModule`` when ``path.json`` says so, else the ONNX model."""
    path = os.fspath(path)
    sidecar = path + ".json"
    if os.path.exists(sidecar):
        with open(sidecar) as f:
            meta = json.load(f)
        if meta.get("format") == "tensorrt-engine":
            with open(path, "rb") as f:
                plan = f.read()
            onnx_bytes = None
            if meta.get("onnx"):
                onnx_path = os.path.join(os.path.dirname(path), meta["onnx"])
                if os.path.exists(onnx_path):
                    with open(onnx_path, "rb") as f:
                        onnx_bytes = f.read()
            return TensorRTModule(plan, onnx_bytes=onnx_bytes, out_spec=meta.get("out_spec"))
    return OnnxRuntimeModule.load(path)
