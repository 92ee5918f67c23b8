"""UnivFD training augmentations and the robustness transforms the evaluator sweeps; plain functions on PIL
images.

Training recipe (METHODS.md, UnivFD / CNNDetection [code]): resize → Gaussian blur with p=0.5, σ ~ U[0, 3]
(scipy ``gaussian_filter`` per channel, as the reference code) → JPEG with p=0.5, quality ~ U{30..100} →
random crop → horizontal flip (p=0.5). The crop size is a parameter: the published recipe crops 224 after a
256 resize; the tiny demo detector uses its own image size. [ours]: PIL is the only JPEG codec (the reference
code also draws OpenCV's), the resize is "shorter side to N" (METHODS.md) and optional, an image smaller than
the crop is first resized (shorter side) up to the crop size instead of failing, and ``crop_grid`` (default 1
= the published recipe) can snap crop offsets to a pixel grid: generator traces are periodic on the output
pixel grid (period 2 for transposed convolutions, 8 for f8 autoencoders, JPEG's 8x8 blocks), and a small model
that sees them through fixed 16-px patches learns them far more easily when every crop keeps the same phase.

Every random choice comes from the `numpy.random.Generator` passed in, so a seeded generator reproduces the
exact same augmented image. :meth:`UnivFDAugment.sample` draws the parameters and :meth:`UnivFDAugment.apply`
applies them, so tests and logs can see what was done.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field, model_validator
from scipy import ndimage

from pipeline.settings import StrictModel


# ---- deterministic transforms ------------------------------------------------------------------------------
def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def blur(img: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur of every channel with standard deviation `sigma` px (scipy, reflect borders) [code]."""
    img = _rgb(img)
    if sigma <= 0:
        return img.copy()
    arr = np.asarray(img, dtype=np.float32)
    out = ndimage.gaussian_filter(arr, sigma=(sigma, sigma, 0), mode="reflect")
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    """The image encoded as JPEG at `quality` (PIL/libjpeg, default 4:2:0 chroma subsampling)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    _rgb(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    """JPEG round trip at `quality`: encode, decode, return the decoded RGB image."""
    with Image.open(io.BytesIO(jpeg_bytes(img, quality))) as im:
        return im.convert("RGB")


def resize(img: Image.Image, factor: float) -> Image.Image:
    """Rescale both sides by `factor` (bicubic; PIL antialiases when shrinking)."""
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    w, h = img.size
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return _rgb(img).resize(size, Image.Resampling.BICUBIC)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size`, keeping the aspect ratio (bicubic)."""
    w, h = img.size
    scale = size / min(w, h)
    if scale == 1:
        return _rgb(img)
    return _rgb(img).resize(
        (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC
    )


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:
        img = resize_shorter(img, size)
        w, h = img.size
    x, y = (w - size) // 2, (h - size) // 2
    return _rgb(img).crop((x, y, x + size, y + size))


# ---- training augmentation ---------------------------------------------------------------------------------
class AugmentConfig(StrictModel):
    """UnivFD training augmentation; defaults are the published recipe except `crop_size` / `resize`."""

    crop_size: int = Field(default=224, ge=8)
    resize: int | None = Field(default=None, ge=8, description="shorter side before augmenting (UnivFD: 256)")
    blur_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_prob: float = Field(default=0.5, ge=0.0, le=1.0)
    jpeg_quality: tuple[int, int] = (30, 100)
    flip: bool = True
    crop_grid: int = Field(
        default=1,
        ge=1,
        description="[ours] crop offsets are multiples of this (1 = UnivFD); 8 keeps 8-px-periodic "
        "traces in phase",
    )

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        lo, hi = self.blur_sigma
        if not 0 <= lo <= hi:
            raise ValueError(f"blur_sigma must be 0 <= low <= high, got {self.blur_sigma}")
        qlo, qhi = self.jpeg_quality
        if not 1 <= qlo <= qhi <= 100:
            raise ValueError(f"jpeg_quality must be 1 <= low <= high <= 100, got {self.jpeg_quality}")
        if self.resize is not None and self.resize < self.crop_size:
            raise ValueError(f"resize ({self.resize}) must be >= crop_size ({self.crop_size})")
        return self


@dataclass(frozen=True)
class AugmentParams:
    blur_sigma: float | None  # None: not blurred
    jpeg_quality: int | None  # None: not re-compressed
    crop_u: float  # crop position as a fraction of the free range (0..1), resolved once the size is known
    crop_v: float
    flip: bool


class UnivFDAugment:
    """Callable `aug(img, rng) -> PIL.Image` (crop_size × crop_size RGB)."""

    def __init__(self, **settings: object) -> None:
        self.config = AugmentConfig.parse(settings, source="augmentation")

    def sample(self, rng: np.random.Generator) -> AugmentParams:
        c = self.config
        sigma = float(rng.uniform(*c.blur_sigma)) if rng.random() < c.blur_prob else None
        quality = (
            int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1))
            if rng.random() < c.jpeg_prob
            else None
        )
        u, v = float(rng.random()), float(rng.random())
        flip = bool(c.flip and rng.random() < 0.5)
        return AugmentParams(blur_sigma=sigma, jpeg_quality=quality, crop_u=u, crop_v=v, flip=flip)

    def apply(self, img: Image.Image, p: AugmentParams) -> Image.Image:
        c = self.config
        img = _rgb(img)
        if c.resize is not None:
            img = resize_shorter(img, c.resize)
        if p.blur_sigma is not None:
            img = blur(img, p.blur_sigma)
        if p.jpeg_quality is not None:
            img = jpeg(img, p.jpeg_quality)
        if min(img.size) < c.crop_size:
            img = resize_shorter(img, c.crop_size)
        w, h = img.size
        g = c.crop_grid
        x = min(int(p.crop_u * ((w - c.crop_size) // g + 1)), (w - c.crop_size) // g) * g
        y = min(int(p.crop_v * ((h - c.crop_size) // g + 1)), (h - c.crop_size) // g) * g
        img = img.crop((x, y, x + c.crop_size, y + c.crop_size))
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if p.flip else img

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        return self.apply(img, self.sample(rng))


# ---- robustness sweeps (evaluation) ------------------------------------------------------------------------
Perturbation = Literal["none", "jpeg", "blur", "resize"]


def perturbation(kind: Perturbation, value: float | None = None) -> Callable[[Image.Image], Image.Image]:
    """A deterministic evaluation perturbation: jpeg(quality), blur(sigma), resize(factor) or none."""
    if kind == "none":
        return _rgb
    if value is None:
        raise ValueError(f"perturbation {kind!r} needs a value")
    if kind == "jpeg":
        return partial(jpeg, quality=int(value))
    if kind == "blur":
        return partial(blur, sigma=float(value))
    if kind == "resize":
        return partial(resize, factor=float(value))
    raise ValueError(f"unknown perturbation {kind!r}; use none, jpeg, blur or resize")
