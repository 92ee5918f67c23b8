"""Labelled images for training and evaluation, held in memory (the demo and few-shot sets are small).

`load_records` reads a labelled source through `pipeline.data.sources.load_labelled` (UnivFD folders or
WebDataset shards, local or s3://). `TrainData` filters to the training generators, makes a stratified
train/validation split, and produces normalised model-input batches (with UnivFD augmentations for training).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.logs import get_logger
from pipeline.settings import ConfigError
from pipeline.train.config import TrainConfig

log = get_logger(__name__)


@dataclass
class LabelledRecord:
    image: Image.Image | None  # decoded RGB at original size; None when loaded lazily (see `load`)
    label: int  # 0 real, 1 fake
    generator: str  # "real" or the generator / family name
    group: str | None  # UnivFD folder the image came from (None for WebDataset samples)
    key: str = ""
    source: Any = None  # the pipeline.data.sources.LabelledImage it came from

    def load(self) -> Image.Image:
        """The decoded image (kept in memory when loaded eagerly, re-read from storage when lazy)."""
        if self.image is not None:
            return self.image
        if self.source is None:
            raise ValueError(f"record {self.key!r} has neither an image nor a source to read it from")
        return self.source.load()


def load_records(uri: str, *, generators: list[str] | None = None, lazy: bool = False) -> list[LabelledRecord]:
    """Every labelled image of `uri` (via `pipeline.data.sources.load_labelled`: UnivFD / GenImage folders or
    WebDataset shards, local or s3://) decoded to RGB PIL images. `generator` is the attribution class ("real"
    or the generator); `group` the source's generator folder (None for shards). Missing or empty sources raise
    FileNotFoundError, bad layouts ConfigError (both name the URI). `lazy`: list only; images are read when
    `record.load()` is called (evaluation of large test sets)."""
    from pipeline.data.sources import load_labelled

    items = load_labelled(uri)
    if generators is not None:
        items = [it for it in items if it.attribution == "real" or it.generator in set(generators)]
    out: list[LabelledRecord] = []
    for it in items:
        out.append(
            LabelledRecord(
                image=None if lazy else it.load(),
                label=int(it.label),
                generator=it.attribution,
                group=None if it.source == "wds" else it.generator,
                key=it.name,
                source=it,
            )
        )
    if not out:
        raise FileNotFoundError(f"no labelled images found in {uri}")
    return out


def stratified_split(strata: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): `fraction` of each stratum (rounded, at least 1 when the stratum has >= 2 items
    and fraction > 0) goes to validation."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        by.setdefault(s, []).append(i)
    train, val = [], []
    for s in sorted(by):
        idx = rng.permutation(by[s])
        n_val = int(round(fraction * idx.size))
        if fraction > 0 and idx.size >= 2:
            n_val = min(max(n_val, 1), idx.size - 1)
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


@dataclass
class TrainData:
    cfg: TrainConfig
    det_cfg: Any  # pipeline.models.DetectorConfig with .generators set to the training generators
    generators: list[str]
    train_images: list[Image.Image]
    train_labels: np.ndarray
    train_classes: np.ndarray  # index into ["real", *generators]
    val_images: list[Image.Image]
    val_labels: np.ndarray
    val_classes: np.ndarray
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    patch_size: int = 16
    _val_cache: torch.Tensor | None = None
    _train_cache: torch.Tensor | None = None
    _augment: Any = None

    @property
    def n_train(self) -> int:
        return len(self.train_images)

    @property
    def n_classes(self) -> int:
        return 1 + len(self.generators)

    @property
    def has_generator_labels(self) -> bool:
        return len(self.generators) >= 1

    def _to_input(self, arrays: list[np.ndarray]) -> torch.Tensor:
        from pipeline.models.preprocess import to_model_input

        return to_model_input(np.stack(arrays), self.det_cfg)

    def _prepared(self, images: list[Image.Image]) -> torch.Tensor:
        from pipeline.models.preprocess import prepare_image

        if not images:
            s = self.det_cfg.image_size
            return torch.zeros((0, 3, s, s))
        return self._to_input([prepare_image(im, self.det_cfg) for im in images])

    def val_pixels(self) -> torch.Tensor:
        if self._val_cache is None:
            self._val_cache = self._prepared(self.val_images)
        return self._val_cache

    def train_pixels(self) -> torch.Tensor:
        """Unaugmented training inputs (the linear method's frozen features)."""
        if self._train_cache is None:
            self._train_cache = self._prepared(self.train_images)
        return self._train_cache

    def train_batch(self, idx: np.ndarray, *, augment: bool, rng: np.random.Generator) -> torch.Tensor:
        if not augment:
            return self.train_pixels()[torch.as_tensor(idx)]
        arrays = [np.asarray(self._augment_one(self.train_images[i], rng), dtype=np.uint8) for i in idx]
        return self._to_input(arrays)

    def _augment_one(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """UnivFD augmentation; with crop_grid="patch" [ours] the random crop offset is a multiple of the
        backbone's patch size, so the ViT patch grid keeps its alignment with the pixel grid and pixel-periodic
        generator traces (up-sampling checkerboards, 8x8 codebook blocks) keep their phase relative to the
        tokens. "pixel" = the published recipe's free crop position."""
        import dataclasses

        from pipeline.data.augment import UnivFDAugment

        if self._augment is None:
            # UnivFD recipe [code] with the crop at the detector's input size; blur/JPEG probabilities from the
            # TrainConfig (default 0.5 / 0.5 as published)
            self._augment = UnivFDAugment(
                crop_size=self.det_cfg.image_size,
                resize=self.cfg.augment_resize,
                blur_prob=self.cfg.augment_blur_prob,
                jpeg_prob=self.cfg.augment_jpeg_prob,
            )
        params = self._augment.sample(rng)
        if self.cfg.crop_grid == "patch":
            free = self._free_crop_range(img)
            if free is not None:
                step = self.patch_size
                (fx, fy) = free
                kx = int(rng.integers(0, fx // step + 1)) * step
                ky = int(rng.integers(0, fy // step + 1)) * step
                # AugmentConfig maps u in [0,1) to int(u * (free + 1)); pick u at the middle of cell kx
                params = dataclasses.replace(params, crop_u=(kx + 0.5) / (fx + 1), crop_v=(ky + 0.5) / (fy + 1))
        return self._augment.apply(img, params)

    def _free_crop_range(self, img: Image.Image) -> tuple[int, int] | None:
        """(w - crop, h - crop) after the optional resize, or None when the image is resized to the crop."""
        c = self.det_cfg.image_size
        w, h = img.size
        if self.cfg.augment_resize is not None:
            scale = self.cfg.augment_resize / min(w, h)
            w, h = round(w * scale), round(h * scale)
        if min(w, h) < c:
            return None
        return w - c, h - c

    def build_detector(self, pretrained: str | None) -> torch.nn.Module:
        from pipeline.models import create_detector

        if pretrained is None:  # the detector config's own default source
            return create_detector(self.det_cfg)
        return create_detector(self.det_cfg, pretrained=None if pretrained == "none" else pretrained)

    def make_meta(self, *, threshold: float, unknown_threshold: float, notes: dict[str, Any]) -> Any:
        """DetectorMeta with the calibrated thresholds; save_detector fills config, labels and ids."""
        from pipeline.models import DetectorMeta

        return DetectorMeta(
            generators=list(self.generators),
            threshold=threshold,
            unknown_threshold=unknown_threshold,
            notes=notes,
        )


def load_train_data(cfg: TrainConfig, det_cfg: Any) -> TrainData:
    """Load `cfg.data`, keep the training generators' fakes and the reals that go with them, split."""
    records = load_records(cfg.data)
    fake_gens = check_classes(cfg, [(r.label, r.generator) for r in records])
    gens = fake_gens if cfg.train_generators is None else list(cfg.train_generators)
    groups_with_reals = {r.group for r in records if r.label == 0 and r.group}

    def keep(r: LabelledRecord) -> bool:
        if r.label == 1:
            return r.generator in gens
        # UnivFD folders: a generator folder's own reals; reals without a folder (WebDataset): all of them
        if r.group and groups_with_reals & set(gens):
            return r.group in gens
        return True

    kept = [r for r in records if keep(r)]
    classes_all = ["real", *gens]
    strata = [r.generator if r.label == 1 else "real" for r in kept]
    tr, va = stratified_split(strata, cfg.val_fraction, cfg.seed)
    det_cfg = det_cfg.model_copy(update={"generators": gens})

    def pick(idx: np.ndarray) -> tuple[list[Image.Image], np.ndarray, np.ndarray, dict[str, int]]:
        rs = [kept[i] for i in idx]
        labels = np.array([r.label for r in rs], dtype=np.int64)
        classes = np.array([classes_all.index(r.generator) if r.label == 1 else 0 for r in rs], dtype=np.int64)
        return [r.load() for r in rs], labels, classes, dict(Counter(strata[i] for i in idx))

    ti, tl, tc, tcount = pick(tr)
    vi, vl, vc, vcount = pick(va)
    log.info("train_data", data=cfg.data, generators=gens, train=tcount, val=vcount)
    return TrainData(
        cfg=cfg,
        det_cfg=det_cfg,
        generators=gens,
        train_images=ti,
        train_labels=tl,
        train_classes=tc,
        val_images=vi,
        val_labels=vl,
        val_classes=vc,
        counts={"train": tcount, "val": vcount},
        patch_size=_patch_size(det_cfg),
    )


def _patch_size(det_cfg: Any) -> int:
    """The backbone's patch size from its open_clip architecture config (the masking unit = one ViT token)."""
    import open_clip

    from pipeline.models.config import register_arch_configs

    register_arch_configs()
    arch = open_clip.get_model_config(det_cfg.arch)
    if arch is None:
        raise ConfigError(f"arch: unknown open_clip architecture {det_cfg.arch!r}")
    return int(arch["vision_cfg"]["patch_size"])


def preflight(cfg: TrainConfig) -> dict[str, dict[str, int]]:
    """Check the data source before any training starts (on the driver, before Ray): it exists, holds both
    classes, and holds every requested training generator. Lists only; reads no image."""
    from pipeline.data.sources import load_labelled, summarize

    items = load_labelled(cfg.data)
    check_classes(cfg, [(it.label, it.generator) for it in items])
    return summarize(items)


def check_classes(cfg: TrainConfig, labelled: list[tuple[int, str]]) -> list[str]:
    """The fake generators of (label, generator) pairs, sorted, after checking both classes are present and
    every requested training generator is among them (ValueError / ConfigError naming the data)."""
    fake_gens = sorted({gen for label, gen in labelled if label == 1})
    if not fake_gens:
        raise ValueError(f"{cfg.data} holds no fake images: training needs both classes")
    if not any(label == 0 for label, _ in labelled):
        raise ValueError(f"{cfg.data} holds no real images: training needs both classes")
    missing = [g for g in (cfg.train_generators or []) if g not in fake_gens]
    if missing:
        raise ConfigError(
            f"train_generators: {', '.join(missing)} not found in {cfg.data} (found: {', '.join(fake_gens)})"
        )
    return fake_gens
