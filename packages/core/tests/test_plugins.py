"""The plugin system: entry-point loading, failures, in-process plugins, every hook."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

import quantfx.plugins
from quantfx.errors import PluginLoadError, UnknownBackendError, ValidationError
from quantfx.plugins import (
    Availability,
    Backend,
    QuantfxPluginManager,
    hookimpl,
)
from quantfx.plugins import manager as manager_module


# ----------------------------------------------------------------------------- helpers

GOOD_PLUGIN = """
from quantfx.plugins import hookimpl
from quantfx.reference_backend import ReferenceBackend

class GoodBackend(ReferenceBackend):
    name = {backend!r}

@hookimpl
def quantfx_register_backends(register):
    register(GoodBackend())
"""


def install_distribution(
    site: Path,
    monkeypatch: pytest.MonkeyPatch,
    dist_name: str,
    entry_points: dict[str, str],
    modules: dict[str, str],
    version: str = "1.0.0",
) -> None:
    """Write a real installed distribution (dist-info + modules) and put it on sys.path."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    lines = ["[quantfx.backends]", *(f"{k} = {v}" for k, v in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(site))


@pytest.fixture
def uid(monkeypatch: pytest.MonkeyPatch):
    """A unique suffix for module names, and removal of those modules afterwards."""
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.delenv(manager_module.PLUGINS_ENV_VAR, raising=False)
    yield suffix
    for name in [m for m in sys.modules if m.endswith(suffix)]:
        del sys.modules[name]


class ToyBackend(Backend):
    name = "toy"
    description = "test backend"

    def __init__(self, name: str = "toy", availability: Availability | None = None) -> None:
        self.name = name
        self._availability = availability or Availability.ok()
        self.own_mapping = object()

    def availability(self) -> Availability:
        return self._availability

    def get_backend_config(self):
        from quantfx.backend_config import BackendConfig

        return BackendConfig(self.name)

    def get_default_qconfig_mapping(self, is_qat: bool = False):
        return self.own_mapping

    def lower(self, reference_model, example_inputs, *, lowering_rules=(), **options):
        return reference_model


class ToyPlugin:
    """In-process plugin providing backends under the given names."""

    def __init__(self, *names: str) -> None:
        self.backends = [ToyBackend(n) for n in names]

    @hookimpl
    def quantfx_register_backends(self, register):
        for backend in self.backends:
            register(backend)


@pytest.fixture
def global_pm(monkeypatch: pytest.MonkeyPatch) -> QuantfxPluginManager:
    """A fresh process-wide manager so in-process registrations don't leak between tests."""
    monkeypatch.delenv(manager_module.PLUGINS_ENV_VAR, raising=False)
    pm = QuantfxPluginManager()
    monkeypatch.setattr(quantfx.plugins, "_plugin_manager", pm)
    return pm


# ------------------------------------------------------------------ entry points


def test_reference_entry_point_is_installed_and_loads_by_name():
    eps = importlib.metadata.entry_points(group="quantfx.backends", name="reference")
    assert len(eps) == 1, "quantfx-core must declare the 'reference' entry point in pyproject.toml"
    (ep,) = eps
    assert manager_module._normalize_dist(ep.dist.metadata["Name"]) == "quantfx-core"
    module = ep.load()
    import quantfx.reference_backend as reference

    assert module is reference
    # the module really is a quantfx plugin (its hookimpl is marked for project "quantfx")
    assert hasattr(module.quantfx_register_backends, "quantfx_impl")

    pm = QuantfxPluginManager()
    info = pm.plugin_info("reference")
    assert info is not None
    assert info.source == "entry_point", "reference came from the fallback, not the entry point"
    assert info.distribution is not None and manager_module._normalize_dist(info.distribution) == "quantfx-core"
    assert "quantfx_register_backends" in info.hooks
    assert pm.load_errors() == []
    assert type(pm.get_backend("reference")).__name__ == "ReferenceBackend"


def test_builtin_reference_falls_back_without_package_metadata(monkeypatch):
    monkeypatch.setattr(manager_module.importlib.metadata, "entry_points", lambda **kw: [])
    pm = QuantfxPluginManager()
    assert list(pm.backends()) == ["reference"]
    assert pm.plugin_info("reference").source == "builtin"


def test_broken_plugins_are_named_with_cause_and_others_keep_working(tmp_path, monkeypatch, uid):
    missing, broken = f"qfx_missing_{uid}", f"qfx_broken_{uid}"
    install_distribution(
        tmp_path / "site",
        monkeypatch,
        "qfx-broken-plugins",
        {"needs_runtime": missing, "explodes": broken, "typo": f"qfx_typo_{uid}.plugin"},
        {
            missing: f"import quantfx_test_no_such_runtime_{uid}\n",
            broken: "raise RuntimeError('plugin exploded at import')\n",
        },
    )
    pm = QuantfxPluginManager()
    errors = {f.name: f for f in pm.load_errors()}
    assert set(errors) == {"needs_runtime", "explodes", "typo"}

    runtime = errors["needs_runtime"]
    assert runtime.missing_dependency
    assert runtime.distribution == "qfx-broken-plugins"
    assert f"No module named 'quantfx_test_no_such_runtime_{uid}'" in runtime.cause
    assert isinstance(runtime.error, PluginLoadError)
    assert isinstance(runtime.error.__cause__, ModuleNotFoundError)

    explodes = errors["explodes"]
    assert not explodes.missing_dependency
    assert explodes.message == (
        "Error importing plugin 'explodes' (distribution qfx-broken-plugins): "
        "RuntimeError: plugin exploded at import"
    )
    assert isinstance(explodes.error.__cause__, RuntimeError)

    # an entry point naming a module that does not exist is a broken install, not a missing runtime
    typo = errors["typo"]
    assert not typo.missing_dependency
    assert f"No module named 'qfx_typo_{uid}'" in typo.cause

    # the built-in backend is unaffected
    assert list(pm.backends()) == ["reference"]
    assert pm.get_backend("reference").availability().available
    # asking for the broken plugin's backend says why it is missing
    with pytest.raises(UnknownBackendError, match="plugin exploded at import"):
        pm.get_backend("explodes")


def test_plugin_with_bad_hook_signature_is_reported(tmp_path, monkeypatch, uid):
    bad = f"qfx_badsig_{uid}"
    source = (
        "from quantfx.plugins import hookimpl\n"
        "@hookimpl\n"
        "def quantfx_register_backends(register, not_an_argument):\n"
        "    pass\n"
    )
    install_distribution(tmp_path / "site", monkeypatch, "qfx-badsig", {"badsig": bad}, {bad: source})
    pm = QuantfxPluginManager()
    (failure,) = pm.load_errors()
    assert failure.name == "badsig"
    assert "not_an_argument" in failure.cause
    assert "reference" in pm.backends()


def test_third_party_entry_point_registers_backend_with_its_distribution(tmp_path, monkeypatch, uid):
    mod = f"qfx_good_{uid}"
    install_distribution(
        tmp_path / "site", monkeypatch, "qfx-good", {"good": mod}, {mod: GOOD_PLUGIN.format(backend="good")},
        version="1.2.3",
    )
    pm = QuantfxPluginManager()
    assert sorted(pm.backends()) == ["good", "reference"]
    assert pm.backend_plugin("good") == "good"
    info = pm.plugin_info("good")
    assert (info.distribution, info.version, info.source) == ("qfx-good", "1.2.3", "entry_point")


def test_quantfx_plugins_env_restricts_entry_points(tmp_path, monkeypatch, uid):
    mod_a, mod_b, broken = f"qfx_a_{uid}", f"qfx_b_{uid}", f"qfx_brk_{uid}"
    install_distribution(
        tmp_path / "site",
        monkeypatch,
        "qfx-several",
        {"plug_a": mod_a, "plug_b": mod_b, "plug_broken": broken},
        {
            mod_a: GOOD_PLUGIN.format(backend="back_a"),
            mod_b: GOOD_PLUGIN.format(backend="back_b"),
            broken: "raise RuntimeError('must not be imported')\n",
        },
    )
    unfiltered = QuantfxPluginManager()
    assert sorted(unfiltered.backends()) == ["back_a", "back_b", "reference"]
    assert [f.name for f in unfiltered.load_errors()] == ["plug_broken"]
    for name in (mod_a, mod_b):
        sys.modules.pop(name, None)

    monkeypatch.setenv("QUANTFX_PLUGINS", " plug_a ,")
    pm = QuantfxPluginManager()
    assert sorted(pm.backends()) == ["back_a", "reference"]  # reference is built in: always loaded
    assert pm.load_errors() == []
    assert mod_b not in sys.modules, "a plugin not listed in QUANTFX_PLUGINS was imported"
    assert set(pm.skipped_plugins()) == {"plug_b", "plug_broken"}
    with pytest.raises(UnknownBackendError, match="QUANTFX_PLUGINS"):
        pm.get_backend("plug_b")

    monkeypatch.setenv("QUANTFX_PLUGINS", "")
    assert list(QuantfxPluginManager().backends()) == ["reference"]


def test_registration_is_logged(caplog, tmp_path, monkeypatch, uid):
    mod = f"qfx_logged_{uid}"
    install_distribution(tmp_path / "site", monkeypatch, "qfx-logged", {"logged": mod},
                         {mod: GOOD_PLUGIN.format(backend="logged")})
    with caplog.at_level(logging.DEBUG, logger="quantfx.plugins"):
        QuantfxPluginManager().backends()
    assert "Registered backends from 2 plugin(s): reference (reference), logged (logged)" in caplog.text


# --------------------------------------------------------------- in process


def test_register_in_process_adds_backend_and_rejects_duplicates(global_pm):
    first = ToyPlugin("toy")
    name = quantfx.plugins.register(first, name="toy-plugin")
    assert name == "toy-plugin"
    assert quantfx.plugins.get_plugin_manager() is global_pm
    assert global_pm.backends()["toy"] is first.backends[0]
    assert global_pm.plugin_info("toy-plugin").source == "in_process"

    with pytest.raises(ValidationError, match="'toy' is registered by both plugin 'toy-plugin' and plugin 'dup'"):
        quantfx.plugins.register(ToyPlugin("other", "toy"), name="dup")
    # the rejected plugin is not kept, not even its non-conflicting backend
    assert global_pm.plugin_info("dup") is None
    assert sorted(global_pm.backends()) == ["reference", "toy"]
    assert global_pm.backends()["toy"] is first.backends[0]

    with pytest.raises(ValidationError, match="both plugin 'reference' and plugin 'shadow'"):
        quantfx.plugins.register(ToyPlugin("reference"), name="shadow")

    quantfx.plugins.unregister("toy-plugin")
    assert list(global_pm.backends()) == ["reference"]
    with pytest.raises(ValidationError, match="not a registered quantfx plugin"):
        quantfx.plugins.unregister(first)


def test_register_rejects_non_backend_and_bad_names(global_pm):
    class NotABackend:
        @hookimpl
        def quantfx_register_backends(self, register):
            register("fbgemm")

    with pytest.raises(ValidationError, match="not a quantfx.plugins.Backend"):
        quantfx.plugins.register(NotABackend())

    with pytest.raises(ValidationError, match="invalid name"):
        quantfx.plugins.register(ToyPlugin("has space"))
    assert list(global_pm.backends()) == ["reference"]


def test_plugin_whose_hook_raises_is_recorded_and_others_kept(global_pm):
    class Crashing:
        @hookimpl
        def quantfx_register_backends(self, register):
            register(ToyBackend("half"))
            raise KeyError("config missing")

    with pytest.raises(PluginLoadError, match="crashing.*KeyError"):
        quantfx.plugins.register(Crashing(), name="crashing")
    assert list(global_pm.backends()) == ["reference"]


def test_unknown_hook_name_is_warned(global_pm, caplog):
    class Typo:
        @hookimpl
        def quantfx_register_backend(self, register):  # missing "s"
            pass

    with caplog.at_level(logging.WARNING, logger="quantfx.plugins"):
        quantfx.plugins.register(Typo(), name="typo")
    assert "'quantfx_register_backend', which is not a quantfx hook" in caplog.text


def test_register_plugin_with_invalid_hook_signature(global_pm):
    class Bad:
        @hookimpl
        def quantfx_register_lowering_rules(self, backend, register):
            pass

    with pytest.raises(ValidationError, match="invalid hook implementation"):
        quantfx.plugins.register(Bad(), name="bad")


def test_load_errors_of_global_manager(global_pm):
    assert quantfx.plugins.load_errors() == []


# ------------------------------------------------------------------ hooks


class ThirdPartyOp(torch.nn.Module):
    def forward(self, x):
        return x


class ExtendsReference:
    def __init__(self):
        self.calls: list[str] = []

    @hookimpl
    def quantfx_extend_backend_config(self, backend_name, backend_config):
        from quantfx.backend_config import BackendPatternConfig

        self.calls.append(backend_name)
        if backend_name == "reference":
            backend_config.set_backend_pattern_config(BackendPatternConfig(ThirdPartyOp))


def test_extend_backend_config_adds_pattern_only_where_registered():
    extended = QuantfxPluginManager()
    plugin = ExtendsReference()
    extended.register(plugin, name="extender")
    extended.register(ToyPlugin("toy"), name="toy-plugin")

    config = extended.backend_config("reference")
    assert config.get_pattern_config(ThirdPartyOp) is not None
    assert extended.backend_config("toy").get_pattern_config(ThirdPartyOp) is None
    assert plugin.calls == ["reference", "toy"]

    # each request is a fresh copy: the backend's own config is untouched
    backend = extended.get_backend("reference")
    assert backend.get_backend_config().get_pattern_config(ThirdPartyOp) is None
    assert extended.backend_config("reference") is not config
    n_patterns = len(config.configs)
    assert len(extended.backend_config("reference").configs) == n_patterns

    # another manager without the plugin sees the plain config
    plain = QuantfxPluginManager()
    plain_config = plain.backend_config("reference")
    assert plain_config.get_pattern_config(ThirdPartyOp) is None
    assert len(plain_config.configs) == n_patterns - 1


def test_extension_hook_error_names_the_plugin():
    class Broken:
        @hookimpl
        def quantfx_extend_backend_config(self, backend_name, backend_config):
            raise RuntimeError("bad pattern")

    pm = QuantfxPluginManager(load_entry_points=False)
    pm.register(ToyPlugin("toy"), name="toys")
    pm.register(Broken(), name="broken-extender")
    with pytest.raises(RuntimeError, match="bad pattern") as info:
        pm.backend_config("toy")
    assert "broken-extender" in "\n".join(getattr(info.value, "__notes__", []))


def test_lowering_rules_are_collected_per_backend():
    rule = ("pattern", lambda gm: gm)

    class Rules:
        @hookimpl
        def quantfx_register_lowering_rules(self, backend_name, register):
            if backend_name == "toy":
                register(rule)

    pm = QuantfxPluginManager(load_entry_points=False)
    pm.register(ToyPlugin("toy"), name="toys")
    assert pm.lowering_rules("toy") == ()
    pm.register(Rules(), name="rules")
    assert pm.lowering_rules("toy") == (rule,)
    assert pm.lowering_rules("reference") == ()
    with pytest.raises(UnknownBackendError):
        pm.lowering_rules("nope")


def test_default_qconfig_mapping_override_hook():
    override = object()

    class Override:
        @hookimpl
        def quantfx_default_qconfig_mapping(self, backend_name, is_qat):
            return override if backend_name == "toy" and not is_qat else None

    pm = QuantfxPluginManager(load_entry_points=False)
    toys = ToyPlugin("toy")
    pm.register(toys, name="toys")
    assert pm.default_qconfig_mapping("toy") is toys.backends[0].own_mapping
    pm.register(Override(), name="override")
    assert pm.default_qconfig_mapping("toy", is_qat=False) is override
    assert pm.default_qconfig_mapping("toy", is_qat=True) is toys.backends[0].own_mapping


def test_load_entry_points_false_still_has_reference():
    pm = QuantfxPluginManager(load_entry_points=False)
    assert list(pm.backends()) == ["reference"]
    assert pm.plugin_info("reference").source == "builtin"


# ----------------------------------------------------------------- Backend API


def test_availability_requires_reason_when_unavailable():
    with pytest.raises(ValidationError, match="needs a reason"):
        Availability(False)
    na = Availability.unavailable("TensorRT needs an NVIDIA GPU; none found", gpus=0)
    assert not na.available and na.reason.startswith("TensorRT") and na.details == {"gpus": 0}
    assert Availability.ok().available


def test_backend_defaults_raise_clear_not_implemented():
    backend = ToyBackend("toy")
    with pytest.raises(NotImplementedError, match="Backend 'toy' provides no PT2E Quantizer"):
        backend.get_quantizer()
    with pytest.raises(NotImplementedError, match="Backend 'toy' cannot save"):
        backend.save(torch.nn.Identity(), "x.pt")
    with pytest.raises(NotImplementedError, match="Backend 'toy' cannot load"):
        backend.load("x.pt")
    with pytest.raises(TypeError):
        Backend()  # abstract: a backend must define config, defaults and lowering


def test_unknown_backend_message_lists_installed_and_pip_name():
    pm = QuantfxPluginManager(load_entry_points=False)
    pm.register(ToyPlugin("qnnpack", "fbgemm"), name="toys")
    with pytest.raises(UnknownBackendError) as info:
        pm.get_backend("tensorrt")
    assert str(info.value) == (
        "Unknown backend 'tensorrt'. Installed: fbgemm, qnnpack, reference. "
        "Install it with: pip install quantfx-backend-tensorrt"
    )
    with pytest.raises(UnknownBackendError, match="Did you mean 'qnnpack'"):
        pm.get_backend("qnnpak")


# ----------------------------------------------------------------- reference backend


def test_reference_default_mappings_use_full_uint8_and_per_channel_int8():
    from quantfx.reference_backend import ReferenceBackend
    from quantfx.fake_quantize import FakeQuantize

    ptq = ReferenceBackend().get_default_qconfig_mapping(is_qat=False).global_qconfig
    act, weight = ptq.activation(), ptq.weight()
    assert (act.dtype, act.qscheme, act.quant_min, act.quant_max) == (
        torch.uint8, torch.per_tensor_affine, 0, 255
    )
    assert (weight.dtype, weight.qscheme, weight.quant_min, weight.quant_max) == (
        torch.int8, torch.per_channel_symmetric, -128, 127
    )

    qat = ReferenceBackend().get_default_qconfig_mapping(is_qat=True).global_qconfig
    act, weight = qat.activation(), qat.weight()
    assert isinstance(act, FakeQuantize) and isinstance(weight, FakeQuantize)
    assert (act.dtype, act.quant_min, act.quant_max) == (torch.uint8, 0, 255)
    assert (weight.dtype, weight.qscheme) == (torch.int8, torch.per_channel_symmetric)


def test_reference_save_and_load_point_to_native_backends():
    from quantfx.reference_backend import ReferenceBackend

    with pytest.raises(NotImplementedError, match="pip install quantfx-backend-fbgemm"):
        ReferenceBackend().save(torch.nn.Identity(), "model.pt")
    with pytest.raises(NotImplementedError, match="nothing to load"):
        ReferenceBackend().load("model.pt")
