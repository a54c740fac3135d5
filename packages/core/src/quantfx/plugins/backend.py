"""The `Backend` base class every backend package subclasses.

A backend turns quantfx's one reference IR into something a piece of hardware
runs. Core knows backends only through this interface, so a new target is a new
package with a `Backend` subclass and an entry point, never a change to core.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quantfx.errors import ValidationError

if TYPE_CHECKING:
    import torch
    from torch.fx import GraphModule

    from quantfx.backend_config import BackendConfig
    from quantfx.qconfig_mapping import QConfigMapping

__all__ = ["Availability", "Backend", "KNOWN_BACKEND_PACKAGES"]

#: Backend name -> the pip distribution that provides it, so an unknown-backend
#: error can say exactly what to install.
KNOWN_BACKEND_PACKAGES: dict[str, str] = {
    "fbgemm": "quantfx-backend-fbgemm",
    "x86": "quantfx-backend-fbgemm",
    "qnnpack": "quantfx-backend-qnnpack",
    "openvino": "quantfx-backend-openvino",
    "tensorrt": "quantfx-backend-tensorrt",
    "tvm": "quantfx-backend-tvm",
}


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run on this machine, and if not, why.

    An installed backend may still be unusable here (no GPU, runtime missing,
    CPU lacks an instruction set); `reason` is the sentence shown to the user,
    e.g. "TensorRT needs an NVIDIA GPU; none found".
    """

    available: bool
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.available, bool):
            raise ValidationError(f"Availability.available must be a bool, got {self.available!r}")
        if not self.available and not self.reason:
            raise ValidationError(
                "Availability(available=False) needs a reason that tells the user why "
                "the backend cannot run here (e.g. 'TensorRT needs an NVIDIA GPU; none found')"
            )

    @classmethod
    def ok(cls, **details: Any) -> Availability:
        """The backend can run here."""
        return cls(True, None, details)

    @classmethod
    def unavailable(cls, reason: str, **details: Any) -> Availability:
        """The backend cannot run here, because `reason`."""
        return cls(False, reason, details)


class Backend(abc.ABC):
    """One quantization target: its patterns, defaults, lowering and artifact format.

    Subclass it in a backend package and register an instance from the
    package's plugin module::

        @quantfx.plugins.hookimpl
        def quantfx_register_backends(register):
            register(FbgemmBackend())

    `name` is what users pass as ``backend=``; `pip_name` is what they install.
    """

    name: str = ""
    description: str = ""
    pip_name: str | None = None
    #: whether `quantfx.quantize` applies bias correction (quantfx.fx.bias_correction) by default
    bias_correction: bool = False
    #: whether `quantfx.quantize` leaves model outputs float (quantfx.fx.float_outputs) by default: set it
    #: where the int8 kernels return float anyway, so rounding the last op's output only costs accuracy
    float_outputs: bool = False

    def availability(self) -> Availability:
        """Whether this backend can run here; override to probe GPUs, runtimes, ISAs."""
        return Availability.ok()

    def availability_for_lowering(self, options: Mapping[str, Any]) -> Availability:
        """Whether ``lower(..., **options)`` can run here; by default the same as :meth:`availability`.

        Override when some options avoid what is missing (TensorRT with
        ``engine=False`` lowers to ONNX Runtime on a machine without a GPU).
        """
        return self.availability()

    @abc.abstractmethod
    def get_backend_config(self) -> BackendConfig:
        """The patterns this backend quantizes, its fusions and dtype constraints."""

    @abc.abstractmethod
    def get_default_qconfig_mapping(self, is_qat: bool = False) -> QConfigMapping:
        """The observers this backend wants by default, for PTQ or (`is_qat`) QAT."""

    def get_quantizer(self) -> Any:
        """The PT2E `Quantizer` that annotates `torch.export` graphs for this backend.

        An override may take ``is_qat: bool = False``; ``prepare_qat_pt2e(model, "<name>")``
        then asks for the QAT variant (fake-quants, conv-bn patterns).
        """
        raise NotImplementedError(
            f"Backend '{self.name}' provides no PT2E Quantizer; use the FX flow "
            f"(quantfx.quantize or quantfx.quantize_fx.prepare_fx) with this backend, "
            f"or pick a backend whose get_quantizer() is implemented"
        )

    @abc.abstractmethod
    def lower(
        self,
        reference_model: GraphModule,
        example_inputs: tuple[Any, ...],
        *,
        lowering_rules: Sequence[Any] = (),
        **options: Any,
    ) -> torch.nn.Module:
        """Turn a reference quantized model into this backend's runnable artifact.

        `lowering_rules` are the objects plugins registered through
        `quantfx_register_lowering_rules`; their meaning is the backend's to define.
        """

    def save(self, lowered: torch.nn.Module, path: str | os.PathLike[str]) -> None:
        """Write a lowered model to `path` in this backend's deployment format."""
        raise NotImplementedError(
            f"Backend '{self.name}' cannot save lowered models; keep the model in "
            f"process or use a backend with an artifact format"
        )

    def load(self, path: str | os.PathLike[str]) -> torch.nn.Module:
        """Read back what `save` wrote."""
        raise NotImplementedError(
            f"Backend '{self.name}' cannot load saved models; it has no artifact format"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend {self.name!r}>"
