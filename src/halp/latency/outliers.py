"""Spotting measurements disturbed by other processes, so the profiler can take them again.

On a busy machine a whole timing run can be slowed down (a preempted worker thread makes every
parallel region wait for a scheduler tick: we saw a 0.3 ms conv reported as 32 ms). Such noise only
ever makes a point *slower*, and latency over a channel grid is smooth apart from staircase steps of a
few tens of percent. So a point far above a robust smooth fit of its neighbours is suspect: the
profiler measures it again and keeps the faster median. A genuine step is simply confirmed.
"""

from __future__ import annotations

import numpy as np


def _trimmed_fit(design: np.ndarray, values: np.ndarray, threshold: float) -> np.ndarray:
    """Least squares in log space, refitted without the points far above the fit (contamination is
    one-sided); returns the points above ``threshold`` × fit."""
    y = np.log(np.maximum(values, 1e-9))
    keep = np.ones(y.size, dtype=bool)
    high = np.zeros(y.size, dtype=bool)
    for _ in range(4):
        if keep.sum() <= design.shape[1]:
            break
        coef, *_ = np.linalg.lstsq(design[keep], y[keep], rcond=None)
        high = y - design @ coef > np.log(threshold)
        if np.array_equal(~high, keep):
            break
        keep = ~high
    return high


def suspects_grid(cin: np.ndarray, cout: np.ndarray, median: np.ndarray, threshold: float = 1.5) -> np.ndarray:
    """Mask of grid points ``median[(len(cin), len(cout))]`` more than ``threshold`` × a smooth fit."""
    m = np.asarray(median, dtype=np.float64)
    if m.size < 5:
        return np.zeros(m.shape, dtype=bool)
    ci, co = np.meshgrid(np.log(cin.astype(float)), np.log(cout.astype(float)), indexing="ij")
    cols = [np.ones(m.size)]
    if len(cin) > 1:
        cols += [ci.ravel(), ci.ravel() ** 2]
    if len(cout) > 1:
        cols += [co.ravel(), co.ravel() ** 2]
    if len(cin) > 1 and len(cout) > 1:
        cols.append((ci * co).ravel())
    return _trimmed_fit(np.stack(cols, axis=1), m.ravel(), threshold).reshape(m.shape)


def suspects_sweep(median: np.ndarray, threshold: float = 1.5, window: int = 9) -> np.ndarray:
    """Mask of points of a contiguous channel sweep more than ``threshold`` × their neighbourhood's median."""
    v = np.asarray(median, dtype=np.float64)
    out = np.zeros(v.size, dtype=bool)
    half = window // 2
    for i in range(v.size):
        lo, hi = max(0, i - half), min(v.size, i + half + 1)
        out[i] = v[i] > threshold * float(np.median(v[lo:hi]))
    return out
