"""quantfx: maintained FX graph mode and PT2E quantization for PyTorch, with pluggable backends.

>>> import quantfx
>>> from quantfx.quantize_fx import prepare_fx, convert_fx
>>> qmap = quantfx.get_default_qconfig_mapping("fbgemm")
>>> int8_model = quantfx.quantize(float_model, backend="fbgemm",
...                               calibration_data=loader, example_inputs=(x,))

Public names are imported lazily (PEP 562), so ``import quantfx`` stays cheap
and a broken optional piece never breaks the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    # one-call API and backends
    "quantize": "quantfx.api",
    "calibrate": "quantfx.api",
    "lower": "quantfx.api",
    "backends": "quantfx.api",
    "get_backend": "quantfx.api",
    "default_backend": "quantfx.api",
    "get_backend_config": "quantfx.api",
    "get_default_qconfig_mapping": "quantfx.api",
    "get_default_qat_qconfig_mapping": "quantfx.api",
    # configs
    "QConfig": "quantfx.qconfig",
    "QConfigAny": "quantfx.qconfig",
    "QConfigMapping": "quantfx.qconfig_mapping",
    "build_default_qconfig_mapping": "quantfx.qconfig_mapping",
    "qconfig_equals": "quantfx.qconfig",
    "default_qconfig": "quantfx.qconfig",
    "default_per_channel_qconfig": "quantfx.qconfig",
    "default_dynamic_qconfig": "quantfx.qconfig",
    "float16_dynamic_qconfig": "quantfx.qconfig",
    "default_qat_qconfig": "quantfx.qconfig",
    "default_qat_qconfig_v2": "quantfx.qconfig",
    "float_qparams_weight_only_qconfig": "quantfx.qconfig",
    "default_symmetric_qnnpack_qconfig": "quantfx.qconfig",
    "default_per_channel_symmetric_qnnpack_qconfig": "quantfx.qconfig",
    "BackendConfig": "quantfx.backend_config",
    "BackendPatternConfig": "quantfx.backend_config",
    "DTypeConfig": "quantfx.backend_config",
    "DTypeWithConstraints": "quantfx.backend_config",
    "ObservationType": "quantfx.backend_config",
    "get_reference_backend_config": "quantfx.backend_config.common",
    "WeightQParams": "quantfx.nn.reference",
    "fuse_conv_bn": "quantfx.fuser_method_mappings",
    "get_fuser_method": "quantfx.fuser_method_mappings",
    "is_observer_or_fake_quant": "quantfx.observers",
    "PrepareCustomConfig": "quantfx.fx.custom_config",
    "ConvertCustomConfig": "quantfx.fx.custom_config",
    "FuseCustomConfig": "quantfx.fx.custom_config",
    "QuantizationTracer": "quantfx.fx.tracer",
    # observers and fake quantization
    "ObserverBase": "quantfx.observers",
    "MinMaxObserver": "quantfx.observers",
    "MovingAverageMinMaxObserver": "quantfx.observers",
    "PerChannelMinMaxObserver": "quantfx.observers",
    "MovingAveragePerChannelMinMaxObserver": "quantfx.observers",
    "HistogramObserver": "quantfx.observers",
    "FixedQParamsObserver": "quantfx.observers",
    "PlaceholderObserver": "quantfx.observers",
    "NoopObserver": "quantfx.observers",
    "ReuseInputObserver": "quantfx.observers",
    "FakeQuantizeBase": "quantfx.fake_quantize",
    "FakeQuantize": "quantfx.fake_quantize",
    "FixedQParamsFakeQuantize": "quantfx.fake_quantize",
    "FusedMovingAvgObsFakeQuantize": "quantfx.fake_quantize",
    "disable_observer": "quantfx.fake_quantize",
    "enable_observer": "quantfx.fake_quantize",
    "disable_fake_quant": "quantfx.fake_quantize",
    "enable_fake_quant": "quantfx.fake_quantize",
    # QAT helpers
    "freeze_bn_stats": "quantfx.nn.intrinsic.qat",
    "update_bn_stats": "quantfx.nn.intrinsic.qat",
    # errors
    "QuantfxError": "quantfx.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'quantfx' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
