"""`--decode-on gpu` routing (pipeline.scan.gpu_decode): which images are shipped encoded, and that the
device decode (torchvision decode_jpeg on CPU here; nvjpeg on CUDA behind the gpu marker) gives exactly the
CPU decoder's pixels and status rows; the scorer merges both kinds of rows."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.models import DetectorMeta, Predictor, create_detector
from pipeline.models.checks import randomize_adapters
from pipeline.scan.config import ScanConfig
from pipeline.scan.decode import decode_image
from pipeline.scan.gpu_decode import DeviceDecoder, decode_or_ship, device_decodable, needs_resampling
from pipeline.scan.score import score_batch
from pipeline.settings import ConfigError
from tests.support import badinputs as bi

S = 96
MAXPX = 89_478_485


def _natural(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields + noise: chroma subsampling and IDCT rounding both matter on such content."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack(
        [np.sin(x / (9.0 + c) + c) * 80 + np.cos(y / (13.0 + 4 * c)) * 60 + 128 for c in range(3)], -1
    )
    return np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    im = Image.fromarray(arr)
    if mode != "RGB":
        im = im.convert(mode)
    b = io.BytesIO()
    im.save(b, "JPEG", **kw)
    return b.getvalue()


def _with_orientation(arr: np.ndarray, value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return _jpeg(arr, quality=90, exif=exif.tobytes())


def _png(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "PNG")
    return b.getvalue()


def _bad_sos(data: bytes) -> bytes:
    """A JPEG whose header parses (Pillow stops reading at SOS) but whose scan names a component that does not
    exist: libjpeg refuses it on both paths."""
    d = bytearray(data)
    sos = d.index(b"\xff\xda")
    d[sos + 5] = 0x7F  # first component selector of the scan header
    return bytes(d)


def corpus() -> dict[str, tuple[bytes, bool]]:
    """name -> (bytes, expected to be shipped for center_crop at S)."""
    a, wide, exact = _natural(131, 173), _natural(97, 301, 1), _natural(S, 140, 2)
    good = _jpeg(a, quality=85)
    c: dict[str, tuple[bytes, bool]] = {}
    for sub in (0, 1, 2):
        for q in (55, 95):
            c[f"rgb sub{sub} q{q}"] = (_jpeg(a, quality=q, subsampling=sub), True)
    c["wide"] = (_jpeg(wide, quality=80), True)
    c["short side == S"] = (_jpeg(exact, quality=80), True)
    c["progressive"] = (_jpeg(a, quality=85, progressive=True), True)
    c["optimized"] = (_jpeg(a, quality=85, optimize=True), True)
    c["restart markers"] = (_jpeg(a, quality=85, restart_marker_blocks=3), True)
    c["gray"] = (_jpeg(a, "L", quality=85), True)
    c["orientation 1"] = (_with_orientation(a, 1), True)
    d = bytearray(good)
    d[len(d) // 2] ^= 0x5A
    c["bit flip in scan data"] = (bytes(d), True)  # libjpeg warns and decodes, identically on both paths
    c["bad scan header"] = (_bad_sos(good), True)  # shipped; the device fails, the CPU decoder gives the row
    # a camera's unreadable EXIF block is no orientation on both paths (pipeline.shards.upright): shipped
    c["garbage EXIF block"] = (bi.with_app1(good, bi.EXIF_GARBAGE_HEADER), True)
    c["EXIF cut in its header"] = (bi.with_app1(good, bi.EXIF_CUT_IN_HEADER, jfif=True), True)
    # never shipped
    c["orientation 6"] = (_with_orientation(a, 6), False)
    c["orientation 6 written by a camera"] = (bi.with_app1(good, bi.EXIF_ORIENTATION_6), False)
    c["cmyk"] = (_jpeg(a, "CMYK", quality=85), False)
    c["smaller than S"] = (_jpeg(_natural(80, 200, 3), quality=85), False)
    c["truncated"] = (good[: len(good) * 2 // 3], False)
    c["trailing bytes after EOI"] = (good + b"\x00" * 16, False)
    c["png"] = (_png(a), False)
    c["empty"] = (b"", False)
    c["not an image"] = (b"\xff\xd8\xff garbage \xff\xd9", False)
    return c


def _same_row(a, b) -> None:
    assert (a.status, a.error, a.width, a.height, a.format) == (
        b.status,
        b.error,
        b.width,
        b.height,
        b.format,
    )


@pytest.mark.parametrize("resize_mode", ["center_crop", "resize_crop"])
def test_routing_and_device_pixels_equal_the_cpu_path(resize_mode: str) -> None:
    decoder = DeviceDecoder("cpu", S)
    shipped_names = []
    for name, (data, _) in corpus().items():
        cpu = decode_image(data, image_size=S, resize_mode=resize_mode, max_pixels=MAXPX)
        routed = decode_or_ship(
            data, image_size=S, resize_mode=resize_mode, max_pixels=MAXPX, decode_on="gpu"
        )
        if routed.encoded is None:  # not shipped: exactly the CPU decoder's result
            _same_row(routed, cpu)
            assert (routed.pixels is None) == (cpu.pixels is None)
            if cpu.pixels is not None:
                assert np.array_equal(routed.pixels, cpu.pixels), name
            continue
        shipped_names.append(name)
        assert routed.pixels is None and routed.encoded == data
        assert (routed.width, routed.height, routed.format) == (cpu.width, cpu.height, cpu.format), name
        dec = decoder.decode([routed.encoded], [(routed.width, routed.height)])
        if cpu.status == "ok":
            assert dec.ok.tolist() == [0] and not dec.fallback, name
            assert np.array_equal(dec.pixels[0].numpy(), cpu.pixels), name
        else:
            assert dec.ok.tolist() == [] and dec.fallback[0].status == cpu.status, name
            assert dec.fallback[0].error == cpu.error
    expected = {n for n, (_, ship) in corpus().items() if ship}
    if resize_mode == "resize_crop":  # a resize to S is a no-op only when the short side is already S
        expected = {"short side == S"}
    assert set(shipped_names) == expected
    # decode_on cpu never ships
    data = corpus()["rgb sub2 q95"][0]
    assert decode_or_ship(data, image_size=S, max_pixels=MAXPX, decode_on="cpu").encoded is None


def test_eligibility_rules() -> None:
    assert not needs_resampling(96, 200, 96, "center_crop") and needs_resampling(95, 200, 96, "center_crop")
    assert not needs_resampling(96, 200, 96, "center_crop_pad") and needs_resampling(
        200, 95, 96, "center_crop_pad"
    )
    assert not needs_resampling(96, 200, 96, "resize_crop") and needs_resampling(97, 200, 96, "resize_crop")
    assert needs_resampling(500, 500, 96, "squash")  # an unknown mode is never a window
    data = corpus()["rgb sub0 q55"][0]
    assert device_decodable(data, image_size=S, resize_mode="center_crop", max_pixels=MAXPX) == (173, 131)
    # over max_pixels: the CPU path's too_large row, not shipped
    assert device_decodable(data, image_size=S, resize_mode="center_crop", max_pixels=173 * 131 - 1) is None
    r = decode_or_ship(data, image_size=S, max_pixels=1000, decode_on="gpu")
    assert r.status == "too_large" and r.encoded is None


def test_batched_decode_groups_and_failure_fallback() -> None:
    c = corpus()
    names = ["rgb sub0 q55", "bad scan header", "wide", "gray", "progressive"]
    items = [c[n][0] for n in names]
    sizes = [device_decodable(d, image_size=S, resize_mode="center_crop", max_pixels=MAXPX) for d in items]
    assert all(s is not None for s in sizes)
    cpu = [decode_image(d, image_size=S, max_pixels=MAXPX) for d in items]
    for budget in (10**9, 40_000):  # one call (fails as a whole, retried per image) / one call per ~image
        dec = DeviceDecoder("cpu", S, max_batch_pixels=budget).decode(items, sizes)
        assert dec.ok.tolist() == [0, 2, 3, 4] and list(dec.fallback) == [1]
        for k, i in enumerate(dec.ok):
            assert np.array_equal(dec.pixels[k].numpy(), cpu[i].pixels)
        assert dec.fallback[1].status == "decode_error" and dec.fallback[1].error == cpu[1].error


def _batch(results, blank) -> dict[str, np.ndarray]:
    return {
        "key": np.asarray([f"k{i}" for i in range(len(results))], dtype=object),
        "status": np.asarray([r.status for r in results], dtype=object),
        "error": np.asarray([r.error or "" for r in results], dtype=object),
        "width": np.asarray([r.width or -1 for r in results], np.int64),
        "height": np.asarray([r.height or -1 for r in results], np.int64),
        "_decode_s": np.zeros(len(results)),
        "pixels": np.stack(
            [r.pixels if r.pixels is not None and r.status == "ok" else blank for r in results]
        ),
        "encoded": np.asarray([r.encoded or b"" for r in results], dtype=object),
    }


def test_score_batch_merges_device_and_cpu_rows() -> None:
    torch.manual_seed(0)
    det = create_detector("tiny-mole", pretrained=None)
    randomize_adapters(det)
    pred = Predictor(det, DetectorMeta())
    items = [data for data, _ in corpus().values()]
    blank = np.zeros((S, S, 3), np.uint8)
    cpu = [decode_image(d, image_size=S, max_pixels=MAXPX) for d in items]
    gpu = [decode_or_ship(d, image_size=S, max_pixels=MAXPX, decode_on="gpu") for d in items]
    assert sum(r.encoded is not None for r in gpu) >= 10 and sum(r.encoded is None for r in gpu) >= 5
    a = score_batch(pred, _batch(cpu, blank), n_labels=1)
    b = score_batch(pred, _batch(gpu, blank), n_labels=1, decoder=DeviceDecoder("cpu", S))
    assert "encoded" not in b and "pixels" not in b
    assert b["status"].tolist() == a["status"].tolist() and b["error"].tolist() == a["error"].tolist()
    assert "decode_error" in a["status"].tolist()  # the bad scan header row, on both paths
    scored = a["status"] == "ok"
    # identical pixels; the rows are scored in two calls instead of one, so allow GEMM-blocking rounding
    np.testing.assert_allclose(b["logit"][scored], a["logit"][scored], rtol=0, atol=1e-6)
    assert np.isnan(b["logit"][~scored]).all()
    shipped = np.asarray([r.encoded is not None for r in gpu])
    assert (b["_decode_s"][shipped] > 0).all() and (b["_decode_s"][~shipped] == 0).all()


def test_decode_on_gpu_needs_a_gpu_actor() -> None:
    base = {"input": "in", "output": "out", "detector": "det"}
    with pytest.raises(ConfigError, match="decode_on gpu needs a GPU"):
        ScanConfig.parse({**base, "decode_on": "gpu"})
    cfg = ScanConfig.parse({**base, "decode_on": "gpu", "actor_num_gpus": 1})
    assert cfg.decode_on == "gpu" and cfg.dtype == "auto"


@pytest.mark.gpu
def test_nvjpeg_pixels_against_cpu() -> None:
    """On CUDA the decoder is nvjpeg: the test records how far its pixels are from libjpeg-turbo's (not
    asserted equal: a different IDCT/upsampler), and that every shipped image decodes or falls back."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    c = corpus()
    shipped = [d for d, ship in c.values() if ship]
    sizes = [device_decodable(d, image_size=S, resize_mode="center_crop", max_pixels=MAXPX) for d in shipped]
    dec = DeviceDecoder("cuda", S).decode(shipped, sizes)
    assert len(dec.ok) + len(dec.fallback) == len(shipped)
    for k, i in enumerate(dec.ok):
        cpu = decode_image(shipped[i], image_size=S, max_pixels=MAXPX).pixels
        diff = np.abs(dec.pixels[k].cpu().numpy().astype(int) - cpu.astype(int))
        assert diff.max() <= 16, f"image {i}: max |nvjpeg - libjpeg-turbo| = {diff.max()}"


def test_prepared_shard_rows_equal_with_decode_on_gpu(tmp_path) -> None:
    """The read stage wired to decode_or_ship (prepare_shard(decode_on=...)) + the scorer's device decode give
    the same rows as CPU decode. Runs without a GPU (no skip guard: a renamed parameter must fail here)."""
    from pipeline.models import save_detector
    from pipeline.scan.prepare import prepare_shard
    from pipeline.scan.score import Scorer
    from tests.support.shards import Sample, write_shard

    samples = [
        Sample(f"k{i:03d}", {"png" if name == "png" else "jpg": data})
        for i, (name, (data, _)) in enumerate(corpus().items())
        if data
    ]
    url = write_shard(str(tmp_path / "a.tar"), samples)
    torch.manual_seed(0)
    save_detector(create_detector("tiny-mole", pretrained=None), tmp_path / "det")
    scorer = Scorer(str(tmp_path / "det"), decode_on="gpu")  # decode_jpeg on CPU stands in for nvjpeg
    rows = {}
    for mode in ("cpu", "gpu"):
        parts = [scorer(b) for b in prepare_shard(url, "a", image_size=S, max_pixels=MAXPX, decode_on=mode)]
        rows[mode] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    a, b = rows["cpu"], rows["gpu"]
    for col in ("key", "status", "error", "width", "height", "format", "sha256"):
        assert a[col].tolist() == b[col].tolist(), col
    ok = a["status"] == "ok"
    np.testing.assert_allclose(b["logit"][ok], a["logit"][ok], rtol=0, atol=1e-6)
