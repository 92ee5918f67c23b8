"""UnivFD augmentations and robustness transforms: numerics against references, sizes, probabilities,
determinism."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage.filters import gaussian as sk_gaussian

from pipeline.data.augment import (
    AugmentConfig,
    UnivFDAugment,
    blur,
    center_crop,
    jpeg,
    jpeg_bytes,
    perturbation,
    resize,
)
from pipeline.data.synthetic import make_image
from pipeline.settings import ConfigError


@pytest.fixture(scope="module")
def img() -> Image.Image:
    return Image.fromarray(make_image(0, "upconv", 0, 1, image_size=96))


def _hf_energy(im: Image.Image) -> float:
    """High-frequency energy: mean squared Laplacian of the luma (borders dropped)."""
    g = np.asarray(im.convert("L"), dtype=np.float64)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.mean(lap**2))


def _mse(a: Image.Image, b: Image.Image) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def test_blur_matches_reference_and_removes_high_frequencies(img: Image.Image) -> None:
    out = blur(img, 1.5)
    ref = sk_gaussian(
        np.asarray(img, np.float64), sigma=1.5, channel_axis=-1, mode="reflect", preserve_range=True
    )
    assert np.abs(np.asarray(out, np.float64) - ref).max() <= 1.0  # rounding to uint8 only
    energies = [_hf_energy(blur(img, s)) for s in (0.0, 0.5, 1.0, 2.0, 3.0)]
    assert energies[0] == pytest.approx(_hf_energy(img))
    assert all(a > b for a, b in zip(energies, energies[1:], strict=False)), energies
    assert energies[-1] < 0.05 * energies[0]
    assert np.array_equal(np.asarray(blur(img, 0)), np.asarray(img))


def test_jpeg_changes_bytes_and_error_grows_as_quality_drops(img: Image.Image) -> None:
    png = io.BytesIO()
    img.save(png, format="PNG")
    b90, b30 = jpeg_bytes(img, 90), jpeg_bytes(img, 30)
    assert b90[:2] == b"\xff\xd8" and b90 != b30 and len(b30) < len(b90) < len(png.getvalue())
    # the quantisation tables the encoder wrote reflect the quality
    with Image.open(io.BytesIO(b90)) as a, Image.open(io.BytesIO(b30)) as b:
        assert sum(b.quantization[0]) > 3 * sum(a.quantization[0])
    errors = [_mse(img, jpeg(img, q)) for q in (100, 90, 60, 30)]
    assert all(a < b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert jpeg(img, 30).size == img.size and jpeg(img, 30).mode == "RGB"
    with pytest.raises(ValueError, match="quality"):
        jpeg(img, 0)


def test_resize_and_center_crop_sizes(img: Image.Image) -> None:
    assert resize(img, 0.5).size == (48, 48)
    assert resize(img.crop((0, 0, 96, 60)), 1.5).size == (144, 90)
    assert center_crop(img, 64).size == (64, 64)
    arr = np.asarray(img)
    assert np.array_equal(np.asarray(center_crop(img, 64)), arr[16:80, 16:80])
    small = img.resize((40, 30))
    assert center_crop(small, 64).size == (64, 64)  # upsized first, never fails


def test_perturbations_are_deterministic_functions(img: Image.Image) -> None:
    # sweep values covering the JPEG-quality and blur-sigma curves UnivFD / CNNDetection report
    sweeps = {"jpeg": (95, 90, 75, 60, 45, 30), "blur": (0.5, 1.0, 2.0, 3.0), "resize": (0.5, 0.75, 1.5)}
    for kind, values in sweeps.items():
        for v in values:
            f = perturbation(kind, v)  # type: ignore[arg-type]
            assert np.array_equal(np.asarray(f(img)), np.asarray(f(img)))
    assert np.array_equal(np.asarray(perturbation("none")(img)), np.asarray(img))
    assert perturbation("resize", 0.5)(img).size == (48, 48)
    assert _hf_energy(perturbation("blur", 2.0)(img)) < _hf_energy(img)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbation("rotate", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a value"):
        perturbation("jpeg")


def test_training_augmentation_crop_flip_and_determinism(img: Image.Image) -> None:
    aug = UnivFDAugment(crop_size=64, blur_prob=0.0, jpeg_prob=0.0)
    arr = np.asarray(img)
    positions = set()
    for seed in range(30):
        out = aug(img, np.random.default_rng(seed))
        assert out.size == (64, 64)
        o = np.asarray(out)
        p = aug.sample(np.random.default_rng(seed))
        if p.flip:
            o = o[:, ::-1]
        # pure crop: the output is a window of the input
        hits = [
            (y, x) for y in range(33) for x in range(33) if np.array_equal(arr[y : y + 64, x : x + 64], o)
        ]
        assert hits, f"seed {seed}: output is not a crop of the input"
        positions.add(hits[0])
    assert len(positions) > 20  # random positions
    full = UnivFDAugment(crop_size=48, resize=80)
    a = full(img, np.random.default_rng(123))
    b = full(img, np.random.default_rng(123))
    assert a.size == (48, 48) and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(full(img, np.random.default_rng(124))))


def test_training_augmentation_probabilities_and_ranges() -> None:
    aug = UnivFDAugment(crop_size=32)
    rng = np.random.default_rng(0)
    ps = [aug.sample(rng) for _ in range(2000)]
    blurred = [p.blur_sigma for p in ps if p.blur_sigma is not None]
    jpegged = [p.jpeg_quality for p in ps if p.jpeg_quality is not None]
    assert 0.45 < len(blurred) / len(ps) < 0.55
    assert 0.45 < len(jpegged) / len(ps) < 0.55
    assert 0.45 < np.mean([p.flip for p in ps]) < 0.55
    assert 0.0 <= min(blurred) < 0.1 and 2.9 < max(blurred) <= 3.0
    assert min(jpegged) == 30 and max(jpegged) == 100 and all(isinstance(q, int) for q in jpegged)
    # the drawn parameters are what is applied
    im = Image.fromarray(make_image(1, "upconv", 0, 0, image_size=64))
    p = next(p for p in ps if p.blur_sigma and p.blur_sigma > 2 and p.jpeg_quality is None and not p.flip)
    assert _hf_energy(aug.apply(im, p)) < 0.2 * _hf_energy(center_crop(im, 32))


def test_augment_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="jpeg_quality"):
        UnivFDAugment(jpeg_quality=(10, 120))
    with pytest.raises(ConfigError, match="blur_prob"):
        UnivFDAugment(blur_prob=1.5)
    with pytest.raises(ConfigError, match="crop_sz"):
        UnivFDAugment(crop_sz=64)
    with pytest.raises(ConfigError, match="resize"):
        AugmentConfig.parse({"crop_size": 224, "resize": 128})


def test_crop_grid_keeps_offsets_on_the_grid(img: Image.Image) -> None:
    aug = UnivFDAugment(crop_size=64, blur_prob=0.0, jpeg_prob=0.0, flip=False, crop_grid=8)
    arr = np.asarray(img)  # 96 px: offsets 0, 8, ..., 32
    seen = set()
    for seed in range(60):
        o = np.asarray(aug(img, np.random.default_rng(seed)))
        hits = [
            (y, x) for y in range(33) for x in range(33) if np.array_equal(arr[y : y + 64, x : x + 64], o)
        ]
        assert hits and all(v % 8 == 0 for v in hits[0]), hits
        seen.add(hits[0])
    assert {y for y, _ in seen} == {0, 8, 16, 24, 32} and {x for _, x in seen} == {0, 8, 16, 24, 32}
