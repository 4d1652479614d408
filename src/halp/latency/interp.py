"""Piecewise-linear interpolation on channel grids, vectorised.

Latency over (cin, cout) is close to bilinear (a + b·cin + c·cout + d·cin·cout) apart from the
staircase, so bilinear interpolation on a coarse grid is exact for the smooth part and the fine cout
sweep restores the staircase near full width. Grid points are reproduced bit for bit (weights 0 and 1),
which the tests rely on. Outside the grid the edge segment is continued linearly; an axis with a single
point (a width no pruning can change) scales proportionally.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

import numpy as np


def axis_weights(grid: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bracketing indices and weight of ``x`` on an ascending ``grid``.

    Returns:
        ``(i0, i1, w, scale)`` with value = ``scale · ((1 - w)·v[i0] + w·v[i1])``; ``w`` leaves [0, 1]
        outside the grid (linear extrapolation of the edge segment); ``scale`` is ``x / grid[0]`` for a
        one-point grid and 1 otherwise.
    """
    g = np.asarray(grid, dtype=np.float64)
    xs = np.asarray(x, dtype=np.float64)
    if g.size == 1:
        zeros = np.zeros(xs.shape, dtype=np.intp)
        return zeros, zeros, np.zeros(xs.shape), xs / g[0]
    j = np.clip(np.searchsorted(g, xs, side="right"), 1, g.size - 1)
    i0 = j - 1
    w = (xs - g[i0]) / (g[j] - g[i0])
    return i0, j, w, np.ones(xs.shape)


def interp1(grid: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` given on ``grid`` at ``x`` (see :func:`axis_weights`)."""
    i0, i1, w, s = axis_weights(grid, x)
    v = np.asarray(values, dtype=np.float64)
    return s * ((1.0 - w) * v[i0] + w * v[i1])


def interp2(
    gin: np.ndarray, gout: np.ndarray, values: np.ndarray, cin: np.ndarray, cout: np.ndarray
) -> np.ndarray:
    """Bilinear interpolation of ``values[(len(gin), len(gout))]`` at points ``(cin, cout)``."""
    i0, i1, wi, si = axis_weights(gin, cin)
    j0, j1, wo, so = axis_weights(gout, cout)
    v = np.asarray(values, dtype=np.float64)
    out = (1.0 - wi) * ((1.0 - wo) * v[i0, j0] + wo * v[i0, j1]) + wi * ((1.0 - wo) * v[i1, j0] + wo * v[i1, j1])
    return si * so * out


def outside(grid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mask of the ``x`` that lie outside ``[grid[0], grid[-1]]``."""
    xs = np.asarray(x)
    return (xs < grid[0]) | (xs > grid[-1])


# -- scalar versions: the same arithmetic in the same order (bit-identical results), without numpy's
# per-call overhead, for the pruner's inner loop where one network prediction is ~50 lookups.
def axis_weights1(grid: Sequence[float], x: float) -> tuple[int, int, float, float]:
    """Scalar :func:`axis_weights` on a grid given as a list."""
    n = len(grid)
    if n == 1:
        return 0, 0, 0.0, x / grid[0]
    j = min(max(bisect_right(grid, x), 1), n - 1)
    i = j - 1
    return i, j, (x - grid[i]) / (grid[j] - grid[i]), 1.0


def interp1_scalar(grid: Sequence[float], values: Sequence[float], x: float) -> float:
    i0, i1, w, s = axis_weights1(grid, x)
    return s * ((1.0 - w) * values[i0] + w * values[i1])


def interp2_scalar(
    gin: Sequence[float], gout: Sequence[float], values: Sequence[Sequence[float]], cin: float, cout: float
) -> float:
    i0, i1, wi, si = axis_weights1(gin, cin)
    j0, j1, wo, so = axis_weights1(gout, cout)
    v0, v1 = values[i0], values[i1]
    out = (1.0 - wi) * ((1.0 - wo) * v0[j0] + wo * v0[j1]) + wi * ((1.0 - wo) * v1[j0] + wo * v1[j1])
    return si * so * out
