"""The installed entry point provides both backends, with the x86 patterns and defaults."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

import quantfx
import quantfx.api
from quantfx.observers import HistogramObserver, PerChannelMinMaxObserver, PlaceholderObserver


def test_entry_point_registers_x86_and_fbgemm() -> None:
    rows = {b.name: b for b in quantfx.backends()}
    for name in ("x86", "fbgemm"):
        assert rows[name].distribution == "quantfx-backend-fbgemm", rows[name]
        assert rows[name].plugin == "fbgemm"  # one entry point module, two backends
        assert rows[name].available, rows[name].reason


@pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"}, reason="x86 only")
def test_x86_is_the_default_backend_here() -> None:
    assert quantfx.api.default_backend() == "x86"


@pytest.mark.parametrize("backend", ["x86", "fbgemm"])
def test_default_qconfigs_reproduce_torch_ao(backend: str) -> None:
    qmap = quantfx.api.get_default_qconfig_mapping(backend)
    act, weight = qmap.global_qconfig.activation(), qmap.global_qconfig.weight()
    assert isinstance(act, HistogramObserver) and act.dtype in (torch.uint8, torch.quint8)
    assert isinstance(weight, PerChannelMinMaxObserver)
    assert weight.qscheme == torch.per_channel_symmetric and weight.dtype in (torch.int8, torch.qint8)
    qat = quantfx.api.get_default_qat_qconfig_mapping(backend).global_qconfig
    assert type(qat.activation()).__name__ == "FusedMovingAvgObsFakeQuantize"
    assert qat.activation().quant_max == act.quant_max  # same range in PTQ and QAT


def test_backend_config_covers_torch_aos_x86_patterns() -> None:
    config = quantfx.api.get_backend_config("x86")
    patterns = set(config.configs_by_pattern) if hasattr(config, "configs_by_pattern") else {
        c.pattern for c in config.configs
    }
    for p in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, torch.cat, torch.matmul, nn.MaxPool2d,
              nn.Hardswish, nn.ELU, nn.LeakyReLU, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm2d, nn.BatchNorm2d,
              nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Softmax, nn.Embedding, nn.EmbeddingBag, "reshape"):
        assert p in patterns, p
    linear = next(c for c in config.configs if c.pattern is nn.Linear)
    dynamic = [dc for dc in linear.dtype_configs if dc.is_dynamic]
    assert {dc.weight_dtype for dc in dynamic} == {torch.int8, torch.float16}


def test_dynamic_mapping_uses_the_kernels_range() -> None:
    from quantfx_fbgemm import kernels
    from quantfx_fbgemm.qconfig import get_dynamic_qconfig_mapping

    obs = get_dynamic_qconfig_mapping("x86").object_type_qconfigs[nn.Linear].activation()
    assert isinstance(obs, PlaceholderObserver) and obs.is_dynamic
    assert obs.quant_max == (127 if kernels.needs_reduce_range() else 255)
