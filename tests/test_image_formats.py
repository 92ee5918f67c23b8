"""The image types the shard layer reads (`pipeline.shards.IMAGE_TYPES`) and its one open/orientation rule
(`pipeline.shards.open_image` / `upright`), in every consumer: scan decode, the device-decode check, the
training / evaluation sources, `prepare_image` and the report's thumbnails.

Regressions: a JPEG whose EXIF block a broken camera wrote (garbage TIFF header, cut in the header, cut inside
IFD0; bytes written by hand) was `decode_error` although Pillow decodes its pixels; AVIF (and JPEG 2000, PNM,
TGA, ICO) members were `no_image`. References are Pillow's own decode of the same bytes (no orientation
applied) and the arrays the tests encoded.

End to end: a shard of mixed modern formats goes through the real scan (`run_scan`, the scan's in-process
executor, a tiny random-init detector), the filter (byte-identical copies of every kept and quarantined
sample) and the report (a thumbnail per scanned image)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps, features

from pipeline import shards as shard_layer
from pipeline.cli.filter_shards import main as filter_main
from pipeline.cli.report import main as report_main
from pipeline.data.sources import LabelledImage, load_labelled
from pipeline.models.preprocess import prepare_image
from pipeline.report import gallery
from pipeline.scan.decode import decode_image
from pipeline.scan.gpu_decode import device_decodable
from tests.support import badinputs as bi
from tests.support import formats as fm
from tests.support.shards import Sample, good_samples, tar_bytes, write_raw

# the reference decodes (plain Pillow) warn about the damaged EXIF blocks these tests are made of
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")

S = 96
W, H = 112, 104  # > S on both sides: center_crop is a pure window (no resampling)
LEFT, TOP = round((W - S) / 2), round((H - S) / 2)
DAY = "2026-12-07"


def _pillow_rgb(data: bytes) -> np.ndarray:
    """Pillow's own decode of `data`, NO orientation applied (the independent reference)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _window(arr: np.ndarray, size: int = S) -> np.ndarray:
    h, w = arr.shape[:2]
    left, top = round((w - size) / 2), round((h - size) / 2)
    return arr[top : top + size, left : left + size]


def _array(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


# ------------------------------------------------------------------ the supported set


def test_installed_pillow_reads_every_image_type_in_the_table() -> None:
    assert features.check("avif") and features.check("jpg_2000")
    Image.init()
    assert set(shard_layer.IMAGE_FORMATS) - {"MPO"} <= set(Image.OPEN)
    assert shard_layer.IMAGE_FORMATS[-1] == "TGA"  # no signature: tried last
    assert shard_layer.IMAGE_EXTENSIONS[:9] == (
        "jpg",
        "jpeg",
        "png",
        "webp",
        "gif",
        "bmp",
        "tif",
        "tiff",
        "ppm",
    )
    assert len(set(shard_layer.IMAGE_EXTENSIONS)) == len(shard_layer.IMAGE_EXTENSIONS)
    assert set(fm.FORMAT) == set(shard_layer.IMAGE_EXTENSIONS)
    assert {ext: fmt for ext, fmt in shard_layer.IMAGE_TYPES} == fm.FORMAT
    assert not set(shard_layer.UNREAD_IMAGE_EXTENSIONS) & set(shard_layer.IMAGE_EXTENSIONS)


@pytest.mark.parametrize("ext", shard_layer.IMAGE_EXTENSIONS)
def test_every_image_type_decodes_with_its_real_format(ext: str) -> None:
    arr = _array()
    data = fm.encode(arr, ext)
    r = decode_image(data, image_size=S, max_pixels=64_000_000)
    assert r.status == "ok", r.error
    assert (r.width, r.height, r.format) == (W, H, fm.FORMAT[ext])
    np.testing.assert_array_equal(r.pixels, _window(_pillow_rgb(data)))
    if ext in fm.LOSSLESS:  # and that is the array the test wrote
        saved = np.asarray(fm.saved_image(arr, ext).convert("RGB"))
        np.testing.assert_array_equal(r.pixels, saved[TOP : TOP + S, LEFT : LEFT + S])


@pytest.mark.parametrize("ext", shard_layer.IMAGE_EXTENSIONS)
def test_pixel_limit_applies_to_every_type(ext: str) -> None:
    data = fm.encode(_array(), ext)
    assert decode_image(data, image_size=S, max_pixels=W * H).status == "ok"
    r = decode_image(data, image_size=S, max_pixels=W * H - 1)
    assert r.status == "too_large" and (r.width, r.height) == (W, H) and "not decoded" in r.error
    assert r.pixels is None


def test_format_is_what_the_bytes_are_not_what_the_name_says(tmp_path: Path) -> None:
    avif = fm.encode(_array(), "avif")
    url = str(tmp_path / "a.tar")
    write_raw(url, tar_bytes([Sample("x", {"jpg": avif})]))
    (s,) = shard_layer.read_shard(url).samples
    r = decode_image(s.image, image_size=S)
    assert (r.status, r.format) == ("ok", "AVIF")


def test_member_choice_order_is_the_table_order(tmp_path: Path) -> None:
    a = _array()
    members = {ext: fm.encode(a, ext.lower()) for ext in ("tga", "ico", "avif", "JPG", "jp2")}
    samples = [
        Sample("all", dict(members)),
        Sample("modern", {k: v for k, v in members.items() if k != "JPG"}),
        Sample("icons", {"tga": members["tga"], "ico": members["ico"]}),
        Sample("heic", {"heic": b"\x00\x00\x00\x18ftypheic" + bytes(32), "json": b"{}"}),
    ]
    url = str(tmp_path / "c.tar")
    write_raw(url, tar_bytes(samples))
    got = {s.key: s for s in shard_layer.read_shard(url).samples}
    assert [got[k].image_name for k in ("all", "modern", "icons", "heic")] == [
        "all.JPG",
        "modern.avif",
        "icons.ico",
        None,
    ]
    assert "ignored ['all.avif', 'all.jp2', 'all.ico', 'all.tga']" in got["all"].note
    assert "'heic.heic'" in got["heic"].note and "does not read" in got["heic"].note
    # the training / evaluation sources pick the same member (one shard layer)
    for s in shard_layer.labelled_samples(url):
        assert (s.image.name if s.image else None) == got[s.key].image_name


# ------------------------------------------------------------------ broken EXIF blocks


BROKEN = [(name, jfif) for name in bi.BROKEN_EXIF_BLOCKS for jfif in (False, True)]


@pytest.mark.parametrize(
    ("block", "jfif"), BROKEN, ids=[f"{n}-{'jfif' if j else 'camera'}" for n, j in BROKEN]
)
def test_broken_exif_block_is_no_orientation_in_every_consumer(
    block: str, jfif: bool, tmp_path: Path
) -> None:
    data = bi.jpeg_with_app1(bi.BROKEN_EXIF_BLOCKS[block], jfif=jfif, w=W, h=H)
    ref = _pillow_rgb(data)
    assert ref.shape == (H, W, 3)
    # scan decode: ok, as stored, the same pixels as Pillow's own decode, the damage noted
    r = decode_image(data, image_size=S, max_pixels=64_000_000)
    assert r.status == "ok", r.error
    assert (r.width, r.height, r.format) == (W, H, "JPEG")
    np.testing.assert_array_equal(r.pixels, _window(ref))
    assert r.note and "EXIF" in r.note
    # the device-decode check ships it (no orientation on either path)
    assert device_decodable(data, image_size=S, resize_mode="center_crop", max_pixels=10**8) == (W, H)
    # training / evaluation: a folder image and the shared preprocessing
    path = tmp_path / "camera.jpg"
    path.write_bytes(data)
    loaded = LabelledImage(uri=str(path), label=0, generator="g", source="univfd").load()
    np.testing.assert_array_equal(np.asarray(loaded), ref)
    with Image.open(io.BytesIO(data)) as im:
        cut = prepare_image(im, SimpleNamespace(image_size=S, preprocess="center_crop"))  # type: ignore[arg-type]
    np.testing.assert_array_equal(cut, _window(ref))
    # report thumbnail: the stored picture, not an error
    thumb = Image.open(io.BytesIO(gallery.thumbnail(data)))
    assert thumb.size == (W, H)
    assert np.abs(np.asarray(thumb, np.float32) - ref.astype(np.float32)).mean() < 20


def test_valid_orientation_is_still_applied_everywhere(tmp_path: Path) -> None:
    data = bi.jpeg_with_app1(bi.EXIF_ORIENTATION_6, w=W, h=H)
    stored = _pillow_rgb(data)
    shown = np.rot90(stored, k=-1)  # Orientation 6: displayed rotated 90° clockwise
    with Image.open(io.BytesIO(data)) as im:  # Pillow's own rule agrees
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(im).convert("RGB")), shown)
    r = decode_image(data, image_size=S)
    assert r.status == "ok" and (r.width, r.height) == (H, W) and r.note is None
    np.testing.assert_array_equal(r.pixels, _window(shown))
    assert device_decodable(data, image_size=S, resize_mode="center_crop", max_pixels=10**8) is None
    path = tmp_path / "sideways.jpg"
    path.write_bytes(data)
    loaded = LabelledImage(uri=str(path), label=0, generator="g", source="univfd").load()
    np.testing.assert_array_equal(np.asarray(loaded), shown)
    assert Image.open(io.BytesIO(gallery.thumbnail(data))).size == (H, W)
    # applied once: prepare_image on the already upright image does not turn it again
    with Image.open(io.BytesIO(data)) as im:
        up, note = shard_layer.upright(im)
        assert note is None and "exif" not in up.info
        cut = prepare_image(up, SimpleNamespace(image_size=S, preprocess="center_crop"))  # type: ignore[arg-type]
    np.testing.assert_array_equal(cut, _window(shown))


def test_ifd_cut_after_a_whole_orientation_entry_keeps_it() -> None:
    """Pillow keeps the IFD entries it read whole; so do we (with a note): the Orientation value is intact."""
    data = bi.jpeg_with_app1(bi.EXIF_CUT_AFTER_ORIENTATION, w=W, h=H)
    r = decode_image(data, image_size=S)
    assert r.status == "ok" and (r.width, r.height) == (H, W)
    assert "EXIF block damaged" in r.note
    np.testing.assert_array_equal(r.pixels, _window(np.rot90(_pillow_rgb(data), k=-1)))


def test_orientation_out_of_range_is_ignored_with_a_note() -> None:
    import struct

    block = b"Exif\x00\x00II*\x00" + struct.pack("<IHHHIHH", 8, 1, 0x0112, 3, 1, 9, 0) + bytes(4)
    data = bi.jpeg_with_app1(block, w=W, h=H)
    r = decode_image(data, image_size=S)
    assert r.status == "ok" and (r.width, r.height) == (W, H) and "orientation 9" in r.note


# ------------------------------------------------------------------ end to end: scan, filter, report


def _rows(scan: str) -> list[dict]:
    return [r for f in sorted(Path(scan).glob("scan_date=*/*.parquet")) for r in pq.read_table(f).to_pylist()]


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isreg()}  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    import torch

    from pipeline.models import DetectorConfig, create_detector, save_detector
    from pipeline.scan.config import ScanConfig
    from pipeline.scan.job import run_scan

    base = tmp_path_factory.mktemp("formats")
    mixed = fm.mixed_format_samples(size=(W, H))
    plain = good_samples(4, seed=5, prefix="p", size=(W, H), fmt="jpg")
    shards = {"shard-000000": mixed, "shard-000001": plain}
    for name, samples in shards.items():
        write_raw(str(base / "in" / f"{name}.tar"), tar_bytes(samples))
    torch.manual_seed(0)
    det = save_detector(create_detector(DetectorConfig.load("tiny-mole"), pretrained=None), str(base / "det"))
    run = run_scan(
        ScanConfig(
            input=str(base / "in"), output=str(base / "scan"), detector=str(base / "det"), scan_date=DAY
        )
    )
    assert run["status"] == "succeeded"
    return {"base": base, "shards": shards, "rows": _rows(str(base / "scan")), "det": det}


def test_scan_scores_every_modern_format(world) -> None:
    rows = {(r["shard"], r["key"]): r for r in world["rows"]}
    want = {(shard, s.key) for shard, samples in world["shards"].items() for s in samples}
    assert set(rows) == want and len(world["rows"]) == len(want)  # every sample exactly one row
    for s in world["shards"]["shard-000000"]:
        r = rows[("shard-000000", s.key)]
        if s.key == "m_heic":
            assert r["status"] == "no_image" and "does not read" in r["error"]
            continue
        ext, data = next((e, d) for e, d in s.files.items() if e != "json")
        assert r["status"] == "ok", (s.key, r["error"])
        assert r["format"] == fm.FORMAT[ext] and 0.0 <= r["p_fake"] <= 1.0
        assert (r["width"], r["height"]) == ((H, W) if s.key == "m_exif_rotated" else (W, H))
        assert r["sha256"] == hashlib.sha256(data).hexdigest() and r["n_bytes"] == len(data)
    # the same image bytes through the sources (the shard layer's rule), decoded to the scan's pixels
    url = str(world["base"] / "in" / "shard-000000.tar")
    items = {it.key: it for it in load_labelled(url)}
    assert set(items) == {s.key for s in world["shards"]["shard-000000"]} - {"m_heic"}
    for key, it in items.items():
        decoded = decode_image(it.read_bytes(), image_size=S)
        assert decoded.status == "ok" and it.load().size == (decoded.width, decoded.height), key


def test_filter_copies_modern_formats_byte_identical(world) -> None:
    base = world["base"]
    out = base / "clean"
    assert (
        filter_main(
            ["--scan", str(base / "scan"), "--input", str(base / "in"), "--output", str(out)]
            + ["--fake-action", "quarantine"]
        )
        == 0
    )
    rows = world["rows"]
    for shard in world["shards"]:
        src = _members(base / "in" / f"{shard}.tar")
        fake = {r["key"] for r in rows if r["shard"] == shard and r["status"] == "ok" and r["is_fake"]}
        kept = _members(out / f"{shard}.tar")
        quarantined = _members(out / "_quarantine" / f"{shard}.tar") if fake else {}
        # every member of every sample lands in exactly one output, byte-identical; error rows are kept
        assert set(kept) | set(quarantined) == set(src) and not set(kept) & set(quarantined)
        assert all(kept[n] == src[n] for n in kept) and all(quarantined[n] == src[n] for n in quarantined)
        assert {n.split(".", 1)[0] for n in quarantined} == fake
    kinds = {n.rsplit(".", 1)[1] for shard in world["shards"] for n in _members(base / "in" / f"{shard}.tar")}
    assert set(fm.MIXED_TYPES) <= kinds


def test_report_shows_a_thumbnail_of_every_modern_format(world) -> None:
    base = world["base"]
    out = base / "report"
    assert report_main(["--scan", str(base / "scan"), "--output", str(out), "--gallery-size", "32"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    cards = {it["key"]: it for v in summary["galleries"].values() for it in v}
    samples = {s.key: s for s in world["shards"]["shard-000000"]}
    shown = [k for k in samples if k != "m_heic"]
    assert set(shown) <= set(cards)
    for key in shown:
        assert cards[key]["thumb"], (key, cards[key].get("note"))
        data = next(d for e, d in samples[key].files.items() if e != "json")
        with Image.open(io.BytesIO(data)) as im:
            ref = ImageOps.exif_transpose(im).convert("RGB") if key == "m_exif_rotated" else im.convert("RGB")
        thumb = Image.open(out / cards[key]["thumb"])
        assert thumb.format == "JPEG" and thumb.size == ref.size, key
        assert np.abs(np.asarray(thumb, np.float32) - np.asarray(ref, np.float32)).mean() < 20, key
    assert cards["m_heic"]["status"] == "no_image" and cards["m_heic"]["thumb"] is None
