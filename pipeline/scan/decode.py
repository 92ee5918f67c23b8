"""Decode one image member into the detector's input size, never raising for bad bytes.

Contract (docs/architecture.md): `decode_image(data, image_size=S, resize_mode=..., max_pixels=N)` ->
DecodeResult(status ok | decode_error | too_large, error, pixels uint8 (S,S,3), width, height, format).

Choices [ours]:
- Formats: only the shard layer's image formats are opened (`pipeline.shards.IMAGE_FORMATS`, through
  `pipeline.shards.open_image`). Others (EPS, which runs Ghostscript; PDF; PSD; …) are `decode_error`,
  which also shrinks the decoder attack surface. `format` is the format Pillow found, whatever the extension.
- Decompression bombs: the pixel count is checked from the header (Pillow reads only the header in
  `Image.open`) BEFORE any pixel data is decoded; more than `max_pixels` -> `too_large`. Pillow's own global
  `Image.MAX_IMAGE_PIXELS` check is also turned into `too_large` (this module never changes that global).
  Every frame of a multi-frame file is bounded by the same header size.
- Orientation: `pipeline.shards.upright` (EXIF orientation as `ImageOps.exif_transpose` applies it);
  width/height are reported AFTER it (as the image is displayed), before any crop/resize. A malformed EXIF
  block leaves the image unrotated (noted, still scored).
- Colour: everything becomes 8-bit RGB. Alpha (RGBA, LA, PA, palette with transparency) is COMPOSITED ON
  WHITE, as a viewer on a white page shows it (dropping alpha would expose arbitrary colours hidden under
  transparent pixels). 16-bit / 32-bit integer grayscale is scaled to 8 bits (value >> 8 for 16-bit data,
  not clipped); float images are clipped to [0, 1] when they look normalised, else to [0, 255]. CMYK (Adobe
  inverted too, Pillow handles the marker), YCbCr, LAB, palette and 1-bit images go through Pillow's convert.
- Animated GIF/WebP/APNG: the first frame.
- Truncated data is `decode_error` (Pillow's LOAD_TRUNCATED_IMAGES stays off: a half-grey image would be
  scored as if it were real data).
- Crop/resize: `pipeline.models.preprocess.prepare_image`, the one rule for training, evaluation and scanning
  (modes `pipeline.models.constants.PREPROCESS_MODES`: center_crop, center_crop_pad, resize_crop). It runs
  after the conversions above, so its own EXIF/RGB steps are no-ops.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.limits import MAX_PIXELS
from pipeline.models.constants import PREPROCESS_MODES
from pipeline.models.constants import PreprocessMode as ResizeMode
from pipeline.models.preprocess import prepare_image
from pipeline.shards import IMAGE_FORMATS, describe, open_image, upright

Status = Literal["ok", "decode_error", "too_large"]


@dataclass
class DecodeResult:
    status: Status
    error: str | None = None
    pixels: np.ndarray | None = None  # uint8 (S, S, 3)
    width: int | None = None  # displayed size (after EXIF orientation), before crop/resize
    height: int | None = None
    format: str | None = None  # Pillow's format name: JPEG, PNG, WEBP, GIF, ...
    note: str | None = None  # something worth knowing that did not stop scoring (animated, bad EXIF)
    # set INSTEAD of pixels when the image is shipped encoded to the scorer's device decode
    # (pipeline.scan.gpu_decode.decode_or_ship); never set by decode_image
    encoded: bytes | None = None
    # the same image for each of `decode_image`'s `also` inputs (several detectors in one scan), in that order
    also: list[np.ndarray] | None = None


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB by the rules in the module docstring."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        if mode == "I" and arr.size and int(arr.max()) <= 255 and int(arr.min()) >= 0:
            eight = arr.astype(np.uint8)
        else:
            eight = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(eight[..., None], 3, axis=2), "RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and float(finite.max()) <= 1.0 else 1.0
        eight = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(np.repeat(eight[..., None], 3, axis=2), "RGB")
    return im.convert("RGB")


def _prepare(im: Image.Image, image_size: int, resize_mode: str) -> np.ndarray:
    """The one crop/resize rule of the project (`pipeline.models.preprocess.prepare_image`); it needs only
    `image_size` and `preprocess` from the detector config."""
    cfg = SimpleNamespace(image_size=image_size, preprocess=resize_mode)
    return np.ascontiguousarray(prepare_image(im, cfg), dtype=np.uint8)  # type: ignore[arg-type]


def decode_image(
    data: bytes | None,
    *,
    image_size: int,
    resize_mode: ResizeMode = "center_crop",
    max_pixels: int = MAX_PIXELS,
    also: Sequence[tuple[int, str]] = (),
) -> DecodeResult:
    """Decode `data` to uint8 (image_size, image_size, 3). Never raises: bad bytes give `decode_error`,
    a header declaring more than `max_pixels` pixels gives `too_large` before any pixel is decoded.
    also: further (image_size, resize_mode) inputs cut from the same decoded image (`result.also`)."""
    for mode in (resize_mode, *(m for _, m in also)):
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"resize_mode must be one of {', '.join(PREPROCESS_MODES)}, got {mode!r}")
    if data is None or len(data) == 0:
        return DecodeResult("decode_error", "empty image data (0 bytes)")
    try:
        im = open_image(data)
    except Image.DecompressionBombError as exc:
        return DecodeResult("too_large", f"declared size exceeds Pillow's pixel limit: {exc}")
    except UnidentifiedImageError:
        head = bytes(data[:8])
        return DecodeResult(
            "decode_error",
            f"not a recognised image ({len(data)} bytes, starts with {head!r}; allowed formats: "
            f"{', '.join(IMAGE_FORMATS)})",
        )
    except Exception as exc:  # Pillow raises many types on a bad header (SyntaxError, ValueError, OSError…)
        return DecodeResult("decode_error", f"bad image header: {describe(exc)}")
    original, fmt, (w, h) = im, im.format, im.size
    result = DecodeResult("decode_error", format=fmt, width=w, height=h)
    notes: list[str] = []
    try:
        if w <= 0 or h <= 0:
            result.error = f"image declares size {w}x{h}"
            return result
        if w * h > max_pixels:
            result.status = "too_large"
            result.error = f"{w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} (not decoded)"
            return result
        n_frames = int(getattr(im, "n_frames", 1) or 1)
        if n_frames > 1:
            im.seek(0)
            notes.append(f"{n_frames} frames; scored the first")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
        im, exif_note = upright(im)
        if exif_note:
            notes.append(exif_note)
        result.width, result.height = im.size
        rgb = _to_rgb(im)
        result.pixels = _prepare(rgb, image_size, resize_mode)
        if also:
            result.also = [_prepare(rgb, size, mode) for size, mode in also]
    except MemoryError:
        result.error = f"out of memory decoding {w}x{h} {fmt}"
        return result
    except Exception as exc:
        result.error = f"cannot decode {fmt} {w}x{h}: {describe(exc)}"
        return result
    finally:
        original.close()
    result.status = "ok"
    result.note = "; ".join(notes) or None
    return result
