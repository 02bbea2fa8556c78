"""K-fold cross-validation (§4.10) as a runner feature: which rows each fold holds out, and the
mean.

The book's `get_k_fold_data` holds out the i-th contiguous slice of n // k rows and never uses the
last n % k rows; here the first n % k folds hold one row more, so every row is held out exactly once
(the same slices as the book's when k divides n).
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from d2lrun.errors import UsageError


def fold_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """(start, stop) of each fold's held-out slice."""
    sizes = [n // k + (i < n % k) for i in range(k)]
    starts = np.cumsum([0, *sizes])
    return [(int(a), int(b)) for a, b in pairwise(starts)]


def fold_rows(n: int, k: int, i: int, shuffle: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of fold i of k over n rows; shuffle permutes them with seed
    first."""
    if n < k:
        raise UsageError(
            f"dataset.folds={k} is more folds than the {n} rows. Fix: dataset.folds={max(2, n)}."
        )
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    start, stop = fold_bounds(n, k)[i]
    return np.concatenate([order[:start], order[stop:]]), order[start:stop]


def mean_row(rows: list[dict]) -> dict:
    """The mean of every number the rows share (the k-fold result the book prints)."""
    keys = [k for k in rows[0] if all(isinstance(r.get(k), (int, float)) for r in rows)]
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}
