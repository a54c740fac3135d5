"""Default QConfigMappings of the ``x86`` and ``fbgemm`` backends.

They reproduce torch.ao's x86 / fbgemm defaults -- HistogramObserver uint8
activations, per-channel symmetric int8 weights (fused moving-average
fake-quant for QAT) -- through core's ``build_default_qconfig_mapping``.

The one knob torch.ao made users set by hand is ``reduce_range`` (7-bit
activations). Without VNNI the x86 u8 x s8 multiply-add saturates at int16,
so full-range activations lose 6-9 dB on real models. Here it is chosen
for the user:

* ``x86``: from the CPU's instruction set (``kernels.needs_reduce_range()``):
  7-bit on AVX2 / AVX-512 without VNNI, full 8-bit with VNNI / AMX.
  ``QUANTFX_CPU_ISA`` names another target CPU (e.g. an AVX2 fleet).
* ``fbgemm``: always 7-bit, as torch.ao's fbgemm default: the artifact is
  exact on every x86 CPU and matches torch.ao's numbers step for step.
"""

from __future__ import annotations

import torch
from torch import nn

from quantfx.fake_quantize import FusedMovingAvgObsFakeQuantize, default_fused_per_channel_wt_fake_quant
from quantfx.observers import (
    HistogramObserver,
    MovingAverageMinMaxObserver,
    PlaceholderObserver,
    default_per_channel_weight_observer,
    default_weight_observer,
)
from quantfx.qconfig import QConfig, float16_dynamic_qconfig
from quantfx.qconfig_mapping import QConfigMapping, build_default_qconfig_mapping

from quantfx_fbgemm.kernels import needs_reduce_range

__all__ = [
    "default_reduce_range",
    "get_default_qconfig",
    "get_default_qat_qconfig",
    "get_default_qconfig_mapping",
    "get_dynamic_qconfig",
    "get_dynamic_qconfig_mapping",
]


def default_reduce_range(backend: str = "x86") -> bool:
    """Whether ``backend``'s defaults use 7-bit activations on this machine (see module docstring)."""
    if backend == "fbgemm":
        return True
    if backend == "x86":
        return needs_reduce_range()
    raise ValueError(f"unknown backend {backend!r}; expected 'x86' or 'fbgemm'")


def get_default_qconfig(backend: str = "x86", reduce_range: bool | None = None) -> QConfig:
    """torch.ao's ``get_default_qconfig('x86'/'fbgemm')`` with reduce_range chosen for this CPU."""
    rr = default_reduce_range(backend) if reduce_range is None else reduce_range
    return QConfig(
        activation=HistogramObserver.with_args(dtype=torch.uint8, reduce_range=rr),
        weight=default_per_channel_weight_observer,
    )


def get_default_qat_qconfig(backend: str = "x86", reduce_range: bool | None = None) -> QConfig:
    """torch.ao's ``get_default_qat_qconfig('x86'/'fbgemm')`` (fused moving-average fake-quant)."""
    rr = default_reduce_range(backend) if reduce_range is None else reduce_range
    return QConfig(
        activation=FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.uint8, reduce_range=rr
        ),
        weight=default_fused_per_channel_wt_fake_quant,
    )


def get_default_qconfig_mapping(backend: str = "x86", is_qat: bool = False, reduce_range: bool | None = None) -> QConfigMapping:
    """The backend's default PTQ (or QAT) mapping: the qconfig above plus core's per-op exceptions."""
    qconfig = get_default_qat_qconfig(backend, reduce_range) if is_qat else get_default_qconfig(backend, reduce_range)
    return build_default_qconfig_mapping(qconfig, is_qat=is_qat)


def get_dynamic_qconfig(backend: str = "x86", dtype: torch.dtype = torch.int8) -> QConfig:
    """Dynamic quantization of Linear: int8 weights with run-time uint8 activations, or fp16 weights.

    The run-time activation range follows the kernels (7-bit where they
    saturate), as torch.ao's fbgemm dynamic linear does internally.
    """
    if dtype == torch.float16:
        return float16_dynamic_qconfig
    if dtype != torch.int8:
        raise ValueError(f"dynamic quantization dtype must be torch.int8 or torch.float16, got {dtype}")
    qmax = 127 if default_reduce_range(backend) else 255
    activation = PlaceholderObserver.with_args(dtype=torch.uint8, quant_min=0, quant_max=qmax, is_dynamic=True)
    return QConfig(activation=activation, weight=default_weight_observer)


def get_dynamic_qconfig_mapping(backend: str = "x86", dtype: torch.dtype = torch.int8) -> QConfigMapping:
    """Every ``nn.Linear`` dynamically quantized, everything else float (BERT-style models)."""
    return QConfigMapping().set_object_type(nn.Linear, get_dynamic_qconfig(backend, dtype))
