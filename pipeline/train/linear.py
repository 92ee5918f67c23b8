"""Few-shot linear detector on frozen features (seed 001, Cozzolino et al.) [code + ours].

[code] frozen CLIP features, one linear layer, logit > 0 means synthetic, works from very few images.
[ours] the trainer: scikit-learn LogisticRegression (or LinearSVC) on standardised features; the scaler is
folded back into the weights so the detector's own linear head reproduces the sklearn decision function
exactly (`w' = w / sigma`, `b' = b - sum(w * mu / sigma)`). The attribution head gets a multinomial logistic
regression over ["real", *generators] the same way when there are >= 2 classes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from pipeline.logs import get_logger

log = get_logger(__name__)


def _fold(scaler: StandardScaler, coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    w = coef / scale[None, :]
    b = intercept - (coef * (scaler.mean_ / scale)[None, :]).sum(axis=1)
    return w.astype(np.float32), b.astype(np.float32)


def fit_binary(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    classifier: Literal["logistic", "svm"] = "logistic",
    c: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Real(0)/fake(1) linear classifier on raw features -> (weight (D,), bias) of `features @ w + b`."""
    y = np.asarray(labels).astype(np.int64)
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError("the linear detector needs both real and fake training images")
    scaler = StandardScaler().fit(features)
    z = scaler.transform(features)
    if classifier == "logistic":
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    else:
        clf = LinearSVC(C=c, max_iter=20000, random_state=seed)
    clf.fit(z, y)
    w, b = _fold(scaler, np.atleast_2d(clf.coef_), np.atleast_1d(clf.intercept_))
    log.info("linear_fit", classifier=classifier, c=c, n=int(y.size), train_acc=float(clf.score(z, y)))
    return w[0], float(b[0])


def fit_multiclass(
    features: np.ndarray, classes: np.ndarray, n_classes: int, *, c: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression over class indices 0..n_classes-1 -> (weight (C, D), bias (C,)).
    Classes absent from the training data get weight 0 and a very negative bias."""
    y = np.asarray(classes).astype(np.int64)
    present = np.unique(y)
    d = features.shape[1]
    w_full = np.zeros((n_classes, d), np.float32)
    b_full = np.full((n_classes,), -20.0, np.float32)
    if present.size < 2:
        b_full[present] = 0.0
        return w_full, b_full
    scaler = StandardScaler().fit(features)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(scaler.transform(features), y)
    coef, intercept = np.atleast_2d(clf.coef_), np.atleast_1d(clf.intercept_)
    if present.size == 2:  # sklearn returns one row for two classes: logit of the second vs the first
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    w, b = _fold(scaler, coef, intercept)
    w_full[clf.classes_] = w
    b_full[clf.classes_] = b
    return w_full, b_full
