"""Without TensorRT or a GPU the backend says exactly what is missing, and everything before the engine still works."""

from __future__ import annotations

import pytest
import torch

import quantfx
from quantfx.errors import BackendUnavailableError
from quantfx.plugins.backend import Availability
from quantfx.testing.models import MODEL_SUITE, calibration_data
from quantfx_tensorrt import devices
from quantfx_tensorrt.backend import TensorRTBackend


def test_entry_point_registers_the_backend() -> None:
    """Loaded through the installed ``quantfx.backends`` entry point, not registered by hand."""
    from quantfx.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert isinstance(pm.get_backend("tensorrt"), TensorRTBackend)
    assert pm.backend_plugin("tensorrt") == "tensorrt"
    row = next(r for r in quantfx.backends() if r.name == "tensorrt")
    assert row.distribution == "quantfx-backend-tensorrt"


def _fake(monkeypatch: pytest.MonkeyPatch, missing: list[str], gpus: list[str], why: str | None = None) -> None:
    monkeypatch.setattr(devices, "missing_packages", lambda: list(missing))
    monkeypatch.setattr(devices, "probe_gpus", lambda: devices.GpuProbe(names=gpus, reason=why))


def test_reason_names_missing_package_and_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, ["tensorrt"], [], "the NVIDIA driver library (libcuda.so.1) is not installed")
    a = TensorRTBackend().availability()
    assert not a.available
    assert "'tensorrt' Python package is not installed" in a.reason
    assert "pip install 'quantfx-backend-tensorrt[engine]'" in a.reason
    assert "no NVIDIA GPU found: the NVIDIA driver library (libcuda.so.1) is not installed" in a.reason
    assert "export_onnx" in a.reason  # what still works here


def test_reason_with_tensorrt_but_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, [], [], "the NVIDIA driver reports no CUDA device")
    a = TensorRTBackend().availability()
    assert not a.available and "not installed" not in a.reason
    assert a.reason.startswith("no NVIDIA GPU found: the NVIDIA driver reports no CUDA device")


def test_reason_with_gpu_but_no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, ["tensorrt", "cuda-python"], ["NVIDIA H100"])
    a = TensorRTBackend().availability()
    assert not a.available and "GPU" not in a.reason.split(".")[0]
    assert "'tensorrt'" in a.reason and "'cuda-python'" in a.reason


def test_probe_gpus_reports_missing_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> None:
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(devices, "_driver_library", no_driver)
    probe = devices.probe_gpus()
    assert not probe.found and "libcuda.so.1" in probe.reason


def test_real_availability_is_consistent_with_this_machine() -> None:
    a = TensorRTBackend().availability()
    assert isinstance(a, Availability)
    if devices.probe_gpus().found and not devices.missing_packages():
        assert a.available
    else:
        assert not a.available and a.reason


def test_quantize_raises_with_the_reason_when_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch, ["tensorrt"], [], "the NVIDIA driver library (libcuda.so.1) is not installed")
    model, example = MODEL_SUITE["conv_bn_relu"]()
    with pytest.raises(BackendUnavailableError) as err:
        quantfx.quantize(model, backend="tensorrt", calibration_data=calibration_data(example, 2),
                         example_inputs=example, progress=False)
    msg = str(err.value)
    assert "'tensorrt' Python package is not installed" in msg and "no NVIDIA GPU found" in msg


def test_lower_with_engine_true_raises_when_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

    _fake(monkeypatch, [], [], "the NVIDIA driver reports no CUDA device")
    model, example = MODEL_SUITE["linear_relu_mlp"]()
    prepared = prepare_fx(model, None, example, backend="tensorrt")
    prepared(*example)
    ref = convert_to_reference_fx(prepared)
    with pytest.raises(BackendUnavailableError, match="no NVIDIA GPU found"):
        TensorRTBackend().lower(ref, example, engine=True)
    onnx_model = TensorRTBackend().lower(ref, example)  # engine=None: ONNX Runtime module here
    from quantfx.onnx import OnnxRuntimeModule

    assert isinstance(onnx_model, OnnxRuntimeModule)
    with torch.no_grad():
        assert torch.allclose(onnx_model(*example), ref(*example), atol=1e-2)


def test_quantize_with_engine_false_runs_in_onnxruntime_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The front door accepts the ONNX Runtime route the backend offers; without engine=False it still refuses."""
    from quantfx.onnx import OnnxRuntimeModule
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

    _fake(monkeypatch, ["tensorrt"], [], "the NVIDIA driver library (libcuda.so.1) is not installed")
    model, example = MODEL_SUITE["conv_bn_relu"]()
    calib = list(calibration_data(example, 2))
    int8 = quantfx.quantize(model, backend="tensorrt", calibration_data=calib, example_inputs=example,
                            progress=False, engine=False)
    assert isinstance(int8, OnnxRuntimeModule)
    prepared = prepare_fx(model, None, example, backend="tensorrt")
    for batch in calib:
        prepared(*batch)
    ref = convert_to_reference_fx(prepared)
    lowered = quantfx.api.lower(ref, "tensorrt", example, engine=False)
    with torch.no_grad():
        assert torch.allclose(lowered(*example), ref(*example), atol=1e-2)
    with pytest.raises(BackendUnavailableError, match="engine=False"):
        quantfx.api.lower(ref, "tensorrt", example)
