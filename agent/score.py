"""Scoring a label: correlation between the simulator's predictions and the real activations.

Pure numpy, no imports of ours, so the math can be tested (and reused) without the LLM stack.

Why per-protein max activation and Pearson: the simulator predicts one number per held-out protein
(0-10) and the index stores each protein's max activation; Pearson r is the measure InterPLM reports,
so our scores are comparable with theirs. Spearman is stored beside it because the 0-10 scale the
simulator uses is ordinal at heart, and a monotone but non-linear prediction should not look bad.

Constant vectors: a correlation with a vector that does not vary is undefined (0/0). We return
None, not 0.0, so that "no variation to explain" is never confused with "explained nothing"; a None
score is stored as NULL and is never validated.

Spread: a dense feature can fire at almost the same strength on every held-out protein (normalised
actuals 0.97..0.98, say). Pearson r is then defined but measures noise, so a label is validated only
when the actuals span at least `min_spread` of the normalised 0..1 range (default 0.2); r is still
stored for the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_HELDOUT = 10
DEFAULT_MIN_SPREAD = 0.2  # of the normalised 0..1 activation range


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cannot correlate vectors of lengths {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("cannot correlate vectors holding NaN or infinity")
    return a, b


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None when fewer than two points or either vector is constant."""
    a, b = _pair(x, y)
    if a.size < 2:
        return None
    da, db = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((da @ da) * (db @ db)))
    # Relative tolerance: a vector whose spread is only rounding noise counts as constant.
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1.0)
    if norm <= 1e-12 * scale * scale:
        return None
    return float(np.clip((da @ db) / norm, -1.0, 1.0))


def rankdata(x: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span (as scipy's 'average')."""
    a = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(a.size, dtype=np.float64)
    start = 0
    while start < a.size:
        end = start
        while end + 1 < a.size and sorted_a[end + 1] == sorted_a[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's r of the tie-averaged ranks; None where Pearson would be."""
    a, b = _pair(x, y)
    return pearson(rankdata(a), rankdata(b))


def is_validated(
    r: float | None, n: int, *, threshold: float = DEFAULT_THRESHOLD, min_heldout: int = DEFAULT_MIN_HELDOUT
) -> bool:
    """A label is validated when r clears the threshold on at least `min_heldout` proteins."""
    return r is not None and r >= threshold and n >= min_heldout


@dataclass(frozen=True)
class Score:
    pearson: float | None
    spearman: float | None
    n: int
    validated: bool


def score(
    predicted: Sequence[float],
    actual: Sequence[float],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_heldout: int = DEFAULT_MIN_HELDOUT,
    min_spread: float = DEFAULT_MIN_SPREAD,
) -> Score:
    """Score predictions against normalised (0..1) actual activations; see the module doc on spread."""
    r = pearson(predicted, actual)
    rho = spearman(predicted, actual)
    n = len(predicted)
    spread = float(np.ptp(np.asarray(actual, dtype=np.float64))) if n else 0.0
    validated = spread >= min_spread and is_validated(r, n, threshold=threshold, min_heldout=min_heldout)
    return Score(r, rho, n, validated)
