"""``TensorRTBackend``: the ``tensorrt`` backend as core sees it (config, defaults, lowering, artifacts)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from quantfx.errors import BackendUnavailableError
from quantfx.plugins.backend import Availability, Backend

if TYPE_CHECKING:
    import onnx
    import torch
    from torch.fx import GraphModule

    from quantfx.backend_config import BackendConfig
    from quantfx.qconfig_mapping import QConfigMapping

__all__ = ["TensorRTBackend"]


class TensorRTBackend(Backend):
    """Explicit int8 quantization for NVIDIA GPUs: ONNX with Q/DQ nodes, built into a TensorRT engine.

    ``lower`` options (``convert_fx(prepared, engine=False)``,
    ``quantfx.quantize(..., workspace_bytes=1 << 30)``):

    - ``engine``: build a TensorRT engine (default: when ``tensorrt`` and a GPU
      are here). ``False`` returns the ONNX model run by ONNX Runtime on CPU;
    - ``opset_version`` (default 18), ``dynamic_batch`` (default False): ONNX export;
    - ``shapes``: ``{input: (min, opt, max)}`` for dynamic inputs;
      ``workspace_bytes``, ``optimization_level``: engine build.

    Without a GPU, ``quantfx.quantize(..., backend="tensorrt")`` raises
    ``BackendUnavailableError`` saying what is missing; :meth:`export_onnx`
    (or ``lower(..., engine=False)``) still works.
    """

    name = "tensorrt"
    description = "NVIDIA TensorRT: ONNX with explicit int8 QuantizeLinear/DequantizeLinear, built into an engine"
    pip_name = "quantfx-backend-tensorrt"

    def availability(self) -> Availability:
        """Available when the ``engine`` extra imports and the NVIDIA driver reports a GPU; else says which is missing."""
        from quantfx_tensorrt.devices import ENGINE_EXTRA_HINT, missing_packages, probe_gpus

        reasons = []
        missing = missing_packages()
        if "tensorrt" in missing:
            reasons.append("the 'tensorrt' Python package is not installed")
        if "cuda-python" in missing:
            reasons.append("the 'cuda-python' package (CUDA bindings used to run engines) is not installed")
        if missing:
            reasons[-1] += f" ({ENGINE_EXTRA_HINT})"
        probe = probe_gpus()
        if not probe.found:
            reasons.append(f"no NVIDIA GPU found: {probe.reason}")
        if reasons:
            return Availability.unavailable(
                "; ".join(reasons) + ". The ONNX export still works here: "
                "quantfx_tensorrt.export_onnx(reference_model, example_inputs, 'model.onnx'), or "
                "quantfx.quantize(..., backend='tensorrt', engine=False) to run the Q/DQ model in ONNX Runtime",
                missing_packages=missing, gpus=list(probe.names),
            )
        import tensorrt

        return Availability.ok(gpus=list(probe.names), tensorrt_version=str(tensorrt.__version__))

    def availability_for_lowering(self, options: Mapping[str, Any]) -> Availability:
        """``engine=False`` lowers to ONNX Runtime, which needs neither TensorRT nor a GPU."""
        if options.get("engine") is False:
            return Availability.ok(route="onnxruntime")
        return self.availability()

    def get_backend_config(self) -> BackendConfig:
        """Conv / linear / matmul / residual add / cat / pooling / layout ops in symmetric int8."""
        from quantfx_tensorrt.backend_config import get_tensorrt_backend_config

        return get_tensorrt_backend_config()

    def get_default_qconfig_mapping(self, is_qat: bool = False) -> QConfigMapping:
        """Symmetric int8: per-tensor MinMax activations, per-channel weights (fake-quant for QAT)."""
        from quantfx_tensorrt.qconfig import get_tensorrt_qconfig_mapping

        return get_tensorrt_qconfig_mapping(is_qat=is_qat)

    def get_quantizer(self, is_qat: bool = False) -> Any:
        """PT2E: the default QConfigMapping's symmetric int8 scheme as a ``TensorRTQuantizer``."""
        from quantfx_tensorrt.quantizer import get_tensorrt_quantizer

        return get_tensorrt_quantizer(is_qat=is_qat)

    def export_onnx(
        self,
        reference_model: torch.nn.Module,
        example_inputs: Any,
        path: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> onnx.ModelProto:
        """The reference model as TensorRT-ready Q/DQ ONNX (runs anywhere; no GPU needed).

        Applies the lowering rules plugins registered for ``tensorrt``; options
        as :func:`quantfx_tensorrt.lowering.export_onnx`.
        """
        from quantfx.plugins import get_plugin_manager
        from quantfx_tensorrt.lowering import export_onnx

        rules = options.pop("lowering_rules", None)
        if rules is None:
            rules = get_plugin_manager().lowering_rules(self.name)
        return export_onnx(reference_model, example_inputs, path, lowering_rules=rules, **options)

    def lower(
        self,
        reference_model: GraphModule,
        example_inputs: tuple[Any, ...],
        *,
        lowering_rules: Sequence[Any] = (),
        engine: bool | None = None,
        opset_version: int | None = None,
        dynamic_batch: bool = False,
        shapes: Mapping[str, Any] | None = None,
        workspace_bytes: int | None = None,
        optimization_level: int | None = None,
    ) -> torch.nn.Module:
        """Export to Q/DQ ONNX, check TensorRT's rules, then build the engine (or, with ``engine=False``, run in ONNX Runtime)."""
        from quantfx.onnx import DEFAULT_OPSET, OnnxRuntimeModule, check_qdq
        from quantfx_tensorrt.lowering import export_onnx

        model = export_onnx(
            reference_model, example_inputs,
            opset_version=opset_version or DEFAULT_OPSET, dynamic_batch=dynamic_batch, lowering_rules=lowering_rules,
        )
        report = check_qdq(model)
        if engine is None:
            engine = self.availability().available
        if not engine:
            module: torch.nn.Module = OnnxRuntimeModule(model)
        else:
            availability = self.availability()
            if not availability.available:
                raise BackendUnavailableError(
                    f"Backend 'tensorrt' cannot build an engine here: {availability.reason}"
                )
            from quantfx_tensorrt.engine import TensorRTModule, build_engine

            onnx_bytes = model.SerializeToString()
            plan = build_engine(
                onnx_bytes, shapes=shapes, workspace_bytes=workspace_bytes, optimization_level=optimization_level
            )
            module = TensorRTModule(plan, onnx_bytes=onnx_bytes)
        module.qdq_report = report  # which compute nodes run in int8, for users checking placement
        return module

    def save(self, lowered: torch.nn.Module, path: str | os.PathLike[str]) -> None:
        """Engine: plan at ``path`` (+ ``path.onnx``, ``path.json``); ONNX Runtime module: the ``.onnx`` file."""
        from quantfx_tensorrt.artifact import save

        save(lowered, path)

    def load(self, path: str | os.PathLike[str]) -> torch.nn.Module:
        """Read back what :meth:`save` wrote."""
        from quantfx_tensorrt.artifact import load

        return load(path)
