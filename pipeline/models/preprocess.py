"""Image preprocessing shared by training, evaluation and the scanner.

* ``prepare_image(pil, cfg)``: EXIF orientation (``pipeline.shards.upright``: an unreadable EXIF block is no
  orientation), RGB, then to ``cfg.image_size`` as uint8 HWC:
  - ``center_crop`` [genscan]: center crop, no resize — the shorter side is resized (bicubic) to S only when
    the image is smaller than S;
  - ``center_crop_pad`` [code, UnivFD / RINE test transform]: torchvision ``CenterCrop(S)`` exactly — no
    resize; a side shorter than S is zero-padded (black, before normalisation) as torchvision pads;
  - ``resize_crop`` [code, seed 001 / ClipBased]: ``Resize(S, BICUBIC)`` on the shorter side, then center
    crop.
  The peers' loaders do not EXIF-transpose (``Image.open(p).convert("RGB")``); the results are identical for
  images without an orientation tag (the parity tests use such JPEGs).
* ``to_model_input(uint8 NHWC, cfg)``: float32, /255, CLIP mean/std, NCHW.

Crop offsets and the resized long side follow torchvision's ``CenterCrop``/``Resize(int)`` arithmetic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipeline.shards import upright

if TYPE_CHECKING:
    import torch

    from pipeline.models.config import DetectorConfig


def _resize_shorter(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == size:
        return img
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    return img.resize(new, Image.Resampling.BICUBIC)


def center_crop_offsets(width: int, height: int, size: int) -> tuple[int, int]:
    """(left, top) of the center crop, with torchvision's rounding (the GPU decoder cuts the same window)."""
    return int(round((width - size) / 2.0)), int(round((height - size) / 2.0))


def _pad_to(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``F.center_crop``'s padding: (S - side) // 2 before, the rest after, fill 0."""
    w, h = img.size
    if w >= size and h >= size:
        return img
    canvas = Image.new("RGB", (max(w, size), max(h, size)), (0, 0, 0))
    canvas.paste(img, ((size - w) // 2 if w < size else 0, (size - h) // 2 if h < size else 0))
    return canvas


def prepare_image(img: Image.Image, cfg: DetectorConfig) -> np.ndarray:
    """A PIL image -> np.uint8 (S, S, 3) following ``cfg.preprocess`` (any object with ``image_size`` and
    ``preprocess`` will do: the scan's decode passes just those two, after checking the mode is one of
    PREPROCESS_MODES; a DetectorConfig's is one by its type)."""
    size = cfg.image_size
    mode = cfg.preprocess
    img, _ = upright(img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if mode == "center_crop_pad":
        img = _pad_to(img, size)
    elif mode == "resize_crop" or min(img.size) < size:
        img = _resize_shorter(img, size)
    left, top = center_crop_offsets(*img.size, size)
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def to_model_input(
    images: np.ndarray | torch.Tensor, cfg: DetectorConfig, device: str | torch.device | None = None
) -> torch.Tensor:
    """uint8 (N, S, S, 3) (or one (S, S, 3)) -> float32 (N, 3, S, S), CLIP-normalised, on `device`."""
    import torch  # here, not at the top: the read tasks decode with this module and never need torch

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
