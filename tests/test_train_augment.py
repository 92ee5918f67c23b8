from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.models import DetectorConfig
from pipeline.train.config import TrainConfig
from pipeline.train.data import TrainData


def _coords_image(size: int = 128) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size]
    return Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], axis=-1).astype(np.uint8))


def _data(crop_grid: str) -> TrainData:
    cfg = TrainConfig(data="d", out="o", augment=True, augment_blur_prob=0.0, augment_jpeg_prob=0.0, crop_grid=crop_grid)
    img = _coords_image()
    return TrainData(cfg=cfg, det_cfg=DetectorConfig.load("tiny-mole"), generators=["a"], train_images=[img],
                     train_labels=np.array([1]), train_classes=np.array([1]), val_images=[],
                     val_labels=np.zeros(0, int), val_classes=np.zeros(0, int), patch_size=16)  # fmt: skip


def _offsets(data: TrainData, n: int = 60) -> set[tuple[int, int]]:
    rng = np.random.default_rng(0)
    out = set()
    for _ in range(n):
        a = np.asarray(data._augment_one(data.train_images[0], rng)).astype(int)
        assert a.shape == (96, 96, 3)
        x0 = min(a[0, 0, 0], a[0, -1, 0])  # a flipped crop has its left edge on the right
        out.add((int(x0), int(a[0, 0, 1])))
    return out


def test_patch_grid_crop_offsets_are_multiples_of_the_patch() -> None:
    offs = _offsets(_data("patch"))
    assert all(x % 16 == 0 and y % 16 == 0 for x, y in offs)
    assert len(offs) > 3  # still random: several grid positions drawn


def test_pixel_crop_offsets_are_free() -> None:
    offs = _offsets(_data("pixel"))
    assert any(x % 16 or y % 16 for x, y in offs)
