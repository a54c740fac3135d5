"""PT2E checks of the backend conformance kit (mixed into ``quantfx.testing.conformance.BackendConformanceTests``).

For every model of the suite: ``torch.export`` -> ``prepare_pt2e`` with the
backend's ``get_quantizer()`` -> calibrate (same batches as the FX flow) ->
``convert_pt2e`` -> normalize into the FX reference form (as ``quantfx.api.lower``
does) -> the FX flow's ``lower`` stage -> run, and compare with the same model
quantized and lowered through ``prepare_fx``:

- ``test_pt2e_matches_fx``: SQNR(FX-flow output, PT2E-flow output) >= 30 dB
  (``pt2e_sqnr_bounds`` per model id or ``"model"``; ``default_pt2e_sqnr``).

A backend without a PT2E quantizer (``get_quantizer`` raises NotImplementedError)
gets these tests skipped with that reason. ``pt2e_models`` restricts the models.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from quantfx.testing.metrics import sqnr
from quantfx.testing.models import MODEL_SUITE, calibration_data

__all__ = ["Pt2eConformanceMixin", "Pt2eFlow"]

_PT2E_FLOWS: dict[tuple[type, str], Pt2eFlow] = {}


@dataclass
class Pt2eFlow:
    """One model through the PT2E front door: converted model, lowered artifact, outputs, or the error."""

    name: str
    converted: Any = None
    artifact: Any = None
    artifact_out: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    skip_reason: str | None = None


class Pt2eConformanceMixin:
    """PT2E tests for a backend; every stage is a method a subclass may override."""

    backend: ClassVar[str] = ""
    pt2e_models: ClassVar[tuple[str, ...] | None] = None
    pt2e_sqnr_bounds: ClassVar[dict[str, float]] = {}
    default_pt2e_sqnr: ClassVar[float] = 30.0
    calibration_batches: ClassVar[int] = 8

    def quantizer(self) -> Any:
        """The backend's PT2E quantizer (``Backend.get_quantizer()``)."""
        return importlib.import_module("quantfx.api").get_backend(self.backend).get_quantizer()

    def export(self, model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> Any:
        """``torch.export.export(model, example_inputs).module()``."""
        return torch.export.export(model, example_inputs).module()

    def prepare_pt2e(self, exported: Any, quantizer: Any) -> Any:
        """``quantfx.quantize_pt2e.prepare_pt2e``."""
        return importlib.import_module("quantfx.quantize_pt2e").prepare_pt2e(exported, quantizer)

    def convert_pt2e(self, prepared: Any) -> Any:
        """``quantfx.quantize_pt2e.convert_pt2e``."""
        return importlib.import_module("quantfx.quantize_pt2e").convert_pt2e(prepared)

    def lower_pt2e(self, converted: Any, example_inputs: tuple[Any, ...]) -> Any:
        """The FX flow's lowering stage (``self.lower``) on convert_pt2e output, normalized as ``quantfx.api.lower`` does.

        Going through ``self.lower`` keeps a subclass's lowering options (e.g.
        tensorrt's ONNX Runtime route on a machine without a GPU) for both front doors.
        """
        from quantfx.pt2e.normalize import as_fx_reference

        return self.lower(as_fx_reference(converted, example_inputs), example_inputs)  # type: ignore[attr-defined]

    def pt2e_flow(self, name: str) -> Pt2eFlow:
        """Run (once per class and model) the PT2E flow on the FX flow's inputs."""
        key = (type(self), name)
        if key in _PT2E_FLOWS:
            return _PT2E_FLOWS[key]
        flow = Pt2eFlow(name)
        _PT2E_FLOWS[key] = flow
        try:
            quantizer = self.quantizer()
        except NotImplementedError as err:
            flow.skip_reason = f"backend {self.backend!r} has no PT2E quantizer: {err}"
            return flow
        fx = self.flow("model", name)  # type: ignore[attr-defined]  # from BackendConformanceTests
        model, example_inputs = MODEL_SUITE[name]()
        try:
            prepared = self.prepare_pt2e(self.export(copy.deepcopy(model), example_inputs), quantizer)
            with torch.no_grad():
                prepared(*example_inputs)
                for batch in calibration_data(example_inputs, n=self.calibration_batches, seed=0):
                    prepared(*batch)
            flow.converted = self.convert_pt2e(prepared)
            flow.artifact = self.lower_pt2e(flow.converted, example_inputs)
            flow.artifact_out = [self.run_artifact(flow.artifact, x) for x in fx.eval_inputs]  # type: ignore[attr-defined]
        except Exception as err:
            flow.error = err
        return flow

    def test_pt2e_matches_fx(self, model_name: str) -> None:
        """The PT2E front door lowers through this backend and agrees with the FX front door."""
        import pytest

        if self.pt2e_models is not None and model_name not in self.pt2e_models:
            pytest.skip(f"{model_name!r} is not in {type(self).__name__}.pt2e_models")
        flow = self.pt2e_flow(model_name)
        if flow.skip_reason:
            pytest.skip(flow.skip_reason)
        fx = self._lowered_flow("model", model_name)  # type: ignore[attr-defined]
        if flow.error is not None:
            raise AssertionError(
                f"[{self.backend}] model {model_name!r}: export / prepare_pt2e / convert_pt2e / lower failed: "
                f"{type(flow.error).__name__}: {flow.error}"
            ) from flow.error
        value = sqnr(fx.artifact_out, flow.artifact_out)
        bound = float(self.pt2e_sqnr_bounds.get(model_name, self.pt2e_sqnr_bounds.get("model", self.default_pt2e_sqnr)))
        assert value >= bound, (
            f"[{self.backend}] model {model_name!r}: SQNR(FX flow, PT2E flow) = {value:.1f} dB < {bound:.1f} dB: "
            f"the backend's Quantizer and its default QConfigMapping quantize this model differently, or the "
            f"lowering of convert_pt2e output (normalized by quantfx.pt2e.normalize) diverges."
        )
