"""Pretrained EfficientNet-Lite0 through the openvino backend: OpenVINO int8 vs the reference IR.

Calibrated on crops / flips of scikit-image's bundled photographs, evaluated
on other crops. OpenVINO must run the convolutions in int8 and reproduce the
reference model's decisions (top-1) and logits.

The issue's bar is SQNR(reference, OpenVINO) >= 30 dB. Two things stood in
its way: core traced the package's ``Conv2dStaticSamePadding`` (an
``nn.Conv2d`` subclass) into ``F.conv2d`` and then neither folded BatchNorm
nor fused ReLU6 (fixed in core's tracer: 20.8 -> 28.8 dB), and OpenVINO fuses
each residual add into the conv before it without rounding that conv's output
(the backend config's ``conv -> add`` pattern now keeps the reference from
rounding it too: 28.8 -> 30.2 dB on 64 crops). What is left is rounding order
(a step flipped here and there, compounding over 16 blocks).

That is the quantized model's own reproducibility, not OpenVINO computing
something else: layer by layer (``layerwise_divergence``) every quantization
point agrees with the reference op run on OpenVINO's inputs but for at most
5 elements in 10^5, one step apart, and the reference itself run in float32
and in float64 is just as far apart as OpenVINO and the reference (30.2 vs
30.1 dB; with ``statistics="minmax"`` 27.4 vs 27.3 dB). Flipping a single
input value of the reference by one step costs about 39 dB at the logits.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from quantfx.testing import images

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def efficientnet() -> torch.nn.Module:
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install quantfx-backend-openvino[test]")
    return images.efficientnet_lite0()


def _quantize(model: torch.nn.Module, mapping: Any) -> dict[str, Any]:
    from quantfx import api
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

    photos = images.skimage_photos()
    calib = list(images.random_crops(photos, 24, seed=0).split(1))
    evals = images.random_crops(photos, 12, seed=1)
    example = (calib[0],)
    prepared = prepare_fx(model, mapping, example, backend="openvino")
    with torch.no_grad():
        for x in calib:
            prepared(x)
    reference = convert_to_reference_fx(prepared)
    lowered = api.lower(reference, "openvino", example)
    with torch.no_grad():
        ref_out = reference(evals)
    return {"lowered": lowered, "ref_out": ref_out, "ov_out": lowered(evals), "reference": reference,
            "example": example, "evals": evals}


@pytest.fixture(scope="module")
def lowered_efficientnet(efficientnet: Any) -> dict[str, Any]:
    from quantfx import api

    return _quantize(efficientnet, api.get_default_qconfig_mapping("openvino"))


@pytest.fixture(scope="module")
def minmax_efficientnet(efficientnet: Any) -> dict[str, Any]:
    from quantfx_openvino.qconfig import get_openvino_qconfig_mapping

    return _quantize(efficientnet, get_openvino_qconfig_mapping("performance", statistics="minmax"))


@pytest.fixture(params=["mean_minmax", "minmax"])
def quantized(request: Any) -> dict[str, Any]:
    """The model quantized with each activation range estimator (minmax: wider ranges)."""
    return request.getfixturevalue("lowered_efficientnet" if request.param == "mean_minmax" else "minmax_efficientnet")


def test_efficientnet_lite0_runs_int8_and_follows_the_reference(lowered_efficientnet: dict[str, Any]) -> None:
    from quantfx.testing.metrics import sqnr, top1_agreement

    ref_out, ov_out = lowered_efficientnet["ref_out"], lowered_efficientnet["ov_out"]
    convs = [r for r in lowered_efficientnet["lowered"].runtime_layers() if r["type"] == "Convolution"]
    int8 = [r for r in convs if r["runtime_precision"] in ("u8", "i8")]
    assert len(convs) >= 40 and len(int8) == len(convs), f"{len(int8)} of {len(convs)} convolutions in int8"
    assert top1_agreement(ref_out, ov_out) >= 0.9
    value = sqnr(ref_out, ov_out)
    assert value >= 30.0, f"SQNR(reference IR, OpenVINO) = {value:.1f} dB on EfficientNet-Lite0"


def _float64(reference: Any) -> torch.nn.Module:
    """The reference model computed in float64: the same integers and scales, (nearly) exact arithmetic."""
    from quantfx_openvino.fake_quant import to_fake_quant

    def fake_quantize64(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
        return (torch.clamp(torch.round(x.double() / scale) + zero_point, qmin, qmax) - zero_point) * scale

    gm = to_fake_quant(reference).double()  # float buffers (scales, biases, BN-folded weights) to float64
    for node in gm.graph.nodes:
        if node.target is torch.fake_quantize_per_tensor_affine:
            node.target = fake_quantize64
    gm.recompile()
    return gm


def test_efficientnet_lite0_every_layer_follows_the_reference(quantized: dict[str, Any]) -> None:
    """Each quantization point, fed OpenVINO's own inputs, matches the reference but for rounding-order noise."""
    from quantfx_openvino.lowering import layerwise_divergence

    rows = layerwise_divergence(quantized["reference"], quantized["example"], (quantized["evals"][:4],))
    assert len(rows) >= 50  # 59 quantization points, 5 requantizes after pads dropped by the lowering
    diverging = [r for r in rows if r.local_mismatch > 1e-3 or r.local_max_steps > 1]  # measured: <= 5.3e-5, 1 step
    assert not diverging, diverging


def test_efficientnet_lite0_openvino_is_as_close_to_exact_arithmetic_as_torch(quantized: dict[str, Any]) -> None:
    """OpenVINO int8 is as close to the reference computed exactly as the reference computed in float32."""
    from quantfx.testing.metrics import sqnr

    with torch.no_grad():
        exact = _float64(quantized["reference"])(quantized["evals"].double()).float()
    floor = sqnr(exact, quantized["ref_out"])  # measured: 30.2 dB (mean_minmax), 27.4 dB (minmax)
    value = sqnr(exact, quantized["ov_out"])  # measured: 30.0 / 27.4 dB
    assert value >= floor - 1.0, f"OpenVINO {value:.1f} dB from the exact reference, torch float32 {floor:.1f} dB"
