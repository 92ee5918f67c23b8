"""Images in every type the shard layer reads (`pipeline.shards.IMAGE_TYPES`), encoded by Pillow at test time,
and a shard of mixed modern formats for end-to-end runs (scan, filter, report). Nothing binary is committed.

`encode(arr, ext)` writes an RGB array as the type an extension names, the way a producer of that type writes
it (AVIF, JPEG 2000 in its .jp2 box and as a raw .j2k codestream, PGM gray, PBM 1-bit, ICO, TGA, …).
`LOSSLESS` lists the types that give back the array exactly.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from tests.support import badinputs as bi
from tests.support.shards import Sample

# extension -> (Pillow format to save, mode to save in, save options)
_SAVE: dict[str, tuple[str, str, dict[str, object]]] = {
    "jpg": ("JPEG", "RGB", {"quality": 95}),
    "jpeg": ("JPEG", "RGB", {"quality": 95}),
    "jfif": ("JPEG", "RGB", {"quality": 95}),
    "png": ("PNG", "RGB", {}),
    "apng": ("PNG", "RGB", {}),
    "webp": ("WEBP", "RGB", {"lossless": True}),
    "gif": ("GIF", "P", {}),
    "bmp": ("BMP", "RGB", {}),
    "tif": ("TIFF", "RGB", {}),
    "tiff": ("TIFF", "RGB", {}),
    "ppm": ("PPM", "RGB", {}),
    "pnm": ("PPM", "RGB", {}),
    "pgm": ("PPM", "L", {}),
    "pbm": ("PPM", "1", {}),
    "avif": ("AVIF", "RGB", {"quality": 90}),
    "jp2": ("JPEG2000", "RGB", {}),  # the JP2 box format
    "j2k": ("JPEG2000", "RGB", {"no_jp2": True}),  # a raw codestream
    "ico": ("ICO", "RGBA", {}),
    "tga": ("TGA", "RGB", {}),
}
# types whose decode gives back the saved pixels exactly (in the mode saved)
LOSSLESS = (
    "png",
    "apng",
    "webp",
    "bmp",
    "tif",
    "tiff",
    "ppm",
    "pnm",
    "pgm",
    "pbm",
    "jp2",
    "j2k",
    "ico",
    "tga",
)
# the Pillow format name a file of each type reports (`format` column)
FORMAT = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "jfif": "JPEG",
    "png": "PNG",
    "apng": "PNG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "ppm": "PPM",
    "pnm": "PPM",
    "pgm": "PPM",
    "pbm": "PPM",
    "avif": "AVIF",
    "jp2": "JPEG2000",
    "j2k": "JPEG2000",
    "ico": "ICO",
    "tga": "TGA",
}


def saved_image(arr: np.ndarray, ext: str) -> Image.Image:
    """The image `encode` writes for `ext` (in the mode that type stores)."""
    _, mode, _ = _SAVE[ext]
    im = Image.fromarray(arr)
    if mode == "P":
        return im.quantize(64)
    return im.convert(mode)


def encode(arr: np.ndarray, ext: str) -> bytes:
    fmt, _, opts = _SAVE[ext]
    im = saved_image(arr, ext)
    if fmt == "ICO":
        opts = {"sizes": [im.size]}  # one icon of the full size (Pillow's default set would shrink it)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **opts)
    return buf.getvalue()


def smooth_array(w: int, h: int, seed: int) -> np.ndarray:
    """Colour gradients + mild noise: photo-like content, so a JPEG re-encoding (report thumbnails) stays
    close to the source (pure noise is JPEG's worst case)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    phase = rng.uniform(0, 6, 3)
    base = np.stack(
        [np.sin(x / (9.0 + c) + phase[c]) * 70 + np.cos(y / (13.0 + 4 * c)) * 50 + 128 for c in range(3)], -1
    )
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


# the modern formats of the mixed shard (one sample each, key `m_<ext>`)
MIXED_TYPES = ("avif", "jp2", "j2k", "pgm", "pnm", "pbm", "tga", "ico", "webp", "jfif")


def mixed_format_samples(size: tuple[int, int] = (112, 104), seed: int = 40) -> list[Sample]:
    """One sample per modern type (`smooth_array` pixels, `size` = (w, h)) with a JSON label, two JPEGs whose
    EXIF block a broken camera wrote (garbage TIFF header; cut inside IFD0), a JPEG with a valid Orientation=6
    block, and a HEIC-only sample (a type not read: `no_image`). Keys say the type: `m_<ext>`."""
    w, h = size
    out: list[Sample] = []
    for i, ext in enumerate(MIXED_TYPES):
        arr = smooth_array(w, h, seed + i)
        meta = {"label": i % 2, "generator": "famA" if i % 2 else "real"}
        out.append(Sample(f"m_{ext}", {ext: encode(arr, ext), "json": json.dumps(meta).encode()}))
    for name, block in (("garbage", bi.EXIF_GARBAGE_HEADER), ("cut", bi.EXIF_CUT_IN_IFD)):
        data = bi.with_app1(encode(smooth_array(w, h, seed + len(out)), "jpg"), block)
        out.append(Sample(f"m_exif_{name}", {"jpg": data, "json": b'{"label": 0, "generator": "real"}'}))
    rotated = bi.with_app1(encode(smooth_array(w, h, seed + len(out)), "jpg"), bi.EXIF_ORIENTATION_6)
    out.append(Sample("m_exif_rotated", {"jpg": rotated, "json": b'{"label": 1, "generator": "famA"}'}))
    out.append(Sample("m_heic", {"heic": b"\x00\x00\x00\x18ftypheic" + bytes(64), "json": b'{"label": 0}'}))
    return out
