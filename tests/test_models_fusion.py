"""The six fusion rules against the peer's own scipy expressions (ClipBased-SID utils/fusion.py, restated
here as the reference) and against direct float64 probability arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, log_expit, logit, logsumexp

from pipeline.models.fusion import DEFAULT_FUSION, FUSIONS, fuse
from pipeline.settings import ConfigError


def softminusinv(x: np.ndarray) -> np.ndarray:
    return x - np.log(-np.expm1(x))


REFERENCE = {
    "mean_logit": lambda x, axis: np.mean(x, axis),
    "max_logit": lambda x, axis: np.max(x, axis),
    "median_logit": lambda x, axis: np.median(x, axis),
    "lse_logit": lambda x, axis: logsumexp(x, axis),
    "mean_prob": lambda x, axis: softminusinv(logsumexp(log_expit(x), axis) - np.log(x.shape[axis])),
    "soft_or_prob": lambda x, axis: -softminusinv(np.sum(log_expit(-x), axis)),
}


def test_rules_and_default() -> None:
    assert set(FUSIONS) == set(REFERENCE) and DEFAULT_FUSION == "soft_or_prob"
    with pytest.raises(ConfigError, match="fusion must be one of"):
        fuse(np.zeros((2, 2)), "vote")


@pytest.mark.parametrize("rule", FUSIONS)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_equals_peer_reference(rule: str, k: int) -> None:
    x = np.random.default_rng(k).normal(0, 4, size=(200, k))
    np.testing.assert_allclose(fuse(x, rule), REFERENCE[rule](x, -1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fuse(x.T, rule, axis=0), REFERENCE[rule](x, -1), rtol=1e-9, atol=1e-9)


def test_probability_rules_mean_what_they_say() -> None:
    x = np.random.default_rng(0).normal(0, 2, size=(100, 3))
    p = expit(x)
    np.testing.assert_allclose(expit(fuse(x, "mean_prob")), p.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(expit(fuse(x, "soft_or_prob")), 1 - np.prod(1 - p, axis=1), rtol=1e-10)
    np.testing.assert_allclose(fuse(x, "soft_or_prob"), logit(1 - np.prod(1 - p, axis=1)), rtol=1e-8)


@pytest.mark.parametrize("rule", FUSIONS)
def test_one_detector_is_the_identity(rule: str) -> None:
    x = np.linspace(-30, 30, 61)[:, None]
    np.testing.assert_allclose(fuse(x, rule), x[:, 0], rtol=1e-9, atol=1e-9)


def test_large_logits_stay_finite_and_ordered() -> None:
    """Logits of +-800 (float64 exp overflows at ~709): the log-domain forms stay finite and monotone."""
    x = np.array(
        [[-800.0, -800.0], [-40.0, -40.0], [0.0, 0.0], [40.0, 40.0], [800.0, -800.0], [800.0, 800.0]]
    )
    for rule in FUSIONS:
        f = fuse(x, rule)
        assert np.all(np.isfinite(f)), (rule, f)
        assert np.all(np.diff(f[:4]) > 0), (rule, f)
    assert fuse(x, "soft_or_prob")[4] > 700  # one confident detector decides an OR
    assert abs(fuse(x, "soft_or_prob")[0] - (-800 + np.log(2))) < 1e-9  # p_or = p1 + p2 when both are tiny
    assert abs(fuse(x, "mean_prob")[4]) < 1e-9  # mean of p=1 and p=0 is 0.5


def test_decision_rules() -> None:
    """p_fake_ge: float32 sigmoid >= threshold (genscan); logit_gt: logit > logit(threshold) (the peers'
    strict `sigmoid > 0.5` / `LLR > 0`, decided on the logit)."""
    from pipeline.models.decision import is_fake, logit_of

    x = np.array([-1.0, -1e-9, 0.0, 1e-9, 1.0])
    assert is_fake(x, 0.5, "logit_gt").tolist() == [False, False, False, True, True]
    assert is_fake(x, 0.5, "p_fake_ge").tolist() == [False, True, True, True, True]  # float32 p rounds to 0.5
    assert is_fake(x, 0.9, "logit_gt").tolist() == [False] * 5
    assert abs(logit_of(0.9) - np.log(9.0)) < 1e-12 and logit_of(0.0) == -np.inf and logit_of(1.0) == np.inf
    with pytest.raises(ValueError, match="decision must be one of"):
        is_fake(x, 0.5, "vote")
