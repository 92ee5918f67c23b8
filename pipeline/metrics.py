"""Detection and attribution metrics (UnivFD / Cozzolino protocol). AP and AUC come from scikit-learn.

Conventions: `labels` are 1 for generated (fake) and 0 for real; `scores` are "higher = more likely fake"
(p_fake or the logit, any monotone score gives the same AP/AUC). Accuracies are taken at a threshold on the
same scale as the scores: an image is called fake when `score >= threshold` (the Predictor's `is_fake` rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

Labels = Sequence[int] | np.ndarray
Scores = Sequence[float] | np.ndarray
DETECTION_KEYS = ("ap", "auc", "acc", "acc_05", "real_acc", "fake_acc", "balanced_acc", "n_real", "n_fake")


def _as_arrays(labels: Labels, scores: Scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    bad = set(np.unique(y).tolist()) - {0, 1}
    if bad:
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got {sorted(bad)}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return y, s


def _two_class(metric: Callable[..., float], labels: Labels, scores: Scores) -> float:
    y, s = _as_arrays(labels, scores)
    return float("nan") if y.min(initial=1) == y.max(initial=0) else float(metric(y, s))


def average_precision(labels: Labels, scores: Scores) -> float:
    """AP with fake as the positive class; NaN when only one class is present."""
    return _two_class(average_precision_score, labels, scores)


def roc_auc(labels: Labels, scores: Scores) -> float:
    """ROC AUC with fake as the positive class; NaN when only one class is present."""
    return _two_class(roc_auc_score, labels, scores)


def class_accuracies(labels: Labels, scores: Scores, threshold: float) -> dict[str, float]:
    """acc (over all images), real_acc (reals called real), fake_acc (fakes called fake), balanced_acc
    (mean of the two) at `score >= threshold`. A class with no images gives NaN for its accuracy."""
    y, s = _as_arrays(labels, scores)
    pred = s >= threshold
    real, fake = y == 0, y == 1
    real_acc = float(np.mean(~pred[real])) if real.any() else float("nan")
    fake_acc = float(np.mean(pred[fake])) if fake.any() else float("nan")
    acc = float(np.mean(pred == (y == 1))) if y.size else float("nan")
    balanced = float(np.nanmean([real_acc, fake_acc])) if (real.any() or fake.any()) else float("nan")
    return {"acc": acc, "real_acc": real_acc, "fake_acc": fake_acc, "balanced_acc": balanced}


def detection_metrics(labels: Labels, scores: Scores, threshold: float) -> dict[str, float | int]:
    """The per-generator row of the evaluation table: AP, AUC, accuracies at the calibrated `threshold`
    (acc, real_acc, fake_acc, balanced_acc) and plain accuracy at 0.5 (acc_05, UnivFD's threshold on
    p_fake)."""
    y, s = _as_arrays(labels, scores)
    row = {**class_accuracies(y, s, threshold), "acc_05": class_accuracies(y, s, 0.5)["acc"]}
    row.update(
        ap=average_precision(y, s), auc=roc_auc(y, s), n_real=int(np.sum(y == 0)), n_fake=int(np.sum(y == 1))
    )
    return {k: row[k] for k in DETECTION_KEYS}


def mean_row(rows: dict[str, dict[str, float | int]]) -> dict[str, float | int]:
    """The `mean` entry: unweighted mean over generators of every rate (NaNs skipped, as a benchmark table's
    mean column), and the summed image counts."""
    if not rows:
        return {k: float("nan") for k in DETECTION_KEYS}
    out: dict[str, float | int] = {}
    for key in DETECTION_KEYS:
        vals = [r[key] for r in rows.values()]
        if key.startswith("n_"):
            out[key] = int(sum(int(v) for v in vals))
        else:
            arr = np.asarray(vals, dtype=np.float64)
            out[key] = float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
    return out


def closed_set_accuracy(true_idx: Sequence[int] | np.ndarray, gen_scores: np.ndarray) -> float:
    """Attribution accuracy: argmax of the (N, 1+G) generator scores equals the true class index."""
    t = np.asarray(true_idx, dtype=np.int64).ravel()
    g = np.asarray(gen_scores)
    if g.ndim != 2 or g.shape[0] != t.shape[0]:
        raise ValueError(f"gen_scores must be (N, C) with N={t.shape[0]}, got {g.shape}")
    if t.size == 0:
        return float("nan")
    return float(np.mean(np.argmax(g, axis=1) == t))


def open_set_auroc(known_max_prob: np.ndarray, unknown_max_prob: np.ndarray) -> float:
    """Open-set AUROC (as POSE reports it): how well the max known-generator probability separates fakes of
    known generators (positive) from fakes of held-out generators. NaN when either side is empty."""
    k = np.asarray(known_max_prob, dtype=np.float64).ravel()
    u = np.asarray(unknown_max_prob, dtype=np.float64).ravel()
    if k.size == 0 or u.size == 0:
        return float("nan")
    y = np.concatenate([np.ones_like(k), np.zeros_like(u)])
    return float(roc_auc_score(y, np.concatenate([k, u])))
