"""Session fixtures of the tensorrt tests (helpers live in trt_testing.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trt_testing import crops, efficientnet_lite0, photos


@pytest.fixture(scope="session")
def efficientnet_reference() -> dict[str, Any]:
    """EfficientNet-Lite0 prepared for tensorrt, calibrated on 8 photo crops, converted to the reference IR."""
    pytest.importorskip("skimage", reason="pip install 'quantfx-backend-tensorrt[test]'")
    import quantfx
    from quantfx.quantize_fx import convert_to_reference_fx, prepare_fx

    model = efficientnet_lite0()
    images = photos()
    calib = crops(images, 8, seed=0)
    evals = crops(images, 4, seed=1)
    prepared = prepare_fx(model, quantfx.get_default_qconfig_mapping("tensorrt"), (calib[:1],), backend="tensorrt")
    with torch.no_grad():
        for i in range(0, len(calib), 4):
            prepared(calib[i:i + 4])
    reference = convert_to_reference_fx(prepared)
    return {"float": model, "reference": reference, "evals": evals}
