"""Statistics the reports share: bootstrap intervals and a small logistic regression.

Percentile bootstrap: resample the questions with replacement ``resamples`` times, compute
the statistic on each resample, and take the 2.5th and 97.5th percentiles. Questions are the
unit: a question's several judgments (both orders) or turns move together, so the interval
is *paired* whenever two quantities are computed from the same resample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

LEVEL = 0.95


def resample_indices(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """``resamples`` rows of ``n`` question indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return (float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def mean_interval(
    values: Sequence[float], resamples: int = 2000, seed: int = 0, level: float = LEVEL
) -> tuple[float, float] | None:
    """The bootstrap interval of a mean (an accuracy, when the values are 0 and 1)."""
    data = np.asarray(values, dtype=float)
    if not data.size:
        return None
    means = data[resample_indices(data.size, resamples, seed)].mean(axis=1)
    return percentile_interval(means, level)


def ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float], resamples: int = 2000,
    seed: int = 0, level: float = LEVEL,
) -> tuple[float, float] | None:  # fmt: skip
    """The paired bootstrap interval of sum(numerator) / sum(denominator), per question."""
    top, bottom = np.asarray(numerator, float), np.asarray(denominator, float)
    if not top.size:
        return None
    idx = resample_indices(top.size, resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = top[idx].sum(axis=1) / bottom[idx].sum(axis=1)
    return percentile_interval(ratios, level)


def statistic_interval(
    n: int, statistic: Callable[[np.ndarray], float], resamples: int = 2000, seed: int = 0,
    level: float = LEVEL,
) -> tuple[float, float] | None:  # fmt: skip
    """The bootstrap interval of any statistic of the questions (given their indices)."""
    if not n:
        return None
    values = np.array([statistic(idx) for idx in resample_indices(n, resamples, seed)])
    return percentile_interval(values, level)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def logistic_fit(
    features: np.ndarray, outcome: np.ndarray, l2: float = 1e-3, iterations: int = 50
) -> np.ndarray:
    """Coefficients of P(y=1) = sigmoid(features @ coef) by Newton's method (features carry
    their own intercept column). ``outcome`` may be fractional (a tie is 0.5): the same
    likelihood with soft labels. A little L2 keeps separable data finite."""
    x, y = np.asarray(features, float), np.asarray(outcome, float)
    coef = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = sigmoid(x @ coef)
        gradient = x.T @ (y - p) - l2 * coef
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        coef += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return coef
