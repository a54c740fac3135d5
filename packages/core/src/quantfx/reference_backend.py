"""The built-in ``reference`` backend: the reference IR itself, runnable anywhere.

Its "lowering" is the identity, so it is the backend to inspect numerics, to
debug a pattern config, or to hand-lower from. It is a plugin like any other,
found through core's own ``quantfx.backends`` entry-point group (module ``quantfx.reference_backend``, not a subpackage, so ``quantfx.backends()`` stays the listing function).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from quantfx.errors import LoweringError, ValidationError
from quantfx.plugins import hookimpl
from quantfx.plugins.backend import Backend

if TYPE_CHECKING:
    import torch
    from torch.fx import GraphModule

    from quantfx.backend_config import BackendConfig
    from quantfx.qconfig_mapping import QConfigMapping

__all__ = ["ReferenceBackend", "quantfx_register_backends"]


class ReferenceBackend(Backend):
    """Quantize to the reference IR and stop there (float ops between quantize / dequantize).

    Lowering rules registered for ``reference`` are graph passes: callables
    ``rule(gm: GraphModule) -> GraphModule | None`` (None: edited in place),
    applied in order to a copy of the reference model.
    """

    name = "reference"
    description = "Reference IR (float ops between quantize/dequantize); runs anywhere, no lowering"
    pip_name = "quantfx-core"

    def get_backend_config(self) -> BackendConfig:
        """Every standard pattern with uint8 activations and int8 weights."""
        from quantfx.backend_config.common import get_reference_backend_config

        return get_reference_backend_config()

    def get_default_qconfig_mapping(self, is_qat: bool = False) -> QConfigMapping:
        """uint8 affine MinMax activations, int8 symmetric per-channel weights (fake-quant for QAT).

        Full 8-bit ranges: the reference IR computes in float, so no kernel
        overflow forces the reduced ranges hardware backends may need.
        """
        import torch

        from quantfx.fake_quantize import FakeQuantize, default_per_channel_weight_fake_quant
        from quantfx.observers import (
            MinMaxObserver,
            MovingAverageMinMaxObserver,
            default_per_channel_weight_observer,
        )
        from quantfx.qconfig import QConfig
        from quantfx.qconfig_mapping import build_default_qconfig_mapping

        # quantfx.qconfig's generic activation defaults use [0, 127] (overflow-safe
        # on x86 without VNNI); the reference IR runs in float, so use all of uint8.
        if is_qat:
            activation = FakeQuantize.with_args(
                observer=MovingAverageMinMaxObserver,
                quant_min=0,
                quant_max=255,
                dtype=torch.uint8,
                qscheme=torch.per_tensor_affine,
            )
            qconfig = QConfig(activation=activation, weight=default_per_channel_weight_fake_quant)
        else:
            activation = MinMaxObserver.with_args(dtype=torch.uint8, qscheme=torch.per_tensor_affine)
            qconfig = QConfig(activation=activation, weight=default_per_channel_weight_observer)
        return build_default_qconfig_mapping(qconfig, is_qat=is_qat)

    def get_quantizer(self) -> Any:
        """PT2E: the generic XNNPACK-style symmetric quantizer (int8 activations, per-channel int8 weights)."""
        from quantfx.quantizer import SymmetricQuantizer, get_symmetric_quantization_config

        return SymmetricQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))

    def lower(
        self,
        reference_model: GraphModule,
        example_inputs: tuple[Any, ...],
        *,
        lowering_rules: Sequence[Any] = (),
        **options: Any,
    ) -> torch.nn.Module:
        """Return the reference model itself, or a copy with each lowering rule applied."""
        if options:
            raise ValidationError(
                f"The reference backend takes no lowering options; got {sorted(options)}"
            )
        if not lowering_rules:
            return reference_model
        gm = copy.deepcopy(reference_model)
        for rule in lowering_rules:
            if not callable(rule):
                raise LoweringError(
                    f"reference backend: lowering rule {rule!r} is not callable; rules for "
                    f"'reference' must be functions GraphModule -> GraphModule | None"
                )
            result = rule(gm)
            if result is not None:
                gm = result
        gm.recompile()
        return gm

    def save(self, lowered: torch.nn.Module, path: str | os.PathLike[str]) -> None:
        """Not supported: the reference IR is for inspection, not deployment."""
        raise NotImplementedError(
            "The reference backend has no deployment format. Quantize for a native "
            "backend to get a saveable artifact (e.g. `pip install quantfx-backend-fbgemm` "
            "and backend='fbgemm'), or keep the reference model in process."
        )

    def load(self, path: str | os.PathLike[str]) -> torch.nn.Module:
        """Not supported: `save` writes nothing for this backend."""
        raise NotImplementedError(
            "The reference backend has no deployment format, so there is nothing to load; "
            "use a native backend's load()."
        )


@hookimpl
def quantfx_register_backends(register: Any) -> None:
    """Provide the ``reference`` backend."""
    register(ReferenceBackend())
