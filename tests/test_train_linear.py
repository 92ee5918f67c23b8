from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pipeline.train.linear import fit_binary, fit_multiclass


def _data(n: int = 60, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 5, size=d) + rng.normal(size=d) * 3
    x[:, 0] += 2.0 * y
    return x, y


@pytest.mark.parametrize("classifier", ["logistic", "svm"])
def test_folded_weights_reproduce_sklearn_decision(classifier: str) -> None:
    x, y = _data()
    w, b = fit_binary(x, y, classifier=classifier)  # type: ignore[arg-type]
    z = StandardScaler().fit(x)
    if classifier == "logistic":
        ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(z.transform(x), y)
        np.testing.assert_allclose(x @ w + b, ref.decision_function(z.transform(x)), rtol=1e-4, atol=1e-4)
    # few-shot: 10 per class is enough to separate a clear signal
    acc = np.mean(((x @ w + b) > 0) == (y == 1))
    assert acc >= 0.9


def test_multiclass_folds_and_handles_two_and_missing_classes() -> None:
    x, y = _data(90)
    cls = y.copy()
    cls[y == 1] = 1 + (np.arange(int(y.sum())) % 2)  # two "generators"
    w, b = fit_multiclass(x, cls, n_classes=4)
    assert w.shape == (4, x.shape[1]) and b.shape == (4,)
    assert np.all(w[3] == 0) and b[3] < -10  # absent class never wins
    z = StandardScaler().fit(x)
    ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(z.transform(x), cls)
    np.testing.assert_array_equal(np.argmax(x @ w.T + b, 1), ref.predict(z.transform(x)))
    w2, b2 = fit_multiclass(x, y, n_classes=2)  # binary case expands to two rows
    ref2 = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(z.transform(x), y)
    np.testing.assert_array_equal(np.argmax(x @ w2.T + b2, 1), ref2.predict(z.transform(x)))


def test_one_class_rejected() -> None:
    x, _ = _data()
    with pytest.raises(ValueError, match="both real and fake"):
        fit_binary(x, np.zeros(len(x), int))
