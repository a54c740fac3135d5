"""The ``qnnpack`` Backend: mobile int8 with XNNPACK's constraints, two lowerings, ``.pte`` artifacts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from quantfx.errors import LoweringError, ValidationError
from quantfx.plugins.backend import Availability, Backend

if TYPE_CHECKING:
    from torch.fx import GraphModule

    from quantfx.backend_config import BackendConfig
    from quantfx.qconfig_mapping import QConfigMapping

__all__ = ["QnnpackBackend", "TARGETS"]

TARGETS = ("inprocess", "executorch")


class QnnpackBackend(Backend):
    """ARM / mobile CPUs: torch's qnnpack kernels in process, ExecuTorch + XNNPACK for deployment.

    ``lower(..., target="inprocess")`` (default) returns a ``QnnpackModule`` on
    torch's ``quantized::*`` qnnpack kernels; ``target="executorch"`` returns a
    ``PteModule`` over an ExecuTorch program with the XNNPACK delegate, whose
    ``partition_report`` lists every node XNNPACK did not take and why.
    """

    name = "qnnpack"
    description = "ARM / mobile int8 (XNNPACK constraints): torch qnnpack in process, ExecuTorch .pte with XNNPACK"
    pip_name = "quantfx-backend-qnnpack"

    def availability(self) -> Availability:
        """Usable when torch has the qnnpack engine or ExecuTorch is installed (either route runs here)."""
        engines = list(torch.backends.quantized.supported_engines)
        has_qnnpack = "qnnpack" in engines
        try:
            import executorch  # noqa: F401

            has_et = True
        except ImportError:
            has_et = False
        if not has_qnnpack and not has_et:
            return Availability.unavailable(
                f"this torch build has no qnnpack engine (it has {engines}) and executorch is not installed; "
                "pip install executorch==1.5.1 torchao==0.18.*"
            )
        return Availability.ok(qnnpack_engine=has_qnnpack, executorch=has_et)

    def get_backend_config(self) -> BackendConfig:
        """XNNPACK's operator set and constraints (see ``quantfx_qnnpack.backend_config``)."""
        from quantfx_qnnpack.backend_config import get_qnnpack_backend_config

        return get_qnnpack_backend_config()

    def get_default_qconfig_mapping(self, is_qat: bool = False) -> QConfigMapping:
        """int8 activations (scale >= 2**-12), per-channel symmetric int8 weights; no reduce_range."""
        from quantfx_qnnpack.qconfig import get_default_qnnpack_qconfig_mapping

        return get_default_qnnpack_qconfig_mapping(is_qat=is_qat)

    def get_quantizer(self) -> Any:
        """PT2E: core's symmetric quantizer with XNNPACK's config (per-channel int8 weights, int8 activations)."""
        try:
            from quantfx.quantizer import SymmetricQuantizer, get_symmetric_quantization_config
        except ImportError as exc:  # core's PT2E front door not installed / not built yet
            raise NotImplementedError(
                f"quantfx.quantizer is unavailable ({exc}); use the FX flow (prepare_fx / quantfx.quantize) with backend='qnnpack'"
            ) from exc
        return SymmetricQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))

    def lower(
        self,
        reference_model: GraphModule,
        example_inputs: tuple[Any, ...],
        *,
        lowering_rules: Sequence[Any] = (),
        target: str = "inprocess",
        **options: Any,
    ) -> torch.nn.Module:
        """Reference IR -> ``QnnpackModule`` (``target="inprocess"``) or ``PteModule`` (``target="executorch"``).

        ``lowering_rules`` are graph passes ``rule(gm) -> gm | None`` applied
        to a copy of the reference model first (e.g. a plugin's rewrite).
        ``options`` go to the ExecuTorch route (``warn_unpartitioned``).
        """
        if target not in TARGETS:
            raise ValidationError(f"qnnpack: unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        reference = reference_model
        if lowering_rules:
            import copy

            reference = copy.deepcopy(reference_model)
            for rule in lowering_rules:
                if not callable(rule):
                    raise LoweringError(
                        f"qnnpack: lowering rule {rule!r} is not callable; rules for 'qnnpack' are functions "
                        "GraphModule -> GraphModule | None applied to the reference model"
                    )
                reference = rule(reference) or reference
            reference.recompile()
        if target == "inprocess":
            if options:
                raise ValidationError(f"qnnpack target='inprocess' takes no options; got {sorted(options)}")
            from quantfx_qnnpack.inprocess import lower_inprocess

            return lower_inprocess(reference, example_inputs)
        from quantfx_qnnpack.executorch_lowering import lower_to_executorch

        return lower_to_executorch(reference, example_inputs, **options)

    def save(self, lowered: torch.nn.Module, path: str | os.PathLike[str]) -> None:
        """``PteModule``: the ``.pte`` file; ``QnnpackModule``: safetensors + JSON graph (no pickle)."""
        from quantfx_qnnpack.artifact import save

        save(lowered, path)

    def load(self, path: str | os.PathLike[str]) -> torch.nn.Module:
        """Read back what ``save`` wrote (a ``.pte`` is recognised by its ExecuTorch file identifier)."""
        from quantfx_qnnpack.artifact import load

        return load(path)
