"""Calibration [ours]: the detection threshold for a target false-positive rate on held-out REAL images, and
the "unknown generator" threshold on held-out fakes of known generators. Both are stored in the checkpoint's
DetectorMeta (`threshold`, `unknown_threshold`).

Pure functions over scores (training calibrates on its validation split with `calibrate_from_scores`);
`calibrate_checkpoint` runs a saved detector over labelled data and rewrites its metadata (jobs/calibrate.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from pipeline.logs import get_logger
from pipeline.settings import StrictModel

log = get_logger(__name__)


def threshold_for_fpr(real_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold t with `mean(real_scores >= t) <= target_fpr` (the Predictor calls an image fake
    when `p_fake >= t`).

    With k = floor(target_fpr * n), t is just above the (k+1)-th largest real score (the next float32 after
    it, capped at 1.0 for probabilities), so at most k reals reach it (fewer with ties). On the calibration
    set the realised FPR is <= target_fpr, and within 1/n of it when scores are distinct."""
    s = np.asarray(real_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("cannot calibrate a threshold without any real images in the calibration split")
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    if not np.all(np.isfinite(s)):
        raise ValueError("real scores contain NaN or inf")
    desc = np.sort(s)[::-1]
    k = int(np.floor(target_fpr * s.size + 1e-9))
    if k >= s.size:
        return float(desc[-1])
    # the next float32 above it: exactly representable, so float32 p_fake (the Predictor's) and float64 scores
    # compare the same way against it
    t = float(np.nextafter(np.float32(desc[k]), np.float32(np.inf)))
    if desc[k] <= 1.0 < t:
        t = 1.0
    return t


def max_generator_prob(generator_scores: np.ndarray) -> np.ndarray:
    """The attribution confidence the Predictor compares with `unknown_threshold`: the max of the (N, 1+G)
    softmax over ["real", *generators] (pipeline.models.predictor: top_generator is "unknown" below it)."""
    g = np.asarray(generator_scores, dtype=np.float64)
    if g.ndim != 2 or g.shape[1] < 2:
        raise ValueError(f"generator_scores must be (N, 1+G) with G >= 1, got shape {g.shape}")
    return g.max(axis=1)


def unknown_threshold(known_fake_max_prob: np.ndarray, quantile: float = 0.05) -> float:
    """The `quantile`-quantile of the max-generator probability of held-out fakes from KNOWN generators: about
    `quantile` of known-generator fakes fall below it and would be called "unknown" [ours]. 0.0 (never
    unknown) when there is no held-out fake."""
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
    if generator_scores is not None and n_generators >= 1 and fake.size:
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
        "val_fpr": float(np.mean(real >= thr)),
        "val_tpr": float(np.mean(fake >= thr)) if fake.size else float("nan"),
    }
    log.info("calibrated", **out)
    return out


class CalibrateConfig(StrictModel):
    """What `jobs/calibrate.py` re-calibrates, and on what (its flags are these fields)."""

    detector: str = Field(description="checkpoint directory (local or s3://)")
    data: str = Field(description="held-out labelled data (UnivFD folder or WebDataset shards)")
    target_fpr: float = Field(0.05, gt=0, lt=1, description="false-positive rate on the data's reals")
    unknown_quantile: float = Field(
        0.05, ge=0, lt=1, description="quantile of the known fakes' max generator probability"
    )
    out: str | None = Field(None, description="write the calibrated checkpoint here instead of in place")
    batch_size: int = Field(32, ge=1, description="images per forward")


def calibrate_checkpoint(cfg: CalibrateConfig) -> dict[str, Any]:
    """Re-calibrate a saved detector on held-out labelled data and write its metadata back (to `cfg.out`,
    default the checkpoint itself). Reals set the FPR threshold; fakes of the checkpoint's known generators
    set the unknown threshold (fakes of other generators are ignored for it). Writes calibration.json beside
    it."""
    import json
    import tempfile
    from pathlib import Path

    from pipeline import storage
    from pipeline.data.sources import load_labelled
    from pipeline.models import Predictor, load_detector, save_detector
    from pipeline.train.feed import SkipCounter, listing_table, predict_table

    det, meta = load_detector(cfg.detector)
    known = set(meta.generators)
    records = [r for r in load_labelled(cfg.data) if r.label == 0 or not known or r.generator in known]
    if not any(r.label == 0 for r in records):
        raise ValueError(f"{cfg.data} holds no real images: the FPR threshold needs held-out reals")
    predictor = Predictor(det, meta, device="cpu", dtype="float32")
    skips = SkipCounter()
    # streamed: one batch of images in memory at a time; unreadable images are counted and left out
    table = listing_table(records)
    pred = predict_table(predictor, table, batch_size=cfg.batch_size, skips=skips)
    labels = np.array([records[i].label for i in pred["row"]])
    if not np.any(labels == 0):
        raise ValueError(f"{cfg.data}: none of its real images could be read; nothing to calibrate on")
    calib = calibrate_from_scores(
        labels,
        pred["p_fake"],
        pred["generator_scores"],
        target_fpr=cfg.target_fpr,
        unknown_quantile=cfg.unknown_quantile,
        n_generators=len(meta.generators),
    )
    calib["skipped"] = skips.record()
    calib["data"] = cfg.data
    new_meta = meta.model_copy(
        update={"threshold": calib["threshold"], "unknown_threshold": calib["unknown_threshold"]}
    )
    dest = cfg.out or cfg.detector
    with tempfile.TemporaryDirectory(prefix="genscan-calib-") as tmp:
        save_detector(det, tmp, new_meta)
        (Path(tmp) / "calibration.json").write_text(json.dumps(calib, indent=2))
        if cfg.out and cfg.out != cfg.detector:  # carry the training record along
            for name in ("train_config.json", "metrics.jsonl", "train_summary.json"):
                src = storage.join(cfg.detector, name)
                if storage.exists(src):
                    (Path(tmp) / name).write_bytes(storage.read_bytes(src))
        storage.publish_dir(Path(tmp), dest)
    log.info("checkpoint_recalibrated", detector=cfg.detector, out=dest, threshold=calib["threshold"])
    return calib
