"""Errors and warnings a user meets: float fallbacks named, missing engines, saturation, bad artifacts."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import quantfx
import quantfx.api
from quantfx.errors import BackendUnavailableError, ValidationError
from quantfx.observers import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver, default_per_channel_weight_observer
from quantfx.qconfig import QConfig
from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx
from quantfx.qconfig_mapping import QConfigMapping

from quantfx_fbgemm import kernels
from quantfx_fbgemm.artifact import ArtifactError
from quantfx_fbgemm.lowering import FloatFallbackWarning, SaturationWarning


class ConvNet(nn.Module):
    def __init__(self, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode=padding_mode)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv(x)))


def _reference(model: nn.Module, qmap: QConfigMapping, backend: str = "x86"):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    prepared = prepare_fx(model.eval(), qmap, (x,), backend=backend)
    for _ in range(3):
        prepared(torch.randn(2, 3, 8, 8))
    return convert_to_reference_fx(prepared), x


def test_asymmetric_weights_stay_float_with_a_warning_naming_the_node() -> None:
    """oneDNN ignores weight zero points; an affine weight observer cannot run in int8 -> float, said so."""
    affine_w = PerChannelMinMaxObserver.with_args(dtype=torch.int8, qscheme=torch.per_channel_affine)
    qmap = (QConfigMapping().set_global(QConfig(HistogramObserver.with_args(reduce_range=True), default_per_channel_weight_observer))
            .set_module_name("conv", QConfig(HistogramObserver.with_args(reduce_range=True), affine_w)))
    torch.manual_seed(1)
    ref, x = _reference(ConvNet(), qmap)
    with pytest.warns(FloatFallbackWarning, match=r"conv \(.*asymmetric weight"):
        low = quantfx.api.lower(ref, "x86", (x,))
    assert low.quantfx_float_ops == ["conv"]
    assert torch.equal(low(x), ref(x)) or (low(x) - ref(x)).abs().max() < 1e-4  # head still int8, same numbers
    assert any(isinstance(m, kernels.PackedConv) for m in low.modules())  # the head conv was lowered


def test_reflect_padding_stays_float_with_reason() -> None:
    torch.manual_seed(2)
    ref, x = _reference(ConvNet("reflect"), quantfx.api.get_default_qconfig_mapping("x86"))
    with pytest.warns(FloatFallbackWarning, match="padding_mode='reflect'"):
        low = quantfx.api.lower(ref, "x86", (x,))
    assert "conv" in low.quantfx_float_ops


def test_cpu_without_avx2_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTFX_CPU_ISA", "default")  # what a pre-AVX2 CPU reports
    info = {b.name: b for b in quantfx.backends()}
    assert not info["x86"].available and "AVX2" in info["x86"].reason
    model = ConvNet().eval()
    with pytest.raises(BackendUnavailableError, match="Backend 'x86' is installed but cannot run here.*AVX2"):
        quantfx.quantize(model, backend="x86", calibration_data=[torch.randn(1, 3, 8, 8)],
                         example_inputs=(torch.randn(1, 3, 8, 8),), progress=False)


def test_non_x86_machine_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    availability = quantfx.api.get_backend("fbgemm").availability()
    assert not availability.available and "aarch64" in availability.reason and "qnnpack" in availability.reason


def test_bad_isa_override_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTFX_CPU_ISA", "avx9000")
    availability = quantfx.api.get_backend("x86").availability()
    assert not availability.available and "avx9000" in availability.reason


def test_availability_says_which_isa_and_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTFX_CPU_ISA", "avx2")
    details = quantfx.api.get_backend("x86").availability().details
    assert details["isa"] == "avx2" and details["vnni"] is False and details["reduce_range"] is True
    monkeypatch.setenv("QUANTFX_CPU_ISA", "avx512_vnni")
    details = quantfx.api.get_backend("x86").availability().details
    assert details["vnni"] is True and details["reduce_range"] is False
    assert quantfx.api.get_backend("fbgemm").availability().details["reduce_range"] is True


def test_x86_defaults_follow_the_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTFX_CPU_ISA", "avx2")
    assert quantfx.api.get_default_qconfig_mapping("x86").global_qconfig.activation().quant_max == 127
    monkeypatch.setenv("QUANTFX_CPU_ISA", "amx_int8")
    assert quantfx.api.get_default_qconfig_mapping("x86").global_qconfig.activation().quant_max == 255


def test_full_range_activations_on_a_cpu_without_vnni_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    full = QConfig(MinMaxObserver.with_args(dtype=torch.uint8), default_per_channel_weight_observer)
    ref, x = _reference(ConvNet(), QConfigMapping().set_global(full))
    monkeypatch.setenv("QUANTFX_CPU_ISA", "avx2")
    with pytest.warns(SaturationWarning, match="conv.*saturate"):
        quantfx.api.lower(ref, "x86", (x,))
    monkeypatch.setenv("QUANTFX_CPU_ISA", "avx512_vnni")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SaturationWarning)
        quantfx.api.lower(ref, "x86", (x,))


def test_unknown_lowering_option() -> None:
    ref, x = _reference(ConvNet(), quantfx.api.get_default_qconfig_mapping("x86"))
    with pytest.raises(ValidationError, match="unknown option.*fuse_resdiual"):
        quantfx.api.lower(ref, "x86", (x,), fuse_resdiual=False)


def _saved(tmp_path):
    ref, x = _reference(ConvNet(), quantfx.api.get_default_qconfig_mapping("x86"))
    low = quantfx.api.lower(ref, "x86", (x,))
    path = tmp_path / "model.safetensors"
    quantfx.api.get_backend("x86").save(low, path)
    return low, x, path


def test_artifact_is_plain_safetensors_with_integer_tensors(tmp_path) -> None:
    from safetensors import safe_open

    low, x, path = _saved(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert f.metadata()["format"] == "quantfx-fbgemm/2"
    assert torch.int8 in dtypes and not dtypes & {torch.quint8, torch.qint8, torch.qint32}
    loaded = quantfx.api.get_backend("fbgemm").load(path)
    assert torch.equal(loaded(x), low(x))


def test_artifact_refuses_names_outside_the_allow_list(tmp_path) -> None:
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    _, _, path = _saved(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    graph = json.loads(meta["quantfx.graph"])
    for node in graph["graph"]:
        if node["op"] == "call_function":
            node["target"] = "os.system"
            break
    meta["quantfx.graph"] = json.dumps(graph)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata=meta)
    with pytest.raises(ArtifactError, match="os.system.*allow-list"):
        quantfx.api.get_backend("x86").load(bad)


def test_loading_something_else_is_a_clear_error(tmp_path) -> None:
    from safetensors.torch import save_file

    other = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ArtifactError, match="not a quantfx fbgemm/x86 artifact"):
        quantfx.api.get_backend("x86").load(other)


def test_loading_the_old_format_names_the_expected_one(tmp_path) -> None:
    from safetensors.torch import save_file

    old = tmp_path / "old.safetensors"
    save_file({"w": torch.zeros(2)}, str(old), metadata={"format": "quantfx-fbgemm/1", "quantfx.graph": "{}"})
    with pytest.raises(ArtifactError, match=r"format 'quantfx-fbgemm/1', expected 'quantfx-fbgemm/2'.*re-save"):
        quantfx.api.get_backend("x86").load(old)


def test_saving_a_custom_float_module_names_it(tmp_path) -> None:
    class Custom(nn.Module):
        def forward(self, x):
            return x * 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.custom = Custom()

        def forward(self, x):
            return self.custom(self.conv(x))

    qmap = quantfx.api.get_default_qconfig_mapping("x86")
    from quantfx.fx.custom_config import PrepareCustomConfig

    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 4)
    prepared = prepare_fx(Net().eval(), qmap, (x,), backend="x86",
                          prepare_custom_config=PrepareCustomConfig().set_non_traceable_module_classes([Custom]))
    prepared(x)
    low = quantfx.api.lower(convert_to_reference_fx(prepared), "x86", (x,))
    with pytest.raises(ValidationError, match="custom"):
        quantfx.api.get_backend("x86").save(low, tmp_path / "m.safetensors")
