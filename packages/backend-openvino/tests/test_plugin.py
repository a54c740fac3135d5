"""The backend as installed: entry point, availability, defaults, one-call quantize, save / load."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest
import quantfx
import torch
from quantfx import api
from quantfx.errors import ValidationError
from quantfx.testing.metrics import sqnr
from quantfx.testing.models import calibration_data, linear_relu_mlp
from quantfx_openvino import OpenVINOBackend, OpenVINOModule


def test_entry_point_loads_the_plugin() -> None:
    eps = [ep for ep in importlib.metadata.entry_points(group="quantfx.backends") if ep.name == "openvino"]
    assert len(eps) == 1, "pyproject.toml must declare exactly one 'openvino' entry point"
    module = eps[0].load()
    assert hasattr(module, "quantfx_register_backends")
    assert isinstance(api.get_backend("openvino"), OpenVINOBackend)


def test_availability_lists_devices() -> None:
    row = next(b for b in quantfx.backends() if b.name == "openvino")
    assert row.available and row.distribution == "quantfx-backend-openvino"
    availability = api.get_backend("openvino").availability()
    assert "CPU" in availability.details["devices"]
    assert availability.details["device_names"]["CPU"]
    assert isinstance(availability.details["cpu_overflow_fix"], bool)


def _weight_range(mapping: Any) -> tuple[int, int]:
    obs = mapping.global_qconfig.weight()
    return obs.quant_min, obs.quant_max


def test_overflow_fix_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = api.get_backend("openvino")
    monkeypatch.setenv("QUANTFX_OPENVINO_CPU_FLAGS", "sse4_2 avx2 fma")
    assert _weight_range(backend.get_default_qconfig_mapping()) == (-63, 63)
    monkeypatch.setenv("QUANTFX_OPENVINO_CPU_FLAGS", "avx2 avx512f avx512_vnni")
    assert _weight_range(backend.get_default_qconfig_mapping()) == (-127, 127)
    assert _weight_range(backend.get_default_qconfig_mapping(overflow_fix=True)) == (-63, 63)


def test_presets_and_float_ops() -> None:
    backend = api.get_backend("openvino")
    perf = backend.get_default_qconfig_mapping()
    mixed = backend.get_default_qconfig_mapping(preset="mixed")
    assert perf.global_qconfig.activation().qscheme == torch.per_tensor_symmetric
    assert mixed.global_qconfig.activation().qscheme == torch.per_tensor_affine
    assert perf.global_qconfig.weight().qscheme == torch.per_channel_symmetric
    assert perf.object_type_qconfigs[torch.nn.LayerNorm] is None
    assert perf.object_type_qconfigs[torch.nn.Softmax] is None
    with pytest.raises(ValidationError, match="unknown OpenVINO preset 'fast'"):
        backend.get_default_qconfig_mapping(preset="fast")
    qat = backend.get_default_qconfig_mapping(is_qat=True)
    assert type(qat.global_qconfig.activation()).__name__ == "FakeQuantize"


def test_backend_config_leaves_float_ops_out() -> None:
    config = api.get_backend_config("openvino")
    patterns = {c.pattern for c in config.configs}
    assert torch.nn.Conv2d in patterns and torch.nn.Linear in patterns and torch.matmul in patterns
    assert torch.nn.LayerNorm not in patterns and torch.nn.Softmax not in patterns
    assert torch.nn.ConstantPad1d not in patterns and torch.nn.ZeroPad1d in patterns


def test_quantize_in_one_call_with_runtime_options(tmp_path: Any) -> None:
    model, example_inputs = linear_relu_mlp()
    int8 = quantfx.quantize(
        model, backend="openvino", calibration_data=list(calibration_data(example_inputs, n=4)),
        example_inputs=example_inputs, progress=False, config={"INFERENCE_NUM_THREADS": 1},
    )
    assert isinstance(int8, OpenVINOModule)
    assert int8.compiled_model.get_property("INFERENCE_NUM_THREADS") == 1
    with torch.no_grad():
        assert sqnr(model(*example_inputs), int8(*example_inputs)) > 25
    assert len(int8.int8_layers()) == 3


def test_save_load_ir_roundtrip(conv_lowered: Any, tmp_path: Any) -> None:
    backend = api.get_backend("openvino")
    x = torch.randn(3, 3, 16, 16)
    want = conv_lowered(x)
    for target in (tmp_path / "m.xml", tmp_path / "folder"):
        backend.save(conv_lowered, target)
        xml = target if target.suffix == ".xml" else target / "model.xml"
        assert xml.is_file() and xml.with_suffix(".bin").is_file()
        loaded = backend.load(target)
        assert isinstance(loaded, OpenVINOModule) and loaded.device == "CPU"
        assert torch.equal(loaded(x), want)
        assert loaded.int8_layers(), "the reloaded IR must still run int8"
    # the IR is plain OpenVINO: OpenVINO itself reads it
    import openvino as ov

    assert ov.Core().read_model(str(tmp_path / "m.xml")).get_rt_info(["quantfx", "device"]).astype(str) == "CPU"


def test_save_load_errors(tmp_path: Any) -> None:
    backend = api.get_backend("openvino")
    with pytest.raises(ValidationError, match="expects the OpenVINOModule"):
        backend.save(torch.nn.Linear(2, 2), tmp_path / "x.xml")
    with pytest.raises(FileNotFoundError, match="expected an OpenVINO IR"):
        backend.load(tmp_path / "missing.xml")


def test_wrong_number_of_inputs(conv_lowered: Any) -> None:
    with pytest.raises(ValidationError, match="takes 1 positional tensor input"):
        conv_lowered(torch.randn(1, 3, 16, 16), torch.randn(1))


def test_lowered_module_cannot_be_pickled(conv_lowered: Any) -> None:
    import pickle

    with pytest.raises(TypeError, match="save it with"):
        pickle.dumps(conv_lowered)
