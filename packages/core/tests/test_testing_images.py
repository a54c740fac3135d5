"""quantfx.testing.images: the offline photographs and crops every example, bench and backend test shares."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("skimage", reason="pip install scikit-image")

from quantfx.testing.images import PHOTOS, random_crops, skimage_photos  # noqa: E402


def test_photos_are_rgb_in_unit_range() -> None:
    photos = skimage_photos(PHOTOS[:2] + ("camera",))
    assert len(photos) == 3
    for p in photos:
        assert p.dim() == 3 and p.shape[0] == 3 and p.dtype == torch.float32
        assert 0.0 <= p.min() and p.max() <= 1.0
    assert torch.equal(photos[2][0], photos[2][1]), "a grey photo is repeated to three channels"
    assert len(skimage_photos(("stereo_motorcycle",))) == 2


def test_crops_are_seeded_normalized_and_differ_between_seeds() -> None:
    photos = skimage_photos(PHOTOS[:3])
    a, b, c = random_crops(photos, 4, seed=0, size=32), random_crops(photos, 4, seed=0, size=32), random_crops(photos, 4, seed=1, size=32)
    assert a.shape == (4, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert -1.0 <= a.min() and a.max() <= 1.0
    # without flips the RNG draws three numbers per crop, not four: a different (documented) stream
    assert not torch.equal(random_crops(photos, 4, seed=0, size=32, flip=False), a)


def test_missing_photo_is_a_clear_error_or_skipped() -> None:
    with pytest.raises(ValueError, match="no sample image 'no_such_photo'.*skip_missing"):
        skimage_photos(("astronaut", "no_such_photo"))
    assert len(skimage_photos(("astronaut", "no_such_photo"), skip_missing=True)) == 1
