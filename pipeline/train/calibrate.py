"""Calibration [ours]: the detection threshold for a target false-positive rate on held-out REAL images, and
the "unknown generator" threshold on held-out fakes of known generators. Both are stored in the checkpoint's
DetectorMeta (`threshold`, `unknown_threshold`).

Pure functions over scores; `calibrate_checkpoint` runs a saved detector over a labelled folder and rewrites
its metadata (used by `jobs/calibrate.py` and by training on its validation split).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.logs import get_logger

log = get_logger(__name__)


def threshold_for_fpr(real_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold t (from the observed scores) with `mean(real_scores > t) <= target_fpr`.

    The detector calls an image fake when `score > t`, so t is the k-th largest real score with
    k = floor(target_fpr * n): at most k reals lie strictly above it (fewer with ties). On a held-out set of n
    reals the realised FPR is therefore <= target_fpr, and within ~1/n of it when scores are distinct."""
    s = np.asarray(real_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("cannot calibrate a threshold without any real images in the calibration split")
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    if not np.all(np.isfinite(s)):
        raise ValueError("real scores contain NaN or inf")
    desc = np.sort(s)[::-1]
    k = int(np.floor(target_fpr * s.size + 1e-9))
    return float(desc[min(k, s.size - 1)])


def max_generator_prob(generator_scores: np.ndarray) -> np.ndarray:
    """Max probability over the known generators (columns 1.. of the (N, 1+G) softmax over
    ["real", *generators]), renormalised over the generator columns so the real/fake decision does not leak
    into the open-set score [ours]."""
    g = np.asarray(generator_scores, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] < 2:
        raise ValueError(f"generator_scores must be (N, 1+G) with G >= 1, got shape {g.shape}")
    gens = g[:, 1:]
    total = gens.sum(axis=1, keepdims=True)
    total = np.where(total > 0, total, 1.0)
    return (gens / total).max(axis=1)


def unknown_threshold(known_fake_max_prob: np.ndarray, quantile: float = 0.05) -> float:
    """The `quantile`-quantile of the max-generator probability of held-out fakes from KNOWN generators: about
    `quantile` of known-generator fakes fall below it and would be called "unknown" [ours]. 0.0 (never unknown)
    when there is no held-out fake or only one generator (attribution has nothing to choose)."""
    p = np.asarray(known_fake_max_prob, dtype=np.float64).ravel()
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"unknown quantile must be in [0, 1), got {quantile}")
    if p.size == 0:
        return 0.0
    return float(np.quantile(p, quantile, method="lower"))


def calibrate_from_scores(
    labels: np.ndarray,
    p_fake: np.ndarray,
    generator_scores: np.ndarray | None,
    *,
    target_fpr: float,
    unknown_quantile: float = 0.05,
    n_generators: int,
) -> dict[str, Any]:
    """Both thresholds from validation predictions. Returns {"threshold", "unknown_threshold", "n_real",
    "n_fake", "val_fpr", "val_tpr"} (the last two measured on the same split, for the record)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(p_fake, dtype=np.float64).ravel()
    real, fake = p[y == 0], p[y == 1]
    thr = threshold_for_fpr(real, target_fpr)
    if generator_scores is not None and n_generators >= 2 and fake.size:
        unk = unknown_threshold(max_generator_prob(np.asarray(generator_scores)[y == 1]), unknown_quantile)
    else:
        unk = 0.0
    out = {
        "threshold": thr,
        "unknown_threshold": unk,
        "target_fpr": float(target_fpr),
        "unknown_quantile": float(unknown_quantile),
        "n_real": int(real.size),
        "n_fake": int(fake.size),
        "val_fpr": float(np.mean(real > thr)),
        "val_tpr": float(np.mean(fake > thr)) if fake.size else float("nan"),
    }
    log.info("calibrated", **out)
    return out
