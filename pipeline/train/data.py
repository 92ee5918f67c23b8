"""Rules over a training run's labelled source (listed by `pipeline.data.sources.load_labelled`): the
stratified split, the backbone's patch size, the class checks. Images are streamed by `pipeline.train.feed`
(the train/validation plan, the read/decode/augment stages); nothing here holds a data set in memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.models.config import arch_config
from pipeline.settings import ConfigError
from pipeline.train.config import TrainConfig


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
