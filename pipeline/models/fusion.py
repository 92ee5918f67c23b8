"""Fusion of several detectors' logits into one per image: the six rules of ClipBased-SID's
``utils/fusion.py`` [code, grip-unina/ClipBased-SyntheticImageDetection], each returning a fused LOGIT.

* ``mean_logit``, ``max_logit``, ``median_logit``: over the K logits;
* ``lse_logit``: log sum_k exp(x_k);
* ``mean_prob``: logit of the mean probability, logit(mean_k sigmoid(x_k));
* ``soft_or_prob`` (their default): logit of the probability that at least one detector is right to call the
  image fake, 1 - prod_k (1 - sigmoid(x_k)); their form is ``-softminusinv(sum_k log sigmoid(-x_k))``.

Computed in float64 in the log domain (log-sigmoid via logaddexp) so no probability underflows for logits
of any size; a test checks each rule against the peer's scipy expressions.
"""

from __future__ import annotations

import numpy as np

from pipeline.settings import ConfigError

FUSIONS: tuple[str, ...] = (
    "mean_logit",
    "max_logit",
    "median_logit",
    "lse_logit",
    "mean_prob",
    "soft_or_prob",
)
DEFAULT_FUSION = "soft_or_prob"
FUSED_THRESHOLD = 0.5  # a set's fused p_fake above this (fused logit > 0) is fake
_REDUCE = {"mean_logit": np.mean, "max_logit": np.max, "median_logit": np.median}


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def check_fusion(rule: str) -> str:
    if rule not in FUSIONS:
        raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}, got {rule!r}")
    return rule


def fuse(logits: np.ndarray, rule: str = DEFAULT_FUSION, axis: int = -1) -> np.ndarray:
    """Fused logits (float64) of ``logits`` (any shape; the detectors along ``axis``)."""
    check_fusion(rule)
    x = np.asarray(logits, dtype=np.float64)
    if x.shape[axis] == 0:
        raise ValueError("fuse: no detectors to fuse (empty axis)")
    if rule in _REDUCE:
        return _REDUCE[rule](x, axis=axis)
    if rule == "lse_logit":
        return _logsumexp(x, axis)
    if rule == "mean_prob":
        # log mean p - log mean (1 - p)
        return _logsumexp(_log_sigmoid(x), axis) - _logsumexp(_log_sigmoid(-x), axis)
    # soft_or_prob: log(1 - P_none) - log(P_none) with log P_none = -sum_k softplus(x_k) = -exp(L),
    # L = logsumexp_k log softplus(x_k) (log softplus(x) = x to 1e-13 below -30, where softplus underflows)
    with np.errstate(divide="ignore"):
        log_sp = np.where(x < -30.0, x, np.log(np.logaddexp(0.0, np.maximum(x, -30.0))))
        big_l = _logsumexp(log_sp, axis)
        neg_log_none = np.exp(big_l)
        log_or = np.where(big_l < -30.0, big_l, np.log(-np.expm1(-neg_log_none)))
    return log_or + neg_log_none


def attributor(labels: list[list[str]]) -> int:
    """Which member's top_generator / generator_scores a set's rows carry: the first with generator labels
    (["real", *generators] longer than ["real"]), else the first."""
    return next((i for i, lab in enumerate(labels) if len(lab) > 1), 0)
