from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.data.augment import UnivFDAugment
from pipeline.train.feed import augment_image


def _coords_image(size: int = 128) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size]
    return Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], axis=-1).astype(np.uint8))


def _offsets(crop_grid: str, n: int = 60) -> set[tuple[int, int]]:
    aug = UnivFDAugment(crop_size=96, blur_prob=0.0, jpeg_prob=0.0)
    img = _coords_image()
    rng = np.random.default_rng(0)
    out = set()
    for _ in range(n):
        a = np.asarray(augment_image(img, aug, rng, crop_grid=crop_grid, patch=16)).astype(int)
        assert a.shape == (96, 96, 3)
        x0 = min(a[0, 0, 0], a[0, -1, 0])  # a flipped crop has its left edge on the right
        out.add((int(x0), int(a[0, 0, 1])))
    return out


def test_patch_grid_crop_offsets_are_multiples_of_the_patch() -> None:
    offs = _offsets("patch")
    assert all(x % 16 == 0 and y % 16 == 0 for x, y in offs)
    assert len(offs) > 3  # still random: several grid positions drawn


def test_pixel_crop_offsets_are_free() -> None:
    offs = _offsets("pixel")
    assert any(x % 16 or y % 16 for x, y in offs)
