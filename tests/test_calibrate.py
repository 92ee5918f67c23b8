from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.cli.calibrate import main as calibrate_main
from pipeline.train.calibrate import (
    calibrate_from_scores,
    max_generator_prob,
    threshold_for_fpr,
    unknown_threshold,
)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.1])
def test_threshold_hits_target_fpr_on_held_out_reals(target: float) -> None:
    rng = np.random.default_rng(1)
    calib = rng.beta(2, 5, size=4000)  # synthetic p_fake of real images
    held_out = rng.beta(2, 5, size=20000)
    t = threshold_for_fpr(calib, target)
    # the Predictor's rule is p_fake >= threshold
    assert np.mean(calib >= t) <= target
    assert np.mean(calib >= t) >= target - 1 / calib.size - 1e-12
    # generalises to fresh reals from the same distribution within sampling tolerance
    assert abs(np.mean(held_out >= t) - target) < 0.25 * target + 0.004


def test_threshold_edge_cases() -> None:
    t0 = threshold_for_fpr(np.array([0.2, 0.9, 0.5]), 0.0)  # FPR 0 -> just above the largest real score
    assert 0.9 < t0 < 0.9 + 1e-7
    assert threshold_for_fpr(np.array([0.2, 1.0]), 0.0) == 1.0  # capped: a probability threshold stays <= 1
    # float32 scores (the Predictor's p_fake) compared in float32 give the same FPR
    s32 = np.random.default_rng(0).uniform(size=1000).astype(np.float32)
    t32 = threshold_for_fpr(s32, 0.05)
    assert np.mean(s32 >= t32) == np.mean(s32 >= np.float32(t32)) == 0.05
    ties = np.array([0.3] * 10 + [0.1] * 90)
    assert np.mean(ties >= threshold_for_fpr(ties, 0.05)) == 0.0  # ties never push the FPR over target
    with pytest.raises(ValueError, match="without any real images"):
        threshold_for_fpr(np.array([]), 0.05)
    with pytest.raises(ValueError, match="target_fpr"):
        threshold_for_fpr(np.array([0.1]), 1.5)


def test_unknown_threshold_quantile_and_max_prob() -> None:
    g = np.array([[0.5, 0.25, 0.25], [0.0, 0.9, 0.1]])
    np.testing.assert_allclose(max_generator_prob(g), [0.5, 0.9])  # same confidence the Predictor uses
    rng = np.random.default_rng(2)
    p = rng.uniform(size=10000)
    u = unknown_threshold(p, 0.05)
    assert abs(np.mean(p < u) - 0.05) < 0.005
    assert unknown_threshold(np.array([]), 0.05) == 0.0


def test_calibrate_from_scores_record() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(1000), np.ones(1000)].astype(int)
    p = np.r_[rng.uniform(0, 0.6, 1000), rng.uniform(0.4, 1.0, 1000)]
    gen = np.c_[1 - p, p * 0.7, p * 0.3]
    rec = calibrate_from_scores(y, p, gen, target_fpr=0.05, n_generators=2)
    assert rec["val_fpr"] <= 0.05 and rec["val_fpr"] > 0.04
    assert rec["n_real"] == 1000 and rec["n_fake"] == 1000
    conf = np.maximum(1 - p[1000:], 0.7 * p[1000:])
    assert rec["unknown_threshold"] == pytest.approx(np.quantile(conf, 0.05, method="lower"))
    assert np.mean(conf < rec["unknown_threshold"]) == pytest.approx(0.05, abs=0.002)
    none = calibrate_from_scores(y, p, None, target_fpr=0.05, n_generators=0)
    assert none["unknown_threshold"] == 0.0


@pytest.mark.parametrize("flag", ["--unknown-quantile", "--target-fpr"])
def test_calibrate_refuses_a_quantile_of_one_naming_the_flag(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A share of 1 would call every known fake 'unknown' (or every real fake): refused as the job's
    configuration error (exit 2, one line naming the flag) before any checkpoint or data is read."""
    args = ["--detector", str(tmp_path / "none"), "--data", str(tmp_path / "none"), flag, "1"]
    assert calibrate_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("configuration error: ") and flag in err[0], err
