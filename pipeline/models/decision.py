"""Decision rules: a detector's logit and threshold -> is_fake, per ``DetectorConfig.decision``.

``p_fake_ge``: sigmoid(logit) >= threshold (genscan's trained detectors; p_fake is float32 in the output).
``logit_gt``: logit > logit(threshold) computed on the logit itself, so no float32 rounding of p near 0.5
decides [code]: UnivFD's and RINE's evaluation count ``sigmoid(out) > 0.5`` as fake, ClipBased ``LLR > 0``.
At threshold 0.5 both peer rules are ``logit > 0``; they differ from ``p_fake_ge`` only for |logit| below
float32 resolution of p around 0.5 (about 6e-8) and at exactly 0.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.models.constants import DECISION_RULES


def sigmoid(logit: np.ndarray) -> np.ndarray:
    """float64 logistic, float32 out (the p_fake column)."""
    x = np.asarray(logit, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def logit_of(p: float) -> float:
    """log(p / (1 - p)); +-inf at 1 / 0."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)


def is_fake(logit: np.ndarray, threshold: float, rule: str) -> np.ndarray:
    """Boolean array: which images the rule calls generated."""
    x = np.asarray(logit, dtype=np.float64)
    if rule == "p_fake_ge":
        return sigmoid(x) >= np.float32(threshold)
    if rule == "logit_gt":
        return x > logit_of(threshold)
    raise ValueError(f"decision must be one of {', '.join(DECISION_RULES)}, got {rule!r}")
