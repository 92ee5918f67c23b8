"""Bad input -> a DEFINED outcome, never a crash, nothing lost: `decode_image` and `read_shard` unit cases.

The corpus is generated at test time (tests/support/badinputs.py). End-to-end runs of the same corpus through
the real scan job live in tests/test_reliability_scan.py.
"""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from torchvision import transforms

from pipeline.scan.decode import decode_image
from pipeline.shards import list_shard, read_shard, split_key
from tests.support import badinputs as bi

S = 64


def _decode(data: bytes, size: int = S, **kw: object):
    return decode_image(
        data,
        image_size=size,
        resize_mode=kw.pop("resize_mode", "center_crop"),
        max_pixels=kw.pop("max_pixels", 64_000_000),
    )


# ------------------------------------------------------------------ decode_image: every case


@pytest.mark.parametrize("case", bi.IMAGE_CASES, ids=lambda c: c.name)
def test_decode_case_has_defined_outcome(case: bi.ImageCase) -> None:
    r = _decode(case.make())
    assert r.status == case.status, (r.status, r.error)
    if case.status == "ok":
        assert r.pixels is not None and r.pixels.shape == (S, S, 3) and r.pixels.dtype == np.uint8
        assert r.error is None and r.width and r.height and r.format
    else:
        assert r.pixels is None
        assert r.error and len(r.error) > 10  # a message a person can act on


def _torchvision_reference(arr: np.ndarray, size: int) -> np.ndarray:
    """Independent reference for the crop rule: torchvision Resize(shorter side) + CenterCrop on PIL."""
    im = Image.fromarray(arr)
    if min(im.size) < size:
        im = transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC)(im)
    return np.asarray(transforms.CenterCrop(size)(im))


def test_small_image_is_resized_then_center_cropped_like_torchvision() -> None:
    arr = bi.rgb_array(48, 40, seed=3)
    r = _decode(bi._save(Image.fromarray(arr), "PNG"))
    np.testing.assert_array_equal(r.pixels, _torchvision_reference(arr, S))
    assert (r.width, r.height, r.format) == (48, 40, "PNG")


def test_large_image_is_center_cropped_without_resize() -> None:
    arr = bi.rgb_array(101, 90, seed=4)
    r = _decode(bi._save(Image.fromarray(arr), "PNG"))
    top, left = round((90 - S) / 2), round((101 - S) / 2)
    np.testing.assert_array_equal(r.pixels, arr[top : top + S, left : left + S])


def test_resize_crop_mode_resizes_large_images() -> None:
    arr = bi.rgb_array(130, 100, seed=6)
    r = _decode(bi._save(Image.fromarray(arr), "PNG"), resize_mode="resize_crop")
    ref = transforms.CenterCrop(S)(
        transforms.Resize(S, interpolation=transforms.InterpolationMode.BICUBIC)(Image.fromarray(arr))
    )
    np.testing.assert_array_equal(r.pixels, np.asarray(ref))


def test_cmyk_jpeg_converts_to_rgb_colour() -> None:
    data, rgb = bi.cmyk_jpeg()
    r = _decode(data)
    assert r.status == "ok" and r.format == "JPEG"
    assert np.abs(r.pixels.astype(int) - np.array(rgb)).max() <= 3


def test_16bit_png_is_scaled_not_clipped() -> None:
    data, arr16 = bi.png16_gray()
    r = _decode(data, size=32)  # 48x40 -> center crop 32 without resize: exact comparison
    expected = (arr16 >> 8).astype(np.uint8)[4:36, 8:40]
    for c in range(3):
        np.testing.assert_array_equal(r.pixels[..., c], expected)
    assert r.pixels.min() < 60 and r.pixels.max() > 200  # the ramp survives: clipping would give ~all 255
    assert len(np.unique(r.pixels[..., 0])) > 20


def test_palette_png_shows_its_colours() -> None:
    data, arr = bi.palette_png()
    r = _decode(data, size=32)
    np.testing.assert_array_equal(r.pixels, arr[4:36, 8:40])


def test_rgba_is_composited_on_white() -> None:
    data, expected = bi.rgba_png()
    r = _decode(data, size=32)
    assert np.abs(r.pixels.astype(int) - expected[4:36, 8:40]).max() <= 1


def test_gray_alpha_is_composited_on_white() -> None:
    data, expected = bi.la_png()
    r = _decode(data, size=32)
    assert np.abs(r.pixels.astype(int) - expected[4:36, 8:40]).max() <= 1


def test_animated_gif_scores_first_frame() -> None:
    r = _decode(bi.animated_gif())
    assert r.status == "ok" and r.format == "GIF"
    assert (r.pixels == np.array([255, 0, 0], np.uint8)).all()
    assert r.note and "2 frames" in r.note


def test_lossless_webp_is_exact() -> None:
    data, arr = bi.webp_lossless()
    r = _decode(data, size=32)
    assert r.format == "WEBP"
    np.testing.assert_array_equal(r.pixels, arr[4:36, 8:40])


def test_exif_orientation_is_applied() -> None:
    r = _decode(bi.exif_rotated_jpeg(), size=32)
    assert (r.width, r.height) == (40, 80)  # displayed size: stored 80x40 rotated by Orientation=6
    px = r.pixels.astype(int)  # crop rows 24..55 of the 80-tall image: top 16 rows red, bottom 16 blue
    assert np.abs(px[:14] - [255, 0, 0]).max() < 40
    assert np.abs(px[18:] - [0, 0, 255]).max() < 40


def test_grayscale_becomes_three_equal_channels() -> None:
    data, arr = bi.gray_png()
    r = _decode(data, size=32)
    for c in range(3):
        np.testing.assert_array_equal(r.pixels[..., c], arr[4:36, 8:40])


def test_bomb_is_refused_from_the_header_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Header only: Pillow's pixel loader (`ImageFile.load`; a 100 MP decode is 300 MB of RGB) never runs for
    the bomb; the same counter sees the loads of a small image's decode, so it would see the bomb's."""
    loads: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def counted_load(im: ImageFile.ImageFile):
        loads.append(im.size)
        return real_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    data = bi.png_bomb(10_000)  # valid 100 MP PNG in ~12 KB
    assert len(data) < 20_000
    r = _decode(data, max_pixels=50_000_000)
    assert r.status == "too_large" and (r.width, r.height) == (10_000, 10_000) and r.pixels is None
    assert "not decoded" in r.error and "max_pixels=50000000" in r.error
    assert loads == []
    buf = io.BytesIO()
    Image.new("RGB", (80, 70)).save(buf, format="PNG")
    assert _decode(buf.getvalue()).status == "ok" and loads and set(loads) == {(80, 70)}


def test_pillow_global_limit_is_also_too_large_even_with_a_high_max_pixels() -> None:
    r = _decode(bi.png_declared(100_000, 100_000), max_pixels=10**12)
    assert r.status == "too_large" and "pixel" in r.error


def test_max_pixels_boundary() -> None:
    data = bi.png_bytes(48, 40)
    assert _decode(data, max_pixels=48 * 40).status == "ok"
    r = _decode(data, max_pixels=48 * 40 - 1)
    assert r.status == "too_large" and (r.width, r.height) == (48, 40)


def test_disallowed_formats_are_refused_with_the_allow_list() -> None:
    for data in (bi.pcx_bytes(), bi.eps_bytes()):
        r = _decode(data)
        assert r.status == "decode_error" and "allowed formats" in r.error


def test_bad_resize_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="resize_mode"):
        decode_image(bi.png_bytes(), image_size=S, resize_mode="stretch", max_pixels=10**6)  # type: ignore[arg-type]


def test_decode_never_raises_on_mutated_bytes() -> None:
    """300 random corruptions (bit flips, cuts, splices) of valid JPEG/PNG/GIF/WebP files: every one gets a
    status from the contract, never an exception; `ok` always comes with (S,S,3) pixels."""
    rng = random.Random(1234)
    seeds = [bi.jpeg_bytes(64, 48), bi.png_bytes(64, 48), bi.animated_gif(), bi.webp_lossless()[0]]
    counts: dict[str, int] = {}
    for i in range(300):
        data = bytearray(rng.choice(seeds))
        op = i % 3
        if op == 0:
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 1:
            data = data[: rng.randrange(1, len(data))]
        else:
            a = rng.randrange(len(data))
            data[a : a + rng.randint(1, 64)] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        r = _decode(bytes(data))
        counts[r.status] = counts.get(r.status, 0) + 1
        assert r.status in ("ok", "decode_error", "too_large")
        if r.status == "ok":
            assert r.pixels is not None and r.pixels.shape == (S, S, 3)
        else:
            assert r.pixels is None and r.error
    assert counts.get("decode_error", 0) > 30  # the corruptions really were caught, not all decoded


# ------------------------------------------------------------------ read_shard


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_key_rule_matches_webdataset() -> None:
    from webdataset.tariterators import base_plus_ext

    for name in ("a.png", "dir/sub/a.b.c.jpg", "x.y/z.tar.gz", "UPPER.JPG", "noext", "dir.d/noext"):
        ref = base_plus_ext(name)
        ours = split_key(name)
        assert (ours or (None, None)) == tuple(ref), name


def test_bad_input_shard_every_sample_accounted_for(tmp_path: Path) -> None:
    shard = bi.bad_input_shard()
    c = read_shard(_write(tmp_path, "bad.tar", shard.data))
    assert c.error is None
    assert [s.key for s in c.samples] == [k for k, _ in shard.expected]
    statuses = []
    for s in c.samples:
        if s.image is None:
            statuses.append("no_image")
        else:
            statuses.append(
                decode_image(s.image, image_size=S, resize_mode="center_crop", max_pixels=64_000_000).status
            )
    assert statuses == [st for _, st in shard.expected]
    skipped = dict(c.skipped)
    assert "__MACOSX" in skipped["__MACOSX/._good0000.png"] and "AppleDouble" in skipped["._good0000.png"]
    assert skipped["subdir"] == "directory" and skipped["__MACOSX"] == "directory"
    by_key = {}
    for s in c.samples:
        by_key.setdefault(s.key, []).append(s)
    assert by_key["only_text"][0].image is None and "only_text.txt" in by_key["only_text"][0].note
    assert by_key["bad_json"][0].meta is None and "not valid JSON" in by_key["bad_json"][0].note
    assert by_key["good0000"][0].meta == {"label": 0, "generator": "real"}
    dup = by_key["good0000"]
    assert len(dup) == 2 and dup[1].meta is None and "occurrence 2" in dup[1].note
    assert by_key["subdir/nested"][0].image_name == "subdir/nested.sample.png"
    assert by_key["empty_member"][0].image == b""  # kept so that decoding reports it
    for s in c.samples:
        s.key.encode("utf-8")  # every key is valid UTF-8 (Parquet-safe)


def test_truncated_mid_member_salvages_preceding_samples(tmp_path: Path) -> None:
    members = bi.good_members(5)
    # cut inside g0002.png (member 4): g0000, g0001 complete; g0002 never started
    c = read_shard(_write(tmp_path, "t1.tar", bi.truncated_mid_member_tar(members, 4)))
    assert [s.key for s in c.samples] == ["g0000", "g0001"]
    assert all(s.meta is not None and s.image for s in c.samples)
    assert c.error and "g0002.png" in c.error
    # cut inside g0002.json (member 5): g0002 salvaged with its image, marked incomplete
    c = read_shard(_write(tmp_path, "t2.tar", bi.truncated_mid_member_tar(members, 5)))
    assert [s.key for s in c.samples] == ["g0000", "g0001", "g0002"]
    last = c.samples[-1]
    assert last.image == members[4][1] and last.meta is None and "truncated" in last.note
    assert c.error and "g0002.json" in c.error


def test_truncated_mid_header_and_at_member_boundary(tmp_path: Path) -> None:
    members = bi.good_members(4)
    c = read_shard(_write(tmp_path, "h.tar", bi.truncated_mid_header_tar(members, 6)))
    assert [s.key for s in c.samples] == ["g0000", "g0001", "g0002"] and c.error
    c = read_shard(_write(tmp_path, "b.tar", bi.truncated_at_boundary_tar(members, 4)))
    assert [s.key for s in c.samples] == ["g0000", "g0001"]
    assert c.error and "end-of-archive" in c.error


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.tar", b"", "empty shard (0 bytes)"),
        ("jpeg.tar", bi.non_tar_bytes(), "not a tar archive"),
        ("text.tar", b"hello, this is not a tar\n" * 100, "not a tar archive"),
    ],
)
def test_unreadable_shards_set_error_without_raising(
    tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    c = read_shard(_write(tmp_path, name, data))
    assert c.samples == [] and c.error and message in c.error


def test_zero_filled_object_is_an_empty_tar(tmp_path: Path) -> None:
    c = read_shard(_write(tmp_path, "zeros.tar", b"\0" * 10240))
    assert c.samples == [] and c.error is None


@pytest.mark.timeout(30)
def test_missing_shard_and_directory(tmp_path: Path) -> None:
    c = list_shard(
        str(tmp_path / "nope.tar"), backoff_s=60
    )  # a retry would wait 60 s: the timeout mark fails it
    assert c.error and "not found" in c.error and c.attempts == 1  # a missing object is permanent: no retries
    (tmp_path / "dir.tar").mkdir()
    c = read_shard(str(tmp_path / "dir.tar"))
    assert c.samples == [] and c.error


def test_keys_out_of_order_keep_tar_order(tmp_path: Path) -> None:
    members = [
        ("c.png", bi.png_bytes(seed=1)),
        ("a.png", bi.png_bytes(seed=2)),
        ("b.png", bi.png_bytes(seed=3)),
    ]
    c = read_shard(_write(tmp_path, "o.tar", bi.tar_bytes(members)))
    assert [s.key for s in c.samples] == ["c", "a", "b"] and c.error is None


def test_interleaved_members_are_separate_samples_not_merged(tmp_path: Path) -> None:
    members = [("a.png", bi.png_bytes(seed=1)), ("b.png", bi.png_bytes(seed=2)), ("a.json", bi.meta(1))]
    c = read_shard(_write(tmp_path, "i.tar", bi.tar_bytes(members)))
    assert [(s.key, s.image_name, s.meta) for s in c.samples] == [
        ("a", "a.png", None),
        ("b", "b.png", None),
        ("a", None, {"label": 1, "generator": "famA"}),
    ]
    assert "occurrence 2" in c.samples[2].note and "no image member" in c.samples[2].note


def test_repeated_extension_in_a_run_starts_a_new_sample(tmp_path: Path) -> None:
    p1, p2 = bi.png_bytes(seed=1), bi.png_bytes(seed=2)
    c = read_shard(_write(tmp_path, "d.tar", bi.tar_bytes([("a.png", p1), ("a.png", p2)])))
    assert [(s.key, s.image) for s in c.samples] == [("a", p1), ("a", p2)]


def test_non_utf8_member_names_give_usable_keys(tmp_path: Path) -> None:
    name = bi.non_utf8_name(b"caf\xe9/\xff\xfeimg")
    c = read_shard(
        _write(
            tmp_path, "u.tar", bi.tar_bytes([(f"{name}.png", bi.png_bytes()), (f"{name}.json", bi.meta(0))])
        )
    )
    assert c.error is None and len(c.samples) == 1
    s = c.samples[0]
    assert s.key == "caf\\xe9/\\xff\\xfeimg" and s.meta is not None
    assert s.key.encode("utf-8")


def test_multiple_image_members_pick_by_priority(tmp_path: Path) -> None:
    members = [("a.png", bi.png_bytes()), ("a.jpg", bi.jpeg_bytes()), ("a.txt", b"caption")]
    c = read_shard(_write(tmp_path, "m.tar", bi.tar_bytes(members)))
    s = c.samples[0]
    assert s.image_name == "a.jpg" and "ignored ['a.png']" in s.note


def test_oversized_member_is_not_read(tmp_path: Path) -> None:
    members = [("a.png", bi.png_bytes(200, 200)), ("a.json", bi.meta(0)), ("b.png", bi.png_bytes())]
    c = read_shard(_write(tmp_path, "big.tar", bi.tar_bytes(members)), max_member_bytes=50_000)
    assert c.error is None and [s.key for s in c.samples] == ["a", "b"]
    assert c.samples[0].image is None and "limit" in c.samples[0].note and c.samples[0].meta is not None
    assert c.samples[1].image is not None


def test_links_and_other_member_types_are_skipped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        payload = bi.png_bytes()
        info = tarfile.TarInfo("a.png")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("b.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    c = read_shard(_write(tmp_path, "l.tar", buf.getvalue()))
    assert [s.key for s in c.samples] == ["a"] and c.error is None
    assert "not a regular file" in dict(c.skipped)["b.png"]


@pytest.mark.parametrize("variant", ["full", "mid_member", "boundary"])
def test_streaming_path_equals_in_memory_path(tmp_path: Path, variant: str) -> None:
    members = bi.good_members(12)
    data = {
        "full": bi.tar_bytes(members),
        "mid_member": bi.truncated_mid_member_tar(members, 15),
        "boundary": bi.truncated_at_boundary_tar(members, 10),
    }[variant]
    url = _write(tmp_path, "s.tar", data)
    mem = list_shard(url)
    stream = list_shard(url, max_in_memory_bytes=1000, block_size=4096)
    assert mem.samples == stream.samples  # every member's bytes, keys and notes
    assert mem.error == stream.error
    assert (mem.error is None) == (variant == "full")


# ------------------------------------------------------------------ end to end: the real scan job


@pytest.fixture(scope="module")
def scan_world(tmp_path_factory, shared_s3_ray):
    """moto S3 with the bad-input corpus and a tiny detector; a real Ray head with the S3 env (the run's
    shared ones: tests/conftest.py)."""
    import torch

    from pipeline.models import DetectorConfig, create_detector, save_detector
    from tests.support.shards import make_bucket, write_raw

    tmp = tmp_path_factory.mktemp("relscan")
    bucket = make_bucket("badcorpus")
    corpus = bi.e2e_corpus()
    for case in corpus:
        write_raw(f"{bucket}/shards/{case.name}.tar", case.data)
    torch.manual_seed(0)
    save_detector(create_detector(DetectorConfig.load("tiny-mole"), pretrained=None), f"{bucket}/det")
    yield {"head": shared_s3_ray["head"], "bucket": bucket, "corpus": corpus, "tmp": tmp}


@pytest.mark.slow
def test_scan_job_accounts_for_every_bad_input(scan_world) -> None:
    """`ray job submit` of the scan over the whole bad-input corpus: the job succeeds, every sample is exactly
    one row with its defined status, every broken shard adds exactly one shard_error row, the image bytes in
    the rows are the bytes in the shards (sha256), and Parquet reads back with pyarrow."""
    import hashlib
    import sys

    import pyarrow.dataset as pads

    from tests.support.ray_cluster import SMALL_SCAN, submit_job

    w = scan_world
    out = w["tmp"] / "out"
    repo = Path(__file__).resolve().parents[1]
    res = submit_job(
        w["head"],
        [
            sys.executable,
            str(repo / "jobs" / "scan_bucket.py"),
            "--input",
            f"{w['bucket']}/shards/",
            "--output",
            str(out),
            "--detector",
            f"{w['bucket']}/det",
            "--scan-date",
            "2026-11-24",
            "--batch-size",
            "16",
            *SMALL_SCAN,
            # a corpus of broken inputs on purpose: above the default error budget
            "--max-shard-error-rate",
            "1",
            "--max-sample-error-rate",
            "1",
        ],
        timeout_s=300,
    )
    assert res.status == "SUCCEEDED", res.logs[-5000:]
    table = pads.dataset(str(out), format="parquet", partitioning="hive").to_table()
    rows = table.to_pylist()
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    n_in = n_checked = 0
    for case in w["corpus"]:
        got = by_shard.get(case.name, [])
        samples = [r for r in got if r["status"] != "shard_error"]
        errors = [r for r in got if r["status"] == "shard_error"]
        assert sorted((r["key"], r["status"]) for r in samples) == sorted(case.expected), case.name
        assert len(errors) == int(case.shard_error), case.name
        assert all(e["error"] and e["key"] is None for e in errors)
        for r in samples:
            assert (r["status"] == "ok") == (r["p_fake"] is not None), (case.name, r["key"])
            if r["status"] != "ok":
                assert r["error"], (case.name, r["key"], r["status"])
            unique = [k for k, _ in case.expected].count(r["key"]) == 1
            if unique and r["key"] in case.image_bytes:  # the row describes exactly the bytes in the shard
                data = case.image_bytes[r["key"]]
                assert r["sha256"] == hashlib.sha256(data).hexdigest() and r["n_bytes"] == len(data)
                n_checked += 1
        n_in += len(case.expected)
    assert n_checked >= 30
    assert sum(1 for r in rows if r["status"] != "shard_error") == n_in  # rows lost = 0, rows invented = 0
    assert sum(1 for r in rows if r["status"] == "shard_error") == sum(c.shard_error for c in w["corpus"])
    bad = {r["key"]: r for r in by_shard["shard-000000"] if r["key"] != "good0000"}
    assert (bad["exif_rotated_jpeg"]["width"], bad["exif_rotated_jpeg"]["height"]) == (40, 80)
    assert (bad["png_bomb_valid"]["width"], bad["png_bomb_valid"]["height"]) == (10_000, 10_000)
    assert bad["caf\\xe9"]["status"] == "ok"
    markers = sorted(p.stem for p in (out / "_shards").glob("*/*.json"))
    assert markers == sorted(c.name for c in w["corpus"])  # every shard, even the empty one, is complete
