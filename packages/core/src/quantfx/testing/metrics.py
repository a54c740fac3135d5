"""Accuracy metrics used to judge a quantized model against a reference."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["sqnr", "top1_agreement", "flatten_outputs"]


def flatten_outputs(out: Any) -> torch.Tensor:
    """All tensors in a (nested) model output, flattened and concatenated as float64.

    Lets models with tuple / list / dict outputs be compared with one number.
    NumPy arrays (runtimes such as OpenVINO or ONNX Runtime return them) are accepted.
    """
    parts: list[torch.Tensor] = []

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            parts.append(x.detach().reshape(-1).to(torch.float64))
        elif isinstance(x, (tuple, list)):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                walk(x[k])
        elif hasattr(x, "__array__"):
            parts.append(torch.as_tensor(x).reshape(-1).to(torch.float64))
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            parts.append(torch.tensor([float(x)], dtype=torch.float64))

    walk(out)
    if not parts:
        raise ValueError(f"no tensors in output of type {type(out).__name__}")
    return torch.cat(parts)


def sqnr(reference: Any, actual: Any) -> float:
    """Signal-to-quantization-noise ratio in dB: ``20*log10(||ref|| / ||ref - actual||)``.

    ``inf`` when both are equal; ``-inf`` when ``actual`` holds NaN / Inf or the
    reference is all zeros and ``actual`` is not, so a broken output always
    fails a lower bound. Works on tensors or nested outputs (see
    ``flatten_outputs``); element counts must match.
    """
    ref = flatten_outputs(reference)
    act = flatten_outputs(actual)
    if ref.shape != act.shape:
        raise ValueError(f"sqnr: reference has {ref.numel()} elements, actual has {act.numel()}")
    if not torch.isfinite(act).all():
        return float("-inf")
    noise = torch.linalg.vector_norm(ref - act).item()
    signal = torch.linalg.vector_norm(ref).item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)


def top1_agreement(a_logits: torch.Tensor, b_logits: torch.Tensor) -> float:
    """Fraction of rows whose argmax over the last dim agrees (classification models)."""
    a = torch.as_tensor(a_logits)
    b = torch.as_tensor(b_logits)
    if a.shape != b.shape:
        raise ValueError(f"top1_agreement: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    a = a.reshape(-1, a.shape[-1])
    b = b.reshape(-1, b.shape[-1])
    if a.shape[0] == 0:
        raise ValueError("top1_agreement: empty logits")
    return (a.argmax(-1) == b.argmax(-1)).to(torch.float64).mean().item()
