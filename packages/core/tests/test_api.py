"""quantfx.api: backend lookup and listing, defaults, calibrate, lower, quantize end to end."""

from __future__ import annotations

import copy
import sys
import uuid

import pytest
import torch
import torch.nn as nn

import quantfx.plugins
from quantfx import api
from quantfx.errors import (
    BackendUnavailableError,
    CalibrationError,
    LoweringError,
    UnknownBackendError,
    ValidationError,
)
from quantfx.plugins import Availability, Backend, QuantfxPluginManager, hookimpl


class ToyBackend(Backend):
    description = "test backend"

    def __init__(self, name: str, availability: Availability | None = None) -> None:
        self.name = name
        self._availability = availability or Availability.ok()
        self.lowered_with: list[tuple] = []

    def availability(self) -> Availability:
        return self._availability

    def get_backend_config(self):
        from quantfx.backend_config import BackendConfig

        return BackendConfig(self.name)

    def get_default_qconfig_mapping(self, is_qat: bool = False):
        return ("mapping", self.name, is_qat)

    def lower(self, reference_model, example_inputs, *, lowering_rules=(), **options):
        self.lowered_with.append((reference_model, example_inputs, tuple(lowering_rules), options))
        if options.get("explode"):
            raise KeyError("no kernel for aten.foo")
        return reference_model


class ToyPlugin:
    def __init__(self, *backends: Backend) -> None:
        self.backends = backends

    @hookimpl
    def quantfx_register_backends(self, register):
        for backend in self.backends:
            register(backend)


@pytest.fixture
def pm(monkeypatch: pytest.MonkeyPatch) -> QuantfxPluginManager:
    """A fresh process-wide plugin manager for this test."""
    monkeypatch.delenv("QUANTFX_PLUGINS", raising=False)
    manager = QuantfxPluginManager()
    monkeypatch.setattr(quantfx.plugins, "_plugin_manager", manager)
    return manager


NO_GPU = "TensorRT needs an NVIDIA GPU; none found"


# ----------------------------------------------------------------- lookup


def test_get_backend_unknown_lists_installed_and_pip_name(pm):
    quantfx.plugins.register(ToyPlugin(ToyBackend("fbgemm"), ToyBackend("qnnpack")), name="toys")
    with pytest.raises(UnknownBackendError) as info:
        api.get_backend("tensorrt")
    message = str(info.value)
    assert message.startswith("Unknown backend 'tensorrt'. Installed: fbgemm, qnnpack, reference.")
    assert message.endswith("Install it with: pip install quantfx-backend-tensorrt")
    assert api.get_backend("fbgemm").name == "fbgemm"


def test_backends_lists_availability_and_failed_plugins(pm, tmp_path, monkeypatch):
    suffix = uuid.uuid4().hex[:8]
    site = tmp_path / "site"
    info = site / "quantfx_backend_tensorrt-0.3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: quantfx-backend-tensorrt\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(f"[quantfx.backends]\ntensorrt = qfx_trt_{suffix}\n")
    (site / f"qfx_trt_{suffix}.py").write_text(f"import tensorrt_missing_{suffix}\n")
    monkeypatch.syspath_prepend(str(site))
    quantfx.plugins.register(
        ToyPlugin(ToyBackend("gpu_only", Availability.unavailable(NO_GPU))), name="toys"
    )

    rows = {row.name: row for row in api.backends()}
    assert set(rows) == {"reference", "gpu_only", "tensorrt"}
    ref = rows["reference"]
    assert (ref.available, ref.reason, ref.plugin, ref.load_error) == (True, None, "reference", False)
    assert ref.distribution.replace("_", "-").lower() == "quantfx-core"
    assert (rows["gpu_only"].available, rows["gpu_only"].reason) == (False, NO_GPU)
    trt = rows["tensorrt"]
    assert trt.load_error and not trt.available
    assert (trt.distribution, trt.version) == ("quantfx-backend-tensorrt", "0.3.0")
    assert f"No module named 'tensorrt_missing_{suffix}'" in trt.reason

    # the failed plugin is named with its cause when asked for by name
    with pytest.raises(UnknownBackendError) as err:
        api.get_backend("tensorrt")
    assert "Error importing plugin 'tensorrt' (distribution quantfx-backend-tensorrt)" in str(err.value)
    assert f"tensorrt_missing_{suffix}" in str(err.value)
    sys.modules.pop(f"qfx_trt_{suffix}", None)


def test_crashing_availability_probe_is_reported_not_raised(pm):
    class Crashy(ToyBackend):
        def availability(self):
            raise OSError("libcuda.so: cannot open shared object file")

    quantfx.plugins.register(ToyPlugin(Crashy("crashy")), name="toys")
    row = next(r for r in api.backends() if r.name == "crashy")
    assert not row.available
    assert "availability check failed: OSError: libcuda.so" in row.reason


@pytest.mark.parametrize(
    ("machine", "installed", "expected"),
    [
        ("x86_64", [("fbgemm", True)], "fbgemm"),
        ("x86_64", [("fbgemm", True), ("x86", True)], "x86"),
        ("AMD64", [("fbgemm", True), ("x86", False)], "fbgemm"),
        ("x86_64", [("fbgemm", False), ("qnnpack", True)], "reference"),
        ("aarch64", [("fbgemm", True), ("qnnpack", True)], "qnnpack"),
        ("arm64", [("qnnpack", False)], "reference"),
        ("riscv64", [("fbgemm", True), ("qnnpack", True)], "reference"),
    ],
)
def test_default_backend_prefers_native_available_backend(pm, monkeypatch, machine, installed, expected):
    monkeypatch.setattr(api.platform, "machine", lambda: machine)
    backends = [ToyBackend(n, None if ok else Availability.unavailable("not here")) for n, ok in installed]
    quantfx.plugins.register(ToyPlugin(*backends), name="toys")
    assert api.default_backend() == expected


def test_defaults_go_through_plugin_hooks(pm):
    class Override:
        @hookimpl
        def quantfx_default_qconfig_mapping(self, backend_name, is_qat):
            return "qat-override" if is_qat and backend_name == "toy" else None

    quantfx.plugins.register(ToyPlugin(ToyBackend("toy")), name="toys")
    assert api.get_default_qconfig_mapping("toy") == ("mapping", "toy", False)
    assert api.get_default_qat_qconfig_mapping("toy") == ("mapping", "toy", True)
    quantfx.plugins.register(Override(), name="override")
    assert api.get_default_qat_qconfig_mapping("toy") == "qat-override"
    assert api.get_backend_config("toy").name == "toy"


# ----------------------------------------------------------------- lower


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x).relu()


def test_lower_checks_availability_first(pm):
    gpu = ToyBackend("gpu_only", Availability.unavailable(NO_GPU))
    quantfx.plugins.register(ToyPlugin(gpu), name="toys")
    gm = torch.fx.symbolic_trace(Tiny())
    with pytest.raises(BackendUnavailableError, match=f"'gpu_only' is installed but cannot run here: {NO_GPU}"):
        api.lower(gm, "gpu_only", (torch.randn(1, 4),))
    assert gpu.lowered_with == []


def test_lower_passes_rules_and_options_and_wraps_failures(pm):
    toy = ToyBackend("toy")
    rule = object()

    class Rules:
        @hookimpl
        def quantfx_register_lowering_rules(self, backend_name, register):
            register(rule)

    quantfx.plugins.register(ToyPlugin(toy), name="toys")
    quantfx.plugins.register(Rules(), name="rules")
    gm = torch.fx.symbolic_trace(Tiny())
    x = torch.randn(1, 4)
    assert api.lower(gm, "toy", x, fast=True) is gm
    assert toy.lowered_with[-1][1:] == ((x,), (rule,), {"fast": True})
    with pytest.raises(LoweringError, match="Backend 'toy' failed to lower .*KeyError"):
        api.lower(gm, "toy", (x,), explode=True)


def test_reference_lowering_applies_rules_to_a_copy(pm):
    calls = []

    def rename_relu(gm):
        calls.append(gm)
        for node in gm.graph.nodes:
            if node.op == "call_method" and node.target == "relu":
                node.target = "sigmoid"
        return None

    class Rules:
        @hookimpl
        def quantfx_register_lowering_rules(self, backend_name, register):
            if backend_name == "reference":
                register(rename_relu)

    gm = torch.fx.symbolic_trace(Tiny())
    x = torch.randn(2, 4)
    assert api.lower(gm, "reference", (x,)) is gm  # no rules: the reference model itself
    quantfx.plugins.register(Rules(), name="rules")
    lowered = api.lower(gm, "reference", (x,))
    assert calls and calls[0] is not gm
    torch.testing.assert_close(lowered(x), torch.sigmoid(gm.linear(x)))
    torch.testing.assert_close(gm(x), torch.relu(gm.linear(x)))  # the input is untouched
    with pytest.raises(ValidationError, match="takes no lowering options"):
        api.lower(gm, "reference", (x,), optimize=True)


# ----------------------------------------------------------------- calibrate


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def forward(self, x, y=None, *, scale=1.0):
        self.calls.append((x.shape, None if y is None else y.shape, scale, torch.is_grad_enabled()))
        return x * scale


def test_calibrate_unpacks_items_without_grad():
    rec = Recorder()
    data = [
        torch.randn(2, 3),
        (torch.randn(1, 3), torch.randn(5)),
        {"x": torch.randn(4, 3), "scale": 2.0},
    ]
    assert api.calibrate(rec, data, progress=False) == 3
    assert rec.calls == [
        (torch.Size([2, 3]), None, 1.0, False),
        (torch.Size([1, 3]), torch.Size([5]), 1.0, False),
        (torch.Size([4, 3]), None, 2.0, False),
    ]
    assert torch.is_grad_enabled()


def test_calibrate_progress_bar_total(capsys):
    rec = Recorder()
    api.calibrate(rec, [torch.randn(1)] * 3, progress=True)
    assert "3/3" in capsys.readouterr().err
    api.calibrate(rec, (torch.randn(1) for _ in range(2)), progress=False)  # no len(): still works
    assert capsys.readouterr().err == ""
    assert len(rec.calls) == 5


def test_calibrate_errors_say_which_batch_and_why():
    with pytest.raises(CalibrationError, match="yielded no batches"):
        api.calibrate(Recorder(), [], progress=False)
    data = [torch.randn(1, 3), (torch.randn(1, 3), torch.randn(1), torch.randn(1))]
    with pytest.raises(CalibrationError, match=r"batch 1 failed.*3 positional.*drop labels"):
        api.calibrate(Recorder(), data, progress=False)


# ----------------------------------------------------------------- quantize


def test_quantize_refuses_unavailable_backend_before_touching_data(pm):
    quantfx.plugins.register(
        ToyPlugin(ToyBackend("gpu_only", Availability.unavailable(NO_GPU))), name="toys"
    )
    consumed = []

    def data():
        consumed.append(1)
        yield torch.randn(1, 4)

    with pytest.raises(BackendUnavailableError, match=NO_GPU):
        api.quantize(Tiny(), "gpu_only", calibration_data=data(), example_inputs=(torch.randn(1, 4),))
    assert consumed == []
    with pytest.raises(UnknownBackendError, match="pip install quantfx-backend-openvino"):
        api.quantize(Tiny(), "openvino", calibration_data=[], example_inputs=(torch.randn(1, 4),))


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        x = self.relu(self.bn(self.conv1(x)))
        x = self.conv2(x)
        return self.fc(torch.flatten(x, 1))


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


def test_quantize_end_to_end_reference_leaves_model_untouched(pm):
    torch.manual_seed(0)
    model = SmallConvNet()  # training mode on purpose: quantize must not flip it or update BN stats
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(model.state_dict())
    modules_before = [name for name, _ in model.named_modules()]
    example = (torch.randn(1, 3, 8, 8),)
    calibration = [torch.randn(2, 3, 8, 8) for _ in range(8)]

    quantized = api.quantize(
        model, "reference", calibration_data=calibration, example_inputs=example, progress=False
    )

    # the user's model: same mode, same modules, same weights and BN statistics
    assert model.training
    assert [name for name, _ in model.named_modules()] == modules_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key

    # the result is the reference IR: quantize / dequantize ops around float compute
    targets = {str(n.target) for n in quantized.graph.nodes if n.op == "call_function"}
    assert any("quantfx.quantize_per_tensor" in t for t in targets), targets
    assert any("quantfx.dequantize_per_tensor" in t for t in targets), targets

    model.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected, got = model(x), quantized(x)
    assert got.shape == expected.shape
    assert _sqnr(expected, got) > 20.0


def test_quantize_uses_extended_backend_config_and_forwards_lower_options(pm):
    seen = []

    class Extender:
        @hookimpl
        def quantfx_extend_backend_config(self, backend_name, backend_config):
            seen.append(backend_name)

    quantfx.plugins.register(Extender(), name="extender")
    with pytest.raises(ValidationError, match="takes no lowering options"):
        api.quantize(
            Tiny().eval(), "reference", calibration_data=[torch.randn(1, 4)],
            example_inputs=(torch.randn(1, 4),), progress=False, fuse_everything=True,
        )
    assert "reference" in seen
