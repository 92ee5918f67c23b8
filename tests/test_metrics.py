from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.metrics import (
    average_precision,
    class_accuracies,
    closed_set_accuracy,
    detection_metrics,
    mean_row,
    open_set_auroc,
    roc_auc,
)

LABELS = np.array([0, 0, 0, 0, 1, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.3, 0.7])


def test_ap_auc_match_sklearn_on_random_inputs() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = rng.normal(size=500) + y
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_hand_computed() -> None:
    # pairs (fake, real) ranked correctly: fake 0.9 beats all 4 reals, 0.7 beats 3, 0.3 beats 1 -> 8/12
    assert roc_auc(LABELS, SCORES) == pytest.approx(8 / 12)


def test_accuracies_hand_computed() -> None:
    acc = class_accuracies(LABELS, SCORES, threshold=0.5)
    # reals called fake: 0.8 -> real_acc 3/4; fakes above 0.5: 0.9, 0.7 -> fake_acc 2/3
    assert acc["real_acc"] == pytest.approx(3 / 4)
    assert acc["fake_acc"] == pytest.approx(2 / 3)
    assert acc["acc"] == pytest.approx(5 / 7)
    assert acc["balanced_acc"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    # the Predictor's '>=' rule: a score equal to the threshold is fake
    assert class_accuracies([1], [0.5], 0.5)["fake_acc"] == 1.0


def test_detection_metrics_row_and_mean() -> None:
    row = detection_metrics(LABELS, SCORES, threshold=0.35)
    assert row["n_real"] == 4 and row["n_fake"] == 3
    assert row["real_acc"] == pytest.approx(1 / 4)  # 0.35, 0.4, 0.8 >= 0.35
    assert row["acc_05"] == pytest.approx(5 / 7)
    other = detection_metrics([0, 1], [0.2, 0.9], threshold=0.5)
    mean = mean_row({"a": row, "b": other})
    assert mean["ap"] == pytest.approx((row["ap"] + 1.0) / 2)
    assert mean["n_fake"] == 4


def test_single_class_gives_nan_not_crash() -> None:
    assert math.isnan(average_precision([1, 1], [0.2, 0.3]))
    assert math.isnan(roc_auc([0, 0], [0.2, 0.3]))
    row = detection_metrics([1, 1], [0.2, 0.9], 0.5)
    assert math.isnan(row["real_acc"]) and row["fake_acc"] == 0.5


def test_bad_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        average_precision([0, 1], [0.1])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])


def test_attribution_metrics() -> None:
    g = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    assert closed_set_accuracy([0, 1, 2, 2], g) == pytest.approx(3 / 4)
    known = np.array([0.9, 0.8, 0.6])
    unknown = np.array([0.5, 0.7])
    # pairs known>unknown: 0.9>both, 0.8>both, 0.6>0.5 -> 5/6
    assert open_set_auroc(known, unknown) == pytest.approx(5 / 6)
    assert math.isnan(open_set_auroc(known, np.array([])))
