"""The activation observer behind the presets, checked against arithmetic written out here."""

from __future__ import annotations

import pytest
import torch
from quantfx.errors import ValidationError
from quantfx_openvino.qconfig import OpenVINOActivationObserver


def _observe(obs: OpenVINOActivationObserver, *batches: torch.Tensor) -> tuple[float, int]:
    for b in batches:
        obs(b)
    scale, zp = obs.calculate_qparams()
    return float(scale), int(zp)


def test_unsigned_tensor_gets_the_whole_uint8_grid() -> None:
    obs = OpenVINOActivationObserver(statistics="minmax", dtype=torch.uint8, qscheme=torch.per_tensor_symmetric)
    scale, zp = _observe(obs, torch.tensor([0.0, 1.0, 5.1]))
    assert zp == 0 and scale == pytest.approx(5.1 / 255)


def test_signed_tensor_is_int8_symmetric() -> None:
    obs = OpenVINOActivationObserver(statistics="minmax", dtype=torch.uint8, qscheme=torch.per_tensor_symmetric)
    scale, zp = _observe(obs, torch.tensor([-2.54, 0.5, 1.0]))
    assert zp == 128 and scale == pytest.approx(2.54 / 127)


def test_mean_minmax_averages_batches() -> None:
    obs = OpenVINOActivationObserver(dtype=torch.uint8, qscheme=torch.per_tensor_affine)
    scale, zp = _observe(obs, torch.tensor([-1.0, 3.0]), torch.tensor([-2.0, 1.0]))
    # mean min -1.5, mean max 2 -> affine over [-1.5, 2]
    assert scale == pytest.approx(3.5 / 255)
    assert zp == round(1.5 / (3.5 / 255))
    # core's MinMax keeps the extremes instead: [-3, 3]
    minmax = OpenVINOActivationObserver(statistics="minmax", dtype=torch.uint8, qscheme=torch.per_tensor_affine)
    scale_mm, _ = _observe(minmax, torch.tensor([-1.0, 3.0]), torch.tensor([-3.0, 1.0]))
    assert scale_mm == pytest.approx(6.0 / 255)


def test_bad_statistics_name() -> None:
    with pytest.raises(ValidationError, match="statistics must be 'mean_minmax' or 'minmax'"):
        OpenVINOActivationObserver(statistics="median")


@pytest.mark.parametrize("statistics", ["mean_minmax", "minmax"])
def test_presets_take_the_range_estimator(statistics: str) -> None:
    from quantfx_openvino.qconfig import get_openvino_qconfig_mapping
    from quantfx_openvino.quantizer import get_openvino_quantization_config

    for preset in ("performance", "mixed", "transformer"):
        mapping = get_openvino_qconfig_mapping(preset, statistics=statistics, overflow_fix=False)
        acts = [q.activation() for q in mapping.object_type_qconfigs.values() if q is not None]
        observers = [a for a in acts if isinstance(a, OpenVINOActivationObserver)]  # not ReuseInputObserver & co
        assert observers and all(a.statistics == statistics for a in observers)
    spec = get_openvino_quantization_config(statistics=statistics, overflow_fix=False).input_activation
    assert spec.observer_or_fake_quant_ctr().statistics == statistics
    # the two estimators really differ: an outlier batch widens minmax only
    obs = get_openvino_qconfig_mapping(statistics=statistics, overflow_fix=False).global_qconfig.activation()
    scale, _ = _observe(obs, torch.tensor([0.0, 1.0]), torch.tensor([0.0, 3.0]))
    assert scale == pytest.approx((3.0 if statistics == "minmax" else 2.0) / 255)


def test_preset_with_a_bad_range_estimator() -> None:
    from quantfx_openvino.qconfig import get_openvino_qconfig_mapping
    from quantfx_openvino.quantizer import get_openvino_quantizer

    with pytest.raises(ValidationError, match="statistics must be 'mean_minmax'"):
        get_openvino_qconfig_mapping(statistics="max")
    with pytest.raises(ValidationError, match="statistics must be 'mean_minmax'"):
        get_openvino_quantizer(statistics="max")
