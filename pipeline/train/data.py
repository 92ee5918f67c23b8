"""Labelled sources for training and evaluation: records, the stratified split rule, the class checks.

`load_records` lists a labelled source through `pipeline.data.sources.load_labelled` (UnivFD folders or
WebDataset shards, local or s3://) without reading an image. Images are streamed by `pipeline.train.feed` (the
train/validation plan, the read/decode/augment stages); nothing here holds a data set in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.models.config import arch_config
from pipeline.settings import ConfigError
from pipeline.train.config import TrainConfig


@dataclass
class LabelledRecord:
    label: int  # 0 real, 1 fake
    generator: str  # "real" or the generator / family name
    group: str | None  # UnivFD folder the image came from (None for WebDataset samples)
    source: Any = None  # the pipeline.data.sources.LabelledImage it came from (read with `source.load()`)


def load_records(uri: str) -> list[LabelledRecord]:
    """Every labelled image of `uri` (via `pipeline.data.sources.load_labelled`: UnivFD / GenImage folders or
    WebDataset shards, local or s3://), listed, not read. `generator` is the attribution class ("real" or the
    generator); `group` the source's generator folder (None for shards). Missing or empty sources raise
    FileNotFoundError, bad layouts ConfigError (both name the URI)."""
    from pipeline.data.sources import load_labelled

    return [
        LabelledRecord(
            label=int(it.label),
            generator=it.attribution,
            group=None if it.source == "wds" else it.generator,
            source=it,
        )
        for it in load_labelled(uri)
    ]


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


def patch_size(det_cfg: Any) -> int:
    """The backbone's patch size from its open_clip architecture config (the masking unit = one ViT token)."""
    return int(arch_config(det_cfg.arch)["vision_cfg"]["patch_size"])


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
