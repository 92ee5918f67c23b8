"""Decoding JPEGs on the scorer's device (`--decode-on gpu`): the read task ships the encoded bytes of the
images for which that gives exactly the CPU result; the scorer decodes them batched with
`torchvision.io.decode_jpeg(list, device=...)` (nvjpeg on CUDA) and center-crops on the device [ours].

Two plain functions, no Ray:

* read side, `decode_or_ship(data, ..., decode_on)`: a `DecodeResult` with `encoded` set (status "ok", no
  pixels, width/height/format from the header) when `device_decodable` says yes, else `decode_image`'s result;
* scorer side, `DeviceDecoder.decode(list of bytes)`: uint8 (N, S, S, 3) on the device for the images that
  decoded, and the CPU decoder's own `DecodeResult` for those that did not (so a file nvjpeg refuses gets the
  same status row as on the CPU path, or is scored from the CPU pixels).

Eligible (`device_decodable`) ONLY when the CPU rule (`pipeline.scan.decode.decode_image` ->
`pipeline.models.preprocess.prepare_image`) is "decode, then cut a window": Pillow identifies a single-frame
baseline/progressive JPEG (format "JPEG", not MPO) of mode RGB (YCbCr or Adobe RGB) or L (gray becomes
R=G=B on both paths), within max_pixels, whose EXIF orientation is not one that `pipeline.shards.upright`
applies (2-8; an unreadable EXIF block is no orientation on both paths), whose data ends with the EOI marker
(a truncated file is never shipped: Pillow rejects it, a GPU decoder might fill it), and whose crop needs no
resampling or padding: both sides >= S for center_crop and center_crop_pad, the shorter side == S for
resize_crop (Resize is then a no-op). CMYK/YCCK, PNG, WebP, GIF, small images, other orientations: the CPU
decoder, as before.

Measured on CPU (tests/test_gpu_decode.py, libjpeg-turbo 3.2 in Pillow 13 vs 3.1 in torchvision 0.29):
`decode_jpeg(mode=RGB)` equals Pillow's `convert("RGB")` bit for bit for 4:4:4 / 4:2:2 / 4:2:0 subsampling,
quality 50-100, progressive, optimised Huffman tables, restart markers, grayscale, odd sizes; both refuse
truncated files and decode the same bit-flipped files identically. nvjpeg on CUDA is a different IDCT and
upsampler: its pixels are NOT known to be bit-equal; `benchmarks/gpu.py` measures the difference on the GPU.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.models.preprocess import center_crop_offsets
from pipeline.scan.decode import DecodeResult, decode_image
from pipeline.scan.provenance import sniff
from pipeline.shards import exif_orientation, open_image

if TYPE_CHECKING:
    import torch

JPEG_EOI = b"\xff\xd9"
ELIGIBLE_MODES = ("RGB", "L")
_TRANSPOSING = frozenset(range(2, 9))  # EXIF orientations pipeline.shards.upright applies
# preprocessing modes whose crop is a pure window for a given (w, h): min side >= S, or == S for resize_crop
_WINDOW_MODES = ("center_crop", "center_crop_pad")
DEFAULT_MAX_BATCH_PIXELS = 256 * 2**20  # pixels decoded per decode_jpeg call (~0.75 GB of RGB on the device)


def needs_resampling(width: int, height: int, image_size: int, resize_mode: str) -> bool:
    """True when `prepare_image` would resize or pad an image of this (displayed) size."""
    short = min(width, height)
    if resize_mode in _WINDOW_MODES:
        return short < image_size
    if resize_mode == "resize_crop":
        return short != image_size
    return True  # an unknown mode is never assumed to be a window


def device_decodable(
    data: bytes | None, *, image_size: int, resize_mode: str, max_pixels: int
) -> tuple[int, int] | None:
    """(width, height) when decoding `data` on the device and cutting the center window gives exactly the CPU
    decoder's pixels (see the module docstring); None otherwise. Reads the header only."""
    if not data or sniff(data) != "JPEG" or not data.endswith(JPEG_EOI):
        return None
    try:
        im = open_image(data, formats=["JPEG"])  # Pillow's warnings silenced there
    except Exception:  # DecompressionBombError included: the CPU path turns it into a row
        return None
    with im:
        if im.format != "JPEG" or im.mode not in ELIGIBLE_MODES or getattr(im, "n_frames", 1) != 1:
            return None
        w, h = im.size
        if w <= 0 or h <= 0 or w * h > max_pixels or needs_resampling(w, h, image_size, resize_mode):
            return None
        orientation, _ = exif_orientation(im)  # an unreadable block is no orientation, as on the CPU path
        if orientation in _TRANSPOSING:
            return None
    return w, h


def decode_or_ship(
    data: bytes | None,
    *,
    image_size: int,
    resize_mode: str = "center_crop",
    max_pixels: int,
    decode_on: str = "cpu",
    also: Sequence[tuple[int, str]] = (),
) -> DecodeResult:
    """The read task's per-image step: ship the bytes (`encoded`) when `decode_on == "gpu"` and the image is
    device-decodable, else decode on CPU (`decode_image`, unchanged, with its `also` inputs)."""
    if decode_on == "gpu":
        size = device_decodable(data, image_size=image_size, resize_mode=resize_mode, max_pixels=max_pixels)
        if size is not None:
            return DecodeResult(
                "ok", width=size[0], height=size[1], format="JPEG", encoded=bytes(data or b"")
            )
    elif decode_on != "cpu":
        raise ValueError(f"decode_on must be 'cpu' or 'gpu', got {decode_on!r}")
    return decode_image(
        data,
        image_size=image_size,
        resize_mode=resize_mode,  # type: ignore[arg-type]
        max_pixels=max_pixels,
        also=also,
    )


@dataclass
class DeviceDecoded:
    pixels: torch.Tensor  # uint8 (n_ok, S, S, 3) on the decoder's device, rows in `ok` order
    ok: np.ndarray  # indices (into the input list) of the rows in `pixels`
    # index -> the CPU decoder's result for inputs that neither the device nor the CPU decoder decoded
    fallback: dict[int, DecodeResult]
    seconds: float


class DeviceDecoder:
    """Batched JPEG decode + center crop on `device` ("cuda[:i]" -> nvjpeg; "cpu" -> libjpeg-turbo, used by
    the tests). Inputs must be device-decodable (the read side checked); `max_batch_pixels` bounds the device
    memory of one decode call."""

    def __init__(
        self, device: str | torch.device, image_size: int, max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS
    ) -> None:
        # torch is imported by the decoder, not the module: the read tasks use this module's shipping rule
        # (decode_or_ship) and never load torch
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        self.device = torch.device(device)
        self.size = image_size
        self.max_batch_pixels = max_batch_pixels
        self._decode_jpeg = decode_jpeg
        self._rgb = ImageReadMode.RGB

    def _decode(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 deprecates its image io
            return list(self._decode_jpeg(tensors, mode=self._rgb, device=self.device))

    def _crop(self, img: torch.Tensor) -> torch.Tensor | None:
        """CHW -> HWC window, or None when the decoded image is not what the header promised."""
        if img.ndim != 3 or img.shape[0] != 3:
            return None
        h, w = int(img.shape[1]), int(img.shape[2])
        s = self.size
        if min(w, h) < s:
            return None
        left, top = center_crop_offsets(w, h, s)
        return img[:, top : top + s, left : left + s].permute(1, 2, 0)

    def decode(self, items: list[bytes], sizes: list[tuple[int, int]]) -> DeviceDecoded:
        """Decode `items` (encoded JPEGs). `sizes` (w, h) from the read side group the calls by pixel budget.
        A call that fails is retried one image at a time; an image that still fails (or decodes to an
        unexpected shape) is decoded by the CPU decoder instead, whose result is returned in `fallback`."""
        import torch

        t0 = time.perf_counter()
        crops: dict[int, torch.Tensor] = {}
        failed: list[int] = []
        for group in _groups(sizes, self.max_batch_pixels):
            tensors = [torch.frombuffer(bytearray(items[i]), dtype=torch.uint8) for i in group]
            try:
                decoded = self._decode(tensors)
            except Exception:
                decoded = []
                for t in tensors:
                    try:
                        decoded.append(self._decode([t])[0])
                    except Exception:
                        decoded.append(None)
            for i, img in zip(group, decoded, strict=True):
                crop = self._crop(img) if img is not None else None
                if crop is None:
                    failed.append(i)
                else:
                    crops[i] = crop
        fallback: dict[int, DecodeResult] = {}
        for i in failed:
            r = decode_image(items[i], image_size=self.size, resize_mode="center_crop", max_pixels=2**62)
            if r.status == "ok" and r.pixels is not None:  # decoded after all: scored from the CPU pixels
                crops[i] = torch.from_numpy(r.pixels).to(self.device)
            else:
                fallback[i] = r
        ok = np.asarray(sorted(crops), dtype=np.int64)
        pixels = (
            torch.stack([crops[int(i)] for i in ok])
            if len(ok)
            else torch.zeros((0, self.size, self.size, 3), dtype=torch.uint8, device=self.device)
        )
        return DeviceDecoded(pixels=pixels, ok=ok, fallback=fallback, seconds=time.perf_counter() - t0)


def _groups(sizes: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """Consecutive index groups whose summed pixel count stays within `budget` (at least one item each)."""
    groups: list[list[int]] = []
    used = 0
    for i, (w, h) in enumerate(sizes):
        px = max(int(w), 1) * max(int(h), 1)
        if not groups or used + px > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += px
    return groups
