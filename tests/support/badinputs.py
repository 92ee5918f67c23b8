"""The bad-input corpus, generated at test time (nothing binary is committed).

Two levels:
- image payloads (`IMAGE_CASES`): bytes that land in an image member, each with the `decode_image` status it
  must produce (and the row status the scan must write);
- shard payloads (`*_tar` helpers): whole `.tar` objects that are broken or unusual as archives.

`bad_input_shard()` packs every image case (plus sample-level oddities) into ONE shard with the expected row
status per key, for end-to-end runs through the real scan.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

SIZE = (48, 40)  # (width, height) of the small test images: below a 64-px model size -> resized


# ---------------------------------------------------------------- images


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_array(w: int = SIZE[0], h: int = SIZE[1], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def jpeg_bytes(w: int = SIZE[0], h: int = SIZE[1], seed: int = 0, quality: int = 90) -> bytes:
    return _save(Image.fromarray(rgb_array(w, h, seed)), "JPEG", quality=quality)


def png_bytes(w: int = SIZE[0], h: int = SIZE[1], seed: int = 0) -> bytes:
    return _save(Image.fromarray(rgb_array(w, h, seed)), "PNG")


def corrupt_jpeg() -> bytes:
    """JPEG start-of-image + APP0 marker, then garbage where the frame header should be."""
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x13\x37garbage" * 40


def truncated_jpeg() -> bytes:
    """The first 60 % of a valid JPEG: headers intact, entropy-coded data cut."""
    data = jpeg_bytes(64, 64, seed=1)
    return data[: int(len(data) * 0.6)]


def truncated_png() -> bytes:
    data = png_bytes(64, 64, seed=2)
    return data[: len(data) // 2]


def text_named_jpg() -> bytes:
    return b"This is a plain text file that somebody named .jpg\n" * 4


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declared(
    width: int, height: int, bit_depth: int = 8, color_type: int = 0, idat: bytes | None = None
) -> bytes:
    """A PNG whose IHDR declares `width` x `height`; the IDAT holds only a tiny (wrong-sized) stream, so the
    file is a few dozen bytes. A decoder that trusts the header allocates width*height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = idat if idat is not None else zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def png_bomb(side: int = 10_000) -> bytes:
    """A VALID 1-bit PNG of side x side pixels (100 MP at the default) that compresses to ~12 KB: a real
    decompression bomb (decoded to RGB it would take side*side*3 bytes)."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(side)]
    parts.append(comp.flush())
    return png_declared(side, side, bit_depth=1, color_type=0, idat=b"".join(parts))


def huge_dimensions_png() -> bytes:
    """1 x 2,000,000,000 pixels declared (PNG allows up to 2**31-1 per side)."""
    return png_declared(1, 2_000_000_000)


def cmyk_jpeg() -> tuple[bytes, tuple[int, int, int]]:
    """A CMYK JPEG of pure red (C=0, M=Y=255, K=0) and the RGB it should decode to."""
    return _save(Image.new("CMYK", SIZE, (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0)


def png16_gray() -> tuple[bytes, np.ndarray]:
    """A 16-bit grayscale PNG (horizontal ramp over the full 0..65535 range) and the uint16 array."""
    w, h = SIZE
    arr = np.tile(np.linspace(0, 65535, w).astype(np.uint16), (h, 1))
    im = Image.fromarray(arr)
    assert im.mode == "I;16", im.mode
    return _save(im, "PNG"), arr


def palette_png() -> tuple[bytes, np.ndarray]:
    """A palette (mode P) PNG with 4 colours in quadrants, and the RGB array it shows."""
    w, h = SIZE
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (255, 0, 0)
    arr[: h // 2, w // 2 :] = (0, 255, 0)
    arr[h // 2 :, : w // 2] = (0, 0, 255)
    arr[h // 2 :, w // 2 :] = (250, 250, 10)
    im = Image.fromarray(arr).quantize(colors=4, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    assert im.mode == "P"
    return _save(im, "PNG"), arr


def rgba_png() -> tuple[bytes, np.ndarray]:
    """RGBA: left third fully transparent black, middle third half-transparent black, right third opaque
    red. Returns the bytes and the expected RGB composite on white."""
    w, h = SIZE
    arr = np.zeros((h, w, 4), np.uint8)
    third = w // 3
    arr[:, :third] = (0, 0, 0, 0)
    arr[:, third : 2 * third] = (0, 0, 0, 128)
    arr[:, 2 * third :] = (255, 0, 0, 255)
    expected = np.empty((h, w, 3), np.uint8)
    expected[:, :third] = 255
    expected[:, third : 2 * third] = 127  # 255 * (1 - 128/255)
    expected[:, 2 * third :] = (255, 0, 0)
    return _save(Image.fromarray(arr), "PNG"), expected


def la_png() -> tuple[bytes, np.ndarray]:
    """Grayscale + alpha: gray 100 fully transparent (-> white) on top, gray 100 opaque below."""
    w, h = SIZE
    arr = np.zeros((h, w, 2), np.uint8)
    arr[..., 0] = 100
    arr[: h // 2, :, 1] = 0
    arr[h // 2 :, :, 1] = 255
    expected = np.full((h, w, 3), 100, np.uint8)
    expected[: h // 2] = 255
    return _save(Image.fromarray(arr), "PNG"), expected


def animated_gif() -> bytes:
    """Two frames: pure red, then pure blue."""
    frames = [Image.new("RGB", SIZE, (255, 0, 0)), Image.new("RGB", SIZE, (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def webp_lossless() -> tuple[bytes, np.ndarray]:
    arr = rgb_array(seed=5)
    return _save(Image.fromarray(arr), "WEBP", lossless=True), arr


def exif_rotated_jpeg() -> bytes:
    """Stored 80x40 (left half red, right half blue) with EXIF Orientation=6 (display rotated 90° clockwise:
    shown 40 wide x 80 tall, red on top)."""
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())


def gray_png() -> tuple[bytes, np.ndarray]:
    w, h = SIZE
    arr = np.tile(np.arange(w, dtype=np.uint8) * 5, (h, 1))
    return _save(Image.fromarray(arr), "PNG"), arr


def pcx_bytes() -> bytes:
    """A valid PCX: an image format Pillow reads but the scanner does not allow."""
    return _save(Image.new("RGB", (32, 32), (0, 128, 0)), "PCX")


def _jpeg_segments(data: bytes) -> list[bytes]:
    """The marker segments of a baseline JPEG between SOI and the first SOS (each with its marker)."""
    out, i = [], 2
    while data[i + 1] != 0xDA:  # SOS: the entropy-coded data follows
        n = struct.unpack(">H", data[i + 2 : i + 4])[0]
        out.append(data[i : i + 2 + n])
        i += 2 + n
    return out


def with_app1(jpeg: bytes, payload: bytes, *, jfif: bool = False) -> bytes:
    """`jpeg` with the APP1 segment `payload` written by hand as a camera writes it: right after SOI and
    (`jfif=False`) without the JFIF APP0 segment. The entropy-coded data is untouched."""
    segments = _jpeg_segments(jpeg)
    head = b"".join(s for s in segments if jfif or s[:2] != b"\xff\xe0")
    rest = jpeg[2 + sum(len(s) for s in segments) :]
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return b"\xff\xd8" + app1 + head + rest


def jpeg_with_app1(payload: bytes, *, jfif: bool = False, w: int = 80, h: int = 60, seed: int = 7) -> bytes:
    """A baseline JPEG of `rgb_array(w, h, seed)` carrying the APP1 `payload` (see `with_app1`)."""
    return with_app1(jpeg_bytes(w, h, seed=seed), payload, jfif=jfif)


def _ifd_entry(tag: int, typ: int, count: int, value: int) -> bytes:
    """One little-endian TIFF IFD entry (12 bytes), SHORT value left-justified in the value field."""
    return struct.pack("<HHI", tag, typ, count) + (
        struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
    )


EXIF_TIFF_LE = (
    b"Exif\x00\x00II*\x00"  # APP1 EXIF header, then a little-endian TIFF header up to its IFD0 offset
)
ORIENTATION_6 = _ifd_entry(0x0112, 3, 1, 6)  # Orientation (SHORT) = 6: rotate 90 degrees
WIDTH_80 = _ifd_entry(0x0100, 3, 1, 80)  # ImageWidth (SHORT) = 80


def _exif_ifd0(declared: int, body: bytes) -> bytes:
    """An EXIF block whose IFD0 (right after the TIFF header, at offset 8) declares `declared` entries and
    holds `body` (its entries, whole or cut, and what follows them)."""
    return EXIF_TIFF_LE + struct.pack("<I", 8) + struct.pack("<H", declared) + body


# EXIF blocks a broken camera writes (APP1 payloads: "Exif\0\0" then a TIFF structure)
EXIF_GARBAGE_HEADER = b"Exif\x00\x00" + b"\xff\xff\xff\xff" + bytes(range(7, 47))  # no II*\0 / MM\0*
EXIF_CUT_IN_HEADER = EXIF_TIFF_LE + b"\x08\x00"  # the IFD0 offset cut after 2 of its 4 bytes
# IFD0 declares 3 entries: ImageWidth (whole), then Orientation=6 cut after 6 of its 12 bytes
EXIF_CUT_IN_IFD = _exif_ifd0(3, WIDTH_80 + ORIENTATION_6[:6])
# IFD0 declares 3 entries: Orientation=6 (whole), then cut inside the second: the entries read whole count
EXIF_CUT_AFTER_ORIENTATION = _exif_ifd0(3, ORIENTATION_6 + WIDTH_80[:5])
# a valid block, as a camera held sideways writes it: IFD0 with Orientation=6 and no next IFD
EXIF_ORIENTATION_6 = _exif_ifd0(1, ORIENTATION_6 + struct.pack("<I", 0))
BROKEN_EXIF_BLOCKS = {
    "garbage_header": EXIF_GARBAGE_HEADER,
    "cut_in_header": EXIF_CUT_IN_HEADER,
    "cut_in_ifd": EXIF_CUT_IN_IFD,
}


def eps_bytes() -> bytes:
    """An EPS header (Pillow would hand EPS to Ghostscript; the scanner must refuse it)."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


@dataclass(frozen=True)
class ImageCase:
    name: str  # also the sample key in `bad_input_shard`
    ext: str  # member extension
    make: Callable[[], bytes]
    status: str  # decode_image status = row status


def _first(f: Callable[[], tuple[bytes, object]]) -> Callable[[], bytes]:
    return lambda: f()[0]


IMAGE_CASES: tuple[ImageCase, ...] = (
    ImageCase("good_jpeg", "jpg", jpeg_bytes, "ok"),
    ImageCase("good_png", "png", png_bytes, "ok"),
    ImageCase("corrupt_jpeg", "jpg", corrupt_jpeg, "decode_error"),
    ImageCase("truncated_jpeg", "jpg", truncated_jpeg, "decode_error"),
    ImageCase("truncated_png", "png", truncated_png, "decode_error"),
    ImageCase("empty_member", "jpg", lambda: b"", "decode_error"),
    ImageCase("text_named_jpg", "jpg", text_named_jpg, "decode_error"),
    ImageCase("png_bomb_declared", "png", lambda: png_declared(100_000, 100_000), "too_large"),
    ImageCase("png_bomb_valid", "png", png_bomb, "too_large"),
    ImageCase("huge_dimensions", "png", huge_dimensions_png, "too_large"),
    ImageCase("cmyk_jpeg", "jpg", _first(cmyk_jpeg), "ok"),
    ImageCase("png16_gray", "png", _first(png16_gray), "ok"),
    ImageCase("palette_png", "png", _first(palette_png), "ok"),
    ImageCase("rgba_png", "png", _first(rgba_png), "ok"),
    ImageCase("la_png", "png", _first(la_png), "ok"),
    ImageCase("animated_gif", "gif", animated_gif, "ok"),
    ImageCase("webp", "webp", _first(webp_lossless), "ok"),
    ImageCase("exif_rotated_jpeg", "jpg", exif_rotated_jpeg, "ok"),
    ImageCase("grayscale_png", "png", _first(gray_png), "ok"),
    ImageCase("exif_garbage_jpeg", "jpg", lambda: jpeg_with_app1(EXIF_GARBAGE_HEADER), "ok"),
    ImageCase("exif_cut_in_ifd_jpeg", "jpg", lambda: jpeg_with_app1(EXIF_CUT_IN_IFD, jfif=True), "ok"),
    ImageCase(
        "good_avif", "avif", lambda: _save(Image.fromarray(rgb_array(seed=8)), "AVIF", quality=90), "ok"
    ),
    ImageCase("pcx_not_allowed", "png", pcx_bytes, "decode_error"),
    ImageCase("eps_not_allowed", "jpg", eps_bytes, "decode_error"),
)


# ---------------------------------------------------------------- tars

Member = tuple[str, bytes]  # (member name, payload); a name ending in "/" is a directory entry


def tar_bytes(members: Sequence[Member], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar of `members` in the given order (GNU format: raw non-UTF-8 names survive as bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tf:
        for name, payload in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = 0
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def meta(i: int) -> bytes:
    return json.dumps({"label": i % 2, "generator": "real" if i % 2 == 0 else "famA"}).encode()


def good_members(n: int, prefix: str = "g", seed: int = 0, size: tuple[int, int] = SIZE) -> list[Member]:
    out: list[Member] = []
    for i in range(n):
        png = png_bytes(size[0], size[1], seed=seed + i)
        out += [(f"{prefix}{i:04d}.png", png), (f"{prefix}{i:04d}.json", meta(i))]
    return out


def member_offsets(members: Sequence[Member], fmt: int = tarfile.GNU_FORMAT) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of each member in `tar_bytes(members)`."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(members, fmt)), mode="r:") as tf:
        return [(m.name, m.offset, m.offset_data) for m in tf.getmembers()]


def truncated_mid_member_tar(members: Sequence[Member], member_index: int) -> bytes:
    """The tar cut in the middle of member `member_index`'s payload."""
    data = tar_bytes(members)
    offsets = member_offsets(members)
    _, _, start = offsets[member_index]
    size = len(members[member_index][1])
    assert size >= 2, "need a payload to cut"
    return data[: start + size // 2]


def truncated_mid_header_tar(members: Sequence[Member], member_index: int) -> bytes:
    """The tar cut 100 bytes into member `member_index`'s header."""
    data = tar_bytes(members)
    return data[: member_offsets(members)[member_index][1] + 100]


def truncated_at_boundary_tar(members: Sequence[Member], n_members: int) -> bytes:
    """The tar cut exactly after `n_members` members (no end-of-archive blocks)."""
    data = tar_bytes(members)
    offsets = member_offsets(members)
    return data[: offsets[n_members][1]]


def non_tar_bytes() -> bytes:
    """A JPEG saved under a `.tar` name."""
    return jpeg_bytes(64, 64)


def non_utf8_name(stem: bytes = b"caf\xe9") -> str:
    """A member stem with a Latin-1 byte (invalid UTF-8), as tarfile decodes it (surrogateescape)."""
    return stem.decode("utf-8", "surrogateescape")


@dataclass
class BadShard:
    members: list[Member]
    expected: list[tuple[str, str]]  # (key, row status) in tar order, one per sample (row)

    @property
    def data(self) -> bytes:
        return tar_bytes(self.members)


def bad_input_shard(n_good: int = 3) -> BadShard:
    """One readable shard holding every image case plus sample-level oddities (non-image member only, bad
    JSON, junk members, a directory, a key in a sub-folder, a duplicate key, a non-UTF-8 name)."""
    members: list[Member] = []
    expected: list[tuple[str, str]] = []
    for i, (name, payload) in enumerate(good_members(n_good, prefix="good")):
        members.append((name, payload))
        if i % 2 == 0:
            expected.append((name.split(".")[0], "ok"))
    members.append(("__MACOSX/", b""))
    members.append(("__MACOSX/._good0000.png", b"\x00\x05\x16\x07junk"))
    members.append(("._good0000.png", b"\x00\x05\x16\x07junk"))
    members.append(("subdir/", b""))
    for i, case in enumerate(IMAGE_CASES):
        members += [(f"{case.name}.{case.ext}", case.make()), (f"{case.name}.json", meta(i))]
        expected.append((case.name, case.status))
    members += [("only_text.txt", b"caption only"), ("only_text.json", meta(0))]
    expected.append(("only_text", "no_image"))
    members += [("bad_json.png", png_bytes(seed=11)), ("bad_json.json", b"{not json")]
    expected.append(("bad_json", "ok"))
    members += [("subdir/nested.sample.png", png_bytes(seed=12))]
    expected.append(("subdir/nested", "ok"))
    members += [("UPPER.JPG", jpeg_bytes(seed=13))]
    expected.append(("UPPER", "ok"))
    members += [(f"{non_utf8_name()}.png", png_bytes(seed=14))]
    expected.append(("caf\\xe9", "ok"))
    members += [("good0000.png", png_bytes(seed=15))]  # duplicate key, after other keys
    expected.append(("good0000", "ok"))
    return BadShard(members, expected)


# ---------------------------------------------------------------- end-to-end corpus


@dataclass
class ShardCase:
    name: str  # shard file name without .tar
    data: bytes
    expected: list[tuple[str, str]]  # (key, status) of the sample rows, tar order
    shard_error: bool  # one extra shard_error row expected
    image_bytes: dict[str, bytes] = field(default_factory=dict)  # key -> image member bytes (unique keys)


def e2e_corpus() -> list[ShardCase]:
    """Shards for an end-to-end run: the all-cases shard plus every broken-archive case."""
    bad = bad_input_shard()
    five = good_members(5, prefix="t")
    four = good_members(4, prefix="b")
    inter = [
        ("c.png", png_bytes(seed=21)),
        ("a.png", png_bytes(seed=22)),
        ("b.jpg", jpeg_bytes(seed=23)),
        ("a.json", meta(1)),
    ]

    def images(members: Sequence[Member]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for name, payload in members:
            stem = name.rsplit("/", 1)[-1].split(".")[0]
            key = (name.rsplit("/", 1)[0] + "/" + stem) if "/" in name else stem
            if not name.endswith(("/", ".json", ".txt")) and not name.startswith(("__MACOSX", "._")):
                out.setdefault(key, payload)
        return out

    return [
        ShardCase(
            "shard-000000",
            bad.data,
            bad.expected,
            False,
            {k: v for k, v in images(bad.members).items() if "\udce9" not in k},
        ),
        ShardCase(
            "shard-000001",
            truncated_mid_member_tar(five, 5),
            [("t0000", "ok"), ("t0001", "ok"), ("t0002", "ok")],
            True,
            images(five[:5]),
        ),
        ShardCase("shard-000002", non_tar_bytes(), [], True),
        ShardCase("shard-000003", b"", [], True),
        ShardCase(
            "shard-000004",
            tar_bytes(inter),
            [("c", "ok"), ("a", "ok"), ("b", "ok"), ("a", "no_image")],
            False,
        ),
        ShardCase(
            "shard-000005",
            truncated_at_boundary_tar(four, 4),
            [("b0000", "ok"), ("b0001", "ok")],
            True,
            images(four[:4]),
        ),
        ShardCase("shard-000006", b"\0" * 10240, [], False),  # a valid, empty tar
    ]
