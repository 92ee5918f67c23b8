"""Image preprocessing shared by training, evaluation and the scanner.

* ``prepare_image(pil, cfg)``: EXIF transpose, RGB, then to ``cfg.image_size`` as uint8 HWC:
  - ``center_crop`` [code, UnivFD test protocol]: center crop, no resize — the shorter side is resized (bicubic)
    to S only when the image is smaller than S;
  - ``resize_crop`` [code, seed 001]: resize the shorter side to S (bicubic), then center crop.
* ``to_model_input(uint8 NHWC, cfg)``: float32, /255, CLIP mean/std, NCHW.

Crop offsets and the resized long side follow torchvision's ``CenterCrop``/``Resize(int)`` arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from pipeline.models.config import DetectorConfig


def _resize_shorter(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == size:
        return img
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return img.resize(new, Image.Resampling.BICUBIC)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left = int(round((w - size) / 2.0))
    top = int(round((h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def prepare_image(img: Image.Image, cfg: DetectorConfig) -> np.ndarray:
    """A PIL image -> np.uint8 (S, S, 3) following ``cfg.preprocess``."""
    size = cfg.image_size
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if cfg.preprocess == "resize_crop" or min(img.size) < size:
        img = _resize_shorter(img, size)
    img = _center_crop(img, size)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape != (size, size, 3):  # defensive: PIL modes that do not map to HWC uint8
        raise ValueError(f"prepared image has shape {arr.shape}, expected {(size, size, 3)}")
    return arr


def to_model_input(
    images: np.ndarray | torch.Tensor, cfg: DetectorConfig, device: str | torch.device | None = None
) -> torch.Tensor:
    """uint8 (N, S, S, 3) (or one (S, S, 3)) -> float32 (N, 3, S, S), CLIP-normalised, on `device`."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    s = cfg.image_size
    if x.ndim != 4 or tuple(x.shape[1:]) != (s, s, 3):
        raise ValueError(f"expected images of shape (N, {s}, {s}, 3), got {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return x.sub_(mean).div_(std).contiguous()
