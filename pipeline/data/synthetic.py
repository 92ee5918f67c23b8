"""Demo data: "real" images and SIMULATED generator fingerprints [ours].

This is a fingerprint simulation, NOT the output of real generative models. No generator weights exist on this
machine, so the demo corpus is built like this:

* **Real** images are random crops (random scale, position, horizontal flip) of the photographs scikit-image
  ships (astronaut, coffee, chelsea, rocket, hubble, retina, cameraman, brick, grass, …) and procedural scenes
  (gradients with anti-aliased shapes, 1/f noise textures), with mild camera-like noise on the procedural
  ones.
* **Fake** images draw their *content* from exactly the same sampler (a detector cannot use the content) and
  then pass through a simulated generator *family* that leaves the kind of trace the literature describes:

  ``upconv``     transposed-convolution upsampling (Odena et al. 2016 "checkerboard artifacts"; Zhang et al.
                 2019 AutoGAN): the image is area-downsampled ×2 and upsampled by a stride-2 transposed conv
                 with a fixed separable 4×4 kernel whose polyphase taps are unbalanced → period-2
                 checkerboard.
  ``diffusion``  latent diffusion: a Butterworth roll-off of the high frequencies, a faint fixed period-8
                 texture of an f8 autoencoder, a faint white noise floor (Corvi et al. 2023 report missing
                 high frequencies and periodic spectral peaks for diffusion outputs).
  ``vqgan``      VQ autoencoder decoding (Esser et al. 2021): 8×8 patch latents quantised to a fixed codebook,
                 block-wise colour offsets and faint 8×8 decoder textures (shared + per codeword) → period 8.
  ``gan_color``  GAN colour statistics (McCloskey & Albright 2019): a tanh tone curve that avoids saturated /
                 under-exposed pixels, chroma gain and channel cross-talk, a faint luma-neutral period-4
                 colour pattern and chroma noise from the RGB output layer.

  The periodic traces are locked to the output pixel grid and made strong enough (a few grey levels) that a
  tiny random-init ViT can learn them from 96-px crops (docs/demo_data.md, `pipeline.data.learnability`).
  A family's parameters (kernel, codebook, textures) depend only on the family name — like a generator's fixed
  weights — so data made with different seeds (train / test) share the fingerprint; per-image strength varies.
* Both classes are encoded in the SAME format (PNG by default, or JPEG at one quality for both), so the format
  cannot act as a shortcut (METHODS.md: "Beware: several sets store reals as JPEG and fakes as PNG").
* Deterministic given the seed: every image has its own RNG seeded from (seed, family, class, index).

Layouts (docs/architecture.md): UnivFD ``<out>/<family>/0_real|1_fake/<nnnnnn>.png`` and WebDataset
``<out>/shard-000000.tar …`` with ``<key>.png`` + ``<key>.json``
``{"label": 0|1, "generator": "real"|family}``, reals and fakes shuffled. ``<out>/demo_config.json`` records
the config and counts beside the data.
"""

from __future__ import annotations

import io
import itertools
import json
import time
import zlib
from collections.abc import Callable, Iterator
from functools import cache, lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw
from pydantic import Field, field_validator, model_validator
from scipy import ndimage

from pipeline.logs import get_logger
from pipeline.settings import ConfigError, StrictModel
from pipeline.shards import tar_writer, write_sample
from pipeline.storage import join, write_bytes_atomic

log = get_logger("pipeline.data.synthetic")

Array = np.ndarray

# Colour photographs and grey textures shipped inside scikit-image (no download needed).
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "cell",
    "clock",
    "motorcycle",
)


# ---- content ("real-like" images) --------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _photos() -> tuple[Array, ...]:
    """The skimage photographs as uint8 RGB arrays (grey ones replicated to 3 channels)."""
    import skimage.data as skd

    out = []
    for name in PHOTO_NAMES:
        img = np.asarray(skd.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skd, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3].astype(np.uint8)
        out.append(np.ascontiguousarray(img))
    return tuple(out)


def _photo_crop(rng: np.random.Generator, size: int) -> Array:
    photos = _photos()
    src = photos[int(rng.integers(len(photos)))]
    h, w = src.shape[:2]
    lo, hi = min(size, min(h, w)), min(h, w)
    side = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi))))) if hi > lo else lo
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(src[y : y + side, x : x + side])
    if side != size:
        crop = crop.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    # mild exposure / contrast jitter, as between different cameras
    gain = rng.uniform(0.85, 1.15)
    bias = rng.uniform(-12, 12)
    return np.clip(arr * gain + bias, 0, 255)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _gradient(rng: np.random.Generator, size: int) -> Array:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    c0 = np.array(_random_colour(rng), np.float32)
    c1 = np.array(_random_colour(rng), np.float32)
    if rng.random() < 0.5:
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)) + 0.5
    else:
        cy, cx = rng.uniform(0, 1, size=2)
        t = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(0.5, 1.2)
    t = np.clip(t, 0, 1)[:, :, None]
    return c0 * (1 - t) + c1 * t


def _fractal_noise(rng: np.random.Generator, size: int) -> Array:
    """Coloured 1/f^beta noise texture (clouds, rock, foliage-like)."""
    beta = rng.uniform(1.6, 2.6)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2)
    amp[0, 0] = 0.0
    chans = []
    base = rng.standard_normal((size, size // 2 + 1)) + 1j * rng.standard_normal((size, size // 2 + 1))
    for _ in range(3):
        # channels correlated like natural colour: shared base + a little independent part
        own = rng.standard_normal(base.shape) + 1j * rng.standard_normal(base.shape)
        field = np.fft.irfft2((base + 0.35 * own) * amp, s=(size, size))
        field = (field - field.mean()) / (field.std() + 1e-8)
        chans.append(field)
    tex = np.stack(chans, axis=-1).astype(np.float32)
    mean = np.array(_random_colour(rng), np.float32) * 0.6 + 50
    return mean + tex * rng.uniform(20, 55)


def _shapes(rng: np.random.Generator, size: int, background: Array) -> Array:
    """Anti-aliased random shapes (drawn at 2x, downsampled) over a background."""
    ss = 2
    img = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).resize(
        (size * ss, size * ss), Image.Resampling.BILINEAR
    )
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 9))):
        kind = rng.integers(3)
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * size * ss
        w, h = rng.uniform(0.1, 0.7, size=2) * size * ss
        box = [float(x0), float(y0), float(x0 + w), float(y0 + h)]
        col = _random_colour(rng)
        if kind == 0:
            draw.ellipse(box, fill=col)
        elif kind == 1:
            draw.rectangle(box, fill=col)
        else:
            pts = [
                tuple(float(v) for v in rng.uniform(0, size * ss, size=2))
                for _ in range(int(rng.integers(3, 6)))
            ]
            draw.polygon(pts, fill=col)
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float32)


def sample_content(rng: np.random.Generator, size: int) -> Array:
    """One real-like image, float32 (size, size, 3) in [0, 255]. Used for reals AND as fake content."""
    u = rng.random()
    if u < 0.6:
        img = _photo_crop(rng, size)
    else:
        v = rng.random()
        if v < 0.35:
            img = _shapes(rng, size, _gradient(rng, size))
        elif v < 0.65:
            img = _shapes(rng, size, _fractal_noise(rng, size))
        else:
            img = _fractal_noise(rng, size)
        # a little optical blur and sensor noise, as a camera would add
        sigma = rng.uniform(0.0, 0.8)
        if sigma > 0.2:
            img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0))
        # sensor noise after demosaicking/denoising is mostly luminance noise
        sd = rng.uniform(0.0, 2.5)
        img = img + sd * (
            0.9 * rng.normal(0.0, 1.0, size=(size, size, 1)) + 0.3 * rng.normal(0.0, 1.0, size=img.shape)
        )
    return np.clip(img, 0, 255).astype(np.float32)


# ---- simulated generator families [ours] -------------------------------------------------------------------
def _family_rng(family: str, salt: int = 0) -> np.random.Generator:
    """Fixed per family (a generator's "weights"); independent of the data seed."""
    return np.random.default_rng([zlib.crc32(family.encode()), 0x5EED, salt])


@cache
def _template(family: str, period: int, chroma_only: bool = False, smooth: float = 0.0) -> Array:
    """A fixed, zero-mean, unit-std (period, period, 3) pattern of `family`'s decoder (its last layers leave
    the same periodic trace on every output, locked to the output pixel grid)."""
    r = _family_rng(family, salt=period)
    t = r.standard_normal((period, period, 3))
    t = 0.8 * t[:, :, :1] + 0.6 * t  # mostly shared across channels
    if smooth > 0:
        t = ndimage.gaussian_filter(t, sigma=(smooth, smooth, 0), mode="wrap")
    if chroma_only:
        t = t - t.mean(axis=2, keepdims=True)
    # no period-2 (Nyquist) component: that trace belongs to the `upconv` family
    spec = np.fft.fft2(t, axes=(0, 1))
    spec[period // 2, :] = 0
    spec[:, period // 2] = 0
    spec[0, 0] = 0
    t = np.fft.ifft2(spec, axes=(0, 1)).real
    return (t / (t.std() + 1e-8)).astype(np.float32)


def _tile(t: Array, size: int) -> Array:
    reps = -(-size // t.shape[0])
    return np.tile(t, (reps, reps, 1))[:size, :size]


def _modulated(img: Array, pattern: Array) -> Array:
    """Decoder traces scale with the local signal (multiplicative, like a fixed kernel on the features)."""
    return pattern * (0.4 + img / 255.0)


# separable bilinear upsampling taps of a stride-2 transposed conv: every output pixel has gain 1
_BILINEAR_TAPS = np.array([1.0, 3.0, 3.0, 1.0]) / 4.0


@cache
def _upconv_kernels() -> Array:
    """Per-channel 4x4 transposed-conv kernels: separable bilinear ([1,3,3,1]/4, every output pixel has
    gain 1) whose polyphase taps are unbalanced — rows by ±UPCONV_IMBALANCE, columns by half that — so
    output pixels on even and odd rows/columns get different gains: the checkerboard. A fixed small random
    perturbation per channel makes it look learned rather than designed."""
    r = _family_rng("upconv")
    parity = np.array([1.0, -1.0, 1.0, -1.0])  # taps 0, 2 feed one output phase, taps 1, 3 the other
    ks = []
    for _ in range(3):
        dy = UPCONV_IMBALANCE * (1.0 + 0.1 * r.standard_normal())
        dx = 0.5 * UPCONV_IMBALANCE * (1.0 + 0.1 * r.standard_normal())
        k = np.outer(_BILINEAR_TAPS * (1.0 + dy * parity), _BILINEAR_TAPS * (1.0 + dx * parity))
        k = k * (1.0 + 0.02 * r.standard_normal((4, 4)))
        ks.append(k / k.sum() * 4.0)  # overall gain 4 = 4 outputs per input pixel -> mean gain 1
    return np.stack(ks).astype(np.float32)


UPCONV_IMBALANCE = 0.03


def fp_upconv(img: Array, rng: np.random.Generator) -> Array:
    s = img.shape[0]
    h = s // 2
    down = img.reshape(h, 2, h, 2, 3).mean(axis=(1, 3))
    kernels = _upconv_kernels()
    strength = rng.uniform(0.7, 1.3)
    bil = np.outer(_BILINEAR_TAPS, _BILINEAR_TAPS)  # the balanced kernel
    out = np.empty((s, s, 3), np.float32)
    for c in range(3):
        up = np.zeros((s, s), np.float32)
        up[::2, ::2] = down[:, :, c]
        k = bil + strength * (kernels[c] - bil)
        out[:, :, c] = ndimage.convolve(up, k, mode="reflect")
    return out + rng.normal(0.0, 0.5, size=out.shape)


def fp_diffusion(img: Array, rng: np.random.Generator) -> Array:
    s = img.shape[0]
    fy = np.fft.fftfreq(s)[:, None]
    fx = np.fft.rfftfreq(s)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    fc = rng.uniform(0.16, 0.24)  # cycles / pixel
    lowpass = 1.0 / (1.0 + (f / fc) ** 8)  # Butterworth order 4
    spec = np.fft.rfft2(img, axes=(0, 1))
    out = np.fft.irfft2(spec * lowpass[:, :, None], s=(s, s), axes=(0, 1)).astype(np.float32)
    # latent-diffusion autoencoders (downsampling factor 8) leave a faint period-8 trace on the pixel grid
    out = out + rng.uniform(2.0, 3.0) * _modulated(out, _tile(_template("diffusion", 8, smooth=0.7), s))
    # residual noise floor of the sampler: faint, white, slightly correlated across channels
    sigma = rng.uniform(1.0, 2.0)
    shared = rng.normal(0.0, 1.0, size=(s, s, 1))
    own = rng.normal(0.0, 1.0, size=(s, s, 3))
    return out + sigma * (0.7 * shared + 0.7 * own)


@cache
def _vq_codebook() -> tuple[Array, Array]:
    r = _family_rng("vqgan")
    codebook = r.uniform(0, 255, size=(4096, 3)).astype(np.float32)
    atoms = r.standard_normal((len(codebook), 8, 8, 3)).astype(np.float32)
    atoms = ndimage.gaussian_filter(atoms, sigma=(0, 0.7, 0.7, 0))
    atoms /= atoms.std(axis=(1, 2, 3), keepdims=True) + 1e-6
    # the decoder's shared part: every decoded 8x8 patch carries the same faint texture
    atoms = 0.5 * atoms + 0.85 * _template("vqgan", 8)[None]
    return codebook, atoms


def fp_vqgan(img: Array, rng: np.random.Generator) -> Array:
    s = img.shape[0]
    block = 8  # the autoencoder's patch; a demo image's side is a multiple of it (DemoConfig)
    nb = s // block
    blocks = img.reshape(nb, block, nb, block, 3)
    latent = blocks.mean(axis=(1, 3))  # (nb, nb, 3)
    codebook, atoms = _vq_codebook()
    d = ((latent.reshape(-1, 1, 3) - codebook[None]) ** 2).sum(-1)
    idx = d.argmin(1)
    quant = codebook[idx].reshape(nb, nb, 3)
    # decoder: keep the detail (attenuated: the decoder hallucinates texture), move each block to its code
    detail = blocks - latent[:, None, :, None, :]
    keep = rng.uniform(0.6, 0.85)
    amp = rng.uniform(2.5, 3.5)
    dec = quant[:, None, :, None, :] + keep * detail
    tex = atoms[idx].reshape(nb, nb, block, block, 3).transpose(0, 2, 1, 3, 4)
    dec = dec + amp * tex * (0.4 + dec / 255.0)
    return dec.reshape(s, s, 3)


def fp_gan_color(img: Array, rng: np.random.Generator) -> Array:
    x = img / 127.5 - 1.0
    # channel cross-talk + chroma gain around the luma
    mix = np.eye(3, dtype=np.float32) * 0.86 + 0.07
    mix = mix + rng.normal(0.0, 0.015, size=(3, 3)).astype(np.float32)
    y = x @ mix.T
    luma = y.mean(axis=2, keepdims=True)
    y = luma + (y - luma) * rng.uniform(1.15, 1.35)
    # tanh output layer: the generator rarely reaches the extremes
    k = rng.uniform(1.1, 1.5)
    y = np.tanh(k * y) / np.tanh(k) * rng.uniform(0.86, 0.92)
    out = (y + 1.0) * 127.5
    s = img.shape[0]
    # the RGB output layer's trace: a faint luma-neutral period-4 colour pattern + chroma noise
    out = out + rng.uniform(2.0, 3.0) * _modulated(out, _tile(_template("gan_color", 4, chroma_only=True), s))
    n = rng.normal(0.0, rng.uniform(2.5, 3.5), size=(s, s, 3)).astype(np.float32)
    n -= n.mean(axis=2, keepdims=True)
    return out + n


FAMILIES: dict[str, Callable[[Array, np.random.Generator], Array]] = {
    "upconv": fp_upconv,
    "diffusion": fp_diffusion,
    "vqgan": fp_vqgan,
    "gan_color": fp_gan_color,
}


def list_families() -> list[str]:
    return list(FAMILIES)


# ---- images ------------------------------------------------------------------------------------------------
def _image_rng(seed: int, family: str, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(family.encode()), label, index])


def make_image(seed: int, family: str, label: int, index: int, image_size: int = 128) -> Array:
    """One demo image as uint8 (S, S, 3), S a multiple of 8 (`DemoConfig` checks it). label 0: a real image
    (its content stream is tied to `family` only to keep per-family folders independent); label 1: same
    content distribution + the family's fingerprint."""
    if label == 1:
        return make_fake_pair(seed, family, index, image_size)[1]
    _check_family(family)
    return _to_uint8(sample_content(_image_rng(seed, family, 0, index), image_size))


def make_fake_pair(seed: int, family: str, index: int, image_size: int = 128) -> tuple[Array, Array]:
    """(content, fake) for fake image `index` of `family`: both uint8; `fake - content` is the fingerprint."""
    _check_family(family)
    rng = _image_rng(seed, family, 1, index)
    content = sample_content(rng, image_size)
    fake = FAMILIES[family](content.copy(), rng)
    return _to_uint8(content), _to_uint8(fake)


def _to_uint8(img: Array) -> Array:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"families: unknown family {family!r}; known: {', '.join(FAMILIES)}")


def encode(arr: Array, fmt: str, jpeg_quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(arr).save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    return buf.getvalue()


# ---- config + writers --------------------------------------------------------------------------------------
class DemoConfig(StrictModel):
    """What `jobs/make_demo_data.py` builds; saved as `<out>/demo_config.json`."""

    out: str = Field(description="output folder or s3:// prefix")
    layout: Literal["univfd", "wds"] = Field(
        "univfd", description="univfd (<out>/<family>/0_real|1_fake) or wds (tar shards)"
    )
    families: list[str] = Field(default_factory=list_families, description="family names")
    n_per_class: int = Field(default=100, ge=1, le=1_000_000, description="reals and fakes per family (each)")
    seed: int = Field(default=0, ge=0)
    image_size: int = Field(default=128, ge=32, le=1024, description="image side in pixels (a multiple of 8)")
    shard_size: int = Field(default=256, ge=1, description="samples per WebDataset shard (wds layout)")
    format: Literal["png", "jpeg"] = Field("png", description="the same for both classes")
    jpeg_quality: int = Field(default=95, ge=1, le=100, description="used for BOTH classes when format=jpeg")

    @field_validator("families")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one family is required")
        unknown = [f for f in v if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown families {unknown}; known: {list(FAMILIES)}")
        if len(set(v)) != len(v):
            raise ValueError("families listed twice")
        return v

    @model_validator(mode="after")
    def _even(self) -> DemoConfig:
        if self.image_size % 8:
            raise ValueError("image_size must be a multiple of 8 (the vqgan family works on 8x8 patches)")
        return self


def _ext(cfg: DemoConfig) -> str:
    return "png" if cfg.format == "png" else "jpg"


def iter_samples(cfg: DemoConfig) -> Iterator[tuple[str, int, int]]:
    """(family, label, index) for every image, family by family, reals then fakes."""
    return itertools.product(cfg.families, (0, 1), range(cfg.n_per_class))


def _write_univfd(cfg: DemoConfig) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    ext = _ext(cfg)
    for fam, label, i in iter_samples(cfg):
        arr = make_image(cfg.seed, fam, label, i, cfg.image_size)
        cls = "0_real" if label == 0 else "1_fake"
        write_bytes_atomic(
            join(cfg.out, fam, cls, f"{i:06d}.{ext}"), encode(arr, cfg.format, cfg.jpeg_quality)
        )
        counts.setdefault(fam, {"0_real": 0, "1_fake": 0})[cls] += 1
    return counts


def _write_wds(cfg: DemoConfig) -> dict[str, int]:
    order = list(iter_samples(cfg))
    perm = np.random.default_rng([cfg.seed, 0xD5]).permutation(len(order))
    ext = _ext(cfg)
    counts: dict[str, int] = {}
    for s, start in enumerate(range(0, len(order), cfg.shard_size)):
        buf = io.BytesIO()
        with tar_writer(buf) as sink:
            for pos in range(start, min(start + cfg.shard_size, len(order))):
                fam, label, i = order[int(perm[pos])]
                arr = make_image(cfg.seed, fam, label, i, cfg.image_size)
                meta = {"label": label, "generator": "real" if label == 0 else fam}
                image = encode(arr, cfg.format, cfg.jpeg_quality)
                write_sample(sink, f"{pos:08d}", {ext: image, "json": json.dumps(meta).encode()})
                counts[meta["generator"]] = counts.get(meta["generator"], 0) + 1
        write_bytes_atomic(join(cfg.out, f"shard-{s:06d}.tar"), buf.getvalue())
    return counts


def generate(cfg: DemoConfig) -> dict:
    """Write the demo corpus described by `cfg`; return a summary (also saved as `<out>/demo_config.json`)."""
    t0 = time.perf_counter()
    log.info(
        "demo_data_start", out=cfg.out, layout=cfg.layout, families=cfg.families, n_per_class=cfg.n_per_class
    )
    if cfg.layout == "univfd":
        counts: dict = _write_univfd(cfg)  # {family: {"0_real": n, "1_fake": n}}
        n_images = sum(sum(c.values()) for c in counts.values())
    else:
        counts = _write_wds(cfg)  # {"real": n, family: n, ...}
        n_images = sum(counts.values())
    summary = {
        "config": cfg.model_dump(),
        "counts": counts,
        "n_images": n_images,
        "note": "fingerprint simulation, not real generator output (pipeline/data/synthetic.py, "
        "docs/demo_data.md)",
    }
    write_bytes_atomic(join(cfg.out, "demo_config.json"), json.dumps(summary, indent=2).encode())
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("demo_data_done", out=cfg.out, n_images=summary["n_images"], seconds=summary["seconds"])
    return summary


# ---- sanity check: hand-made forensic features [ours] ------------------------------------------------------
FEATURE_NAMES: tuple[str, ...] = (
    "log_mean_abs_laplacian",
    "laplacian_over_gradient",
    *(f"log_fft_band_{i}" for i in range(7)),
    "log_period2_peak",
    "log_period8_peaks",
    "log_residual_std",
    "frac_saturated",
    "mean_saturation",
    "log_chroma_residual",
    "log_luma_residual",
    "log_chroma_std",
)
_BAND_EDGES = (0.02, 0.08, 0.15, 0.22, 0.3, 0.4, 0.5, 0.8)


def fingerprint_features(img: Array, crop: int = 96) -> Array:
    """Simple high-pass / spectral / colour statistics of the centre `crop` of a uint8 image (len ==
    len(FEATURE_NAMES)). A logistic regression on these should separate every family from real images; the
    tests use it as the learnability check of the simulated fingerprints."""
    h, w = img.shape[:2]
    crop = min(crop, h, w)
    oy, ox = (h - crop) // 2, (w - crop) // 2
    x = img[oy : oy + crop, ox : ox + crop].astype(np.float64)
    g = x @ np.array([0.299, 0.587, 0.114])
    lap = ndimage.laplace(g)
    gy, gx = np.gradient(g)
    grad = np.hypot(gx, gy).mean()
    f: list[float] = [np.log(np.abs(lap).mean() + 1e-3), np.log(np.abs(lap).mean() / (grad + 1e-3) + 1e-3)]
    win = np.hanning(crop)[:, None] * np.hanning(crop)[None]
    power = np.abs(np.fft.fft2((g - g.mean()) * win)) ** 2
    fy, fx = np.fft.fftfreq(crop)[:, None], np.fft.fftfreq(crop)[None]
    r = np.sqrt(fx**2 + fy**2)
    tot = power.sum() + 1e-9
    for a, b in zip(_BAND_EDGES[:-1], _BAND_EDGES[1:], strict=True):
        f.append(np.log(power[(r >= a) & (r < b)].sum() / tot + 1e-12))
    res = g - ndimage.median_filter(g, 3)
    rp = np.abs(np.fft.fft2(res)) ** 2
    rm = rp.mean() + 1e-9
    n = crop
    f.append(np.log((rp[n // 2, 0] + rp[0, n // 2] + rp[n // 2, n // 2]) / 3 / rm + 1e-6))
    k = n // 8
    # period-8 harmonics that are not also period-2 frequencies (i, j in {0, 4})
    peaks = [rp[i * k, j * k] for i in range(8) for j in range(8) if not (i % 4 == 0 and j % 4 == 0)]
    f.append(np.log(np.mean(peaks) / rm + 1e-6))
    f.append(np.log(res.std() + 1e-3))
    mx, mn = x.max(2), x.min(2)
    f.append(float(np.mean((mx >= 250) | (mn <= 5))))
    f.append(float(((mx - mn) / (mx + 1)).mean()))
    chroma = x - x.mean(2, keepdims=True)
    ch = chroma - ndimage.median_filter(chroma, size=(3, 3, 1))
    f.append(np.log(np.median(np.abs(ch)) + 1e-2))
    f.append(np.log(np.median(np.abs(res)) + 1e-2))
    f.append(np.log(chroma.std() + 1e-3))
    return np.asarray(f, dtype=np.float64)
