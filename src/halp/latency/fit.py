"""Small non-negative least-squares fits: the op models and the end-to-end calibration.

Both fits have two or three unknowns, so the exact solution is found by trying every active set
(2^k small least-squares problems) instead of pulling in scipy. Non-negativity matters: a negative
per-op overhead or a negative weight on the layer sum would make predictions fall as widths grow.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np


def nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``argmin ||a·x - y||`` subject to ``x >= 0``, exactly, for a handful of columns."""
    a = np.asarray(a, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = a.shape[1]
    best, best_err = np.zeros(n), float(np.sum(y**2))
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            sub = a[:, cols]
            x, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(x < 0):
                continue
            err = float(np.sum((sub @ x - y) ** 2))
            if err < best_err - 1e-15 * max(best_err, 1.0):
                best = np.zeros(n)
                best[list(cols)] = x
                best_err = err
    return best


def fit_line(volume: Sequence[float], ms: Sequence[float]) -> tuple[float, float]:
    """``ms ≈ overhead + slope · volume`` with both terms >= 0, relative errors weighted equally."""
    v = np.asarray(volume, dtype=np.float64)
    t = np.asarray(ms, dtype=np.float64)
    w = 1.0 / np.maximum(t, 1e-9)
    x = nnls(np.stack([np.ones_like(v), v], axis=1) * w[:, None], t * w)
    return float(x[0]), float(x[1])


def fit_calibration(
    layers_ms: Sequence[float], ops_ms: Sequence[float], measured_ms: Sequence[float]
) -> tuple[float, float, float, str]:
    """Fit ``measured ≈ a·layers + b·ops + c`` (``a, b, c >= 0``, relative error weighting).

    With fewer than three distinct samples the fit is underdetermined; then a single scale
    ``measured ≈ s·(layers + ops)`` is used.

    Returns:
        ``(a, b, c, method)`` where method is ``"nnls"`` or ``"ratio"``.
    """
    lay = np.asarray(layers_ms, dtype=np.float64)
    ops = np.asarray(ops_ms, dtype=np.float64)
    y = np.asarray(measured_ms, dtype=np.float64)
    if y.size == 0:
        return 1.0, 1.0, 0.0, "identity"
    total = lay + ops
    distinct = np.unique(np.round(total, 9)).size
    if y.size < 3 or distinct < 3:
        s = float(np.median(y / np.maximum(total, 1e-12)))
        return s, s, 0.0, "ratio"
    w = 1.0 / np.maximum(y, 1e-12)
    x = nnls(np.stack([lay, ops, np.ones_like(y)], axis=1) * w[:, None], y * w)
    return float(x[0]), float(x[1]), float(x[2]), "nnls"
