"""The ``x86`` and ``fbgemm`` backends: one lowering (oneDNN int8 kernels), two sets of defaults.

* ``x86`` -- the default backend on x86 machines (torch's default engine name
  since 2.0). Activation range chosen from this CPU's instruction set: 7-bit
  where the u8 x s8 kernels saturate (no VNNI), full 8-bit with VNNI / AMX.
* ``fbgemm`` -- the name torch.ao users migrate from. Same kernels, torch.ao's
  fbgemm defaults exactly (always 7-bit activations): the artifact is exact on
  every x86 CPU and its numbers match torch.ao's ``convert_fx`` step for step.

Both run torch's oneDNN int8 ops on plain uint8 / int8 tensors, never the
deprecated quantized dtypes (``docs/backends/fbgemm.md`` says why).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule

from quantfx.backend_config import BackendConfig
from quantfx.errors import ValidationError
from quantfx.plugins.backend import Availability, Backend
from quantfx.qconfig_mapping import QConfigMapping

from quantfx_fbgemm import kernels
from quantfx_fbgemm.backend_config import get_fbgemm_backend_config, get_x86_backend_config
from quantfx_fbgemm.qconfig import default_reduce_range, get_default_qconfig_mapping

__all__ = ["OneDNNBackend", "X86Backend", "FbgemmBackend"]

_X86_MACHINES = {"x86_64", "amd64", "x64", "i386", "i686", "x86"}
_LOWER_OPTIONS = {"fuse_residual", "warn"}


class OneDNNBackend(Backend):
    """Shared implementation: availability probe, lowering, safetensors + JSON artifacts.

    ``quantfx.quantize(..., backend="x86" | "fbgemm")`` applies bias correction
    (``quantfx.fx.bias_correction``) by default: on pretrained EfficientNet-Lite0
    it takes int8 vs fp32 from 12.2 to ~21 dB (top-1 agreement 0.73 -> ~0.9),
    because depthwise 3x3 kernels whose weights nearly cancel lose their DC
    gain to rounding. ``prepare_fx`` / ``convert_fx`` stay torch.ao-faithful;
    pass ``bias_correction=False`` to ``quantize`` to skip it.
    """

    bias_correction = True

    pip_name = "quantfx-backend-fbgemm"

    def availability(self) -> Availability:
        """Runs on x86 CPUs with AVX2 or better and a torch build with the oneDNN int8 ops.

        ``details`` say which ISA the kernels will use and whether activations
        are limited to 7 bits, so ``quantfx backends`` shows what was chosen.
        """
        machine = platform.machine().lower()
        if machine not in _X86_MACHINES:
            return Availability.unavailable(
                f"the {self.name} backend runs x86 int8 kernels; this machine is {machine or 'unknown'} "
                "(use backend='qnnpack' on ARM, or 'reference')"
            )
        if not kernels.onednn_int8_available():
            return Availability.unavailable(
                f"this torch build ({torch.__version__}) lacks the oneDNN int8 ops "
                "(torch.ops.onednn.qconv_pointwise / qlinear_pointwise); install a torch CPU build with mkldnn"
            )
        try:
            isa = kernels.cpu_isa()
        except ValueError as err:  # a bad QUANTFX_CPU_ISA value
            return Availability.unavailable(str(err))
        if isa == "default":
            return Availability.unavailable(
                "this CPU lacks AVX2 (found: "
                f"{kernels.hardware_isa()}); the int8 kernels need AVX2, AVX-512 or AMX. "
                "Use backend='reference' here, or quantize on this machine and deploy on an AVX2+ CPU"
            )
        return Availability.ok(
            isa=isa,
            vnni=kernels.has_vnni(isa),
            reduce_range=default_reduce_range(self.name),
            isa_override=os.environ.get("QUANTFX_CPU_ISA") or None,
            threading=kernels.threading_advice() or "ok",
        )

    def get_default_qconfig_mapping(self, is_qat: bool = False) -> QConfigMapping:
        """torch.ao's x86 / fbgemm defaults with reduce_range chosen as the module docstring says."""
        return get_default_qconfig_mapping(self.name, is_qat=is_qat)

    def get_quantizer(self, is_qat: bool = False) -> Any:
        """PT2E: the default QConfigMapping's scheme as an ``X86Quantizer`` (``quantfx_fbgemm.quantizer``)."""
        from quantfx_fbgemm.quantizer import get_x86_quantizer

        return get_x86_quantizer(self.name, is_qat=is_qat)

    def lower(
        self,
        reference_model: GraphModule,
        example_inputs: tuple[Any, ...],
        *,
        lowering_rules: Sequence[Any] = (),
        **options: Any,
    ) -> torch.nn.Module:
        """Reference IR -> a GraphModule calling the oneDNN int8 kernels (``quantfx_fbgemm.lowering``).

        Options: ``fuse_residual`` (default True), ``warn`` (default True).
        Plugin ``lowering_rules`` are ``rule(gm) -> gm | None`` run first.
        """
        unknown = set(options) - _LOWER_OPTIONS
        if unknown:
            raise ValidationError(
                f"{self.name}.lower got unknown option(s) {sorted(unknown)}; supported: {sorted(_LOWER_OPTIONS)}"
            )
        from quantfx_fbgemm.lowering import lower_to_onednn

        return lower_to_onednn(
            reference_model, example_inputs, backend_name=self.name, lowering_rules=lowering_rules, **options
        )

    def save(self, lowered: torch.nn.Module, path: str | os.PathLike[str]) -> None:
        """safetensors (integer weights, scales, zero points, float biases) + a JSON graph; no pickle."""
        from quantfx_fbgemm.artifact import save

        save(lowered, path)

    def load(self, path: str | os.PathLike[str]) -> torch.nn.Module:
        """Rebuild what ``save`` wrote; imports only allow-listed torch / quantfx classes and functions."""
        from quantfx_fbgemm.artifact import load

        return load(path)


class X86Backend(OneDNNBackend):
    """x86 CPUs: oneDNN int8 kernels, activation range chosen from this CPU's ISA."""

    name = "x86"
    description = "x86 CPUs: oneDNN int8 conv/linear on plain uint8/int8 tensors; 7-bit activations only where the CPU lacks VNNI"

    def get_backend_config(self) -> BackendConfig:
        """torch.ao's x86 pattern coverage (core's pattern sets, x86 dtype configs)."""
        return get_x86_backend_config()


class FbgemmBackend(OneDNNBackend):
    """torch.ao's fbgemm defaults (always 7-bit activations) on the same oneDNN kernels."""

    name = "fbgemm"
    description = "x86 CPUs with torch.ao's fbgemm defaults (7-bit activations, exact on any x86); oneDNN int8 kernels"

    def get_backend_config(self) -> BackendConfig:
        """torch.ao's fbgemm pattern coverage (core's pattern sets, x86 dtype configs)."""
        return get_fbgemm_backend_config()
