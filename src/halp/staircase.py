"""Staircase analysis of one layer's latency sweep: where the cliffs are, and how far apart.

Real latency is a staircase in the channel count (tiles, vector widths). Given a sweep over output
channels (medians and a noise estimate per count), :func:`find_cliffs` finds the jumps that stand out
from the noise, robust to single outliers and to slopes, and :func:`detect_step` returns the typical
distance between them: the block size :mod:`halp.grouping` prunes in. Pure numpy.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

NO_STAIRCASE = 1
"""Step returned when a sweep shows no staircase (or too few cliffs to measure one): prune per channel."""


def _as_sweep(
    channels: np.ndarray, latency: np.ndarray, noise: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float arrays sorted by channel count."""
    ch = np.asarray(channels, dtype=np.float64)
    lat = np.asarray(latency, dtype=np.float64)
    if ch.ndim != 1 or lat.shape != ch.shape:
        raise ValueError(f"channels and latency must be 1-D of equal length, got shapes {ch.shape} and {lat.shape}")
    nz = np.asarray(noise, dtype=np.float64)
    if nz.ndim == 0:
        nz = np.full(ch.shape, float(nz))
    if nz.shape != ch.shape:
        raise ValueError(f"noise must be a number or one value per point ({ch.shape}), got shape {nz.shape}")
    if not (np.all(np.isfinite(ch)) and np.all(np.isfinite(lat)) and np.all(np.isfinite(nz))):
        raise ValueError("channels, latency and noise must be finite (found NaN or inf)")
    if np.any(nz < 0):
        raise ValueError("noise must be non-negative")
    order = np.argsort(ch, kind="stable")
    ch, lat, nz = ch[order], lat[order], nz[order]
    if np.any(np.diff(ch) == 0):
        raise ValueError("channels must not repeat: give one median per channel count")
    return ch, lat, nz


def _scatter_from_differences(lat: np.ndarray) -> float:
    """Point noise sd from first differences, before any cliff is known.

    Starts from each point's smaller difference to a neighbour (a cliff has a plateau on at least
    one side; the median ignores outliers; 0.548 sd for Gaussian noise), then a clipped standard
    deviation. Dense staircases still inflate it somewhat; :func:`_calibrated` refines it.
    """
    d = np.diff(lat)
    a = np.abs(d)
    scale = float(np.median(np.minimum(a[:-1], a[1:]))) / 0.548
    for _ in range(3):
        keep = np.abs(d - np.median(d)) <= 3.5 * math.sqrt(2.0) * scale
        if keep.sum() < 8 or scale == 0:
            break
        scale = float(np.std(d[keep])) / math.sqrt(2.0) / 0.9935  # 0.9935: sd lost to the clip
    return scale


def _calibrated(lat: np.ndarray, nz: np.ndarray, splits: list[int] | None = None) -> np.ndarray:
    """One noise level for every point: the sweep's own scatter, at most the typical given noise.

    Profilers report the spread of repeated timings (an IQR), which overstates how much a *median*
    moves several times over and would hide real cliffs; and on a busy machine a point's IQR mostly
    counts interruptions, which its median ignores, so the given noise's shape across points is not
    trusted either. The scatter of the medians around their plateaus is what a cliff must stand out
    from. Without ``splits`` it comes from first differences; with them (cliffs found on that first
    estimate) from the MAD of each point's distance to its plateau's median, which cliffs no longer
    inflate. The typical (median) given noise is an upper bound; 0.01% of the typical latency is a
    floor that keeps timer quantisation and tiny wobbles from counting as cliffs.
    """
    typical = float(np.median(nz))
    if len(lat) < 9:
        return nz
    if splits is None:
        scale = _scatter_from_differences(lat)
    else:
        edges = [0] + [s + 1 for s in splits] + [len(lat)]
        resid = np.concatenate([lat[a:b] - np.median(lat[a:b]) for a, b in zip(edges, edges[1:]) if b - a >= 3])
        if resid.size < 8:
            return _calibrated(lat, nz)
        scale = 1.4826 * float(np.median(np.abs(resid)))
    scale = max(scale, 1e-4 * float(np.median(np.abs(lat))))
    if typical > 0:
        scale = min(typical, scale)
    return np.full_like(nz, scale)


def _noise(ch: np.ndarray, lat: np.ndarray, nz: np.ndarray, k: float, w: int, calibrate: bool) -> np.ndarray:
    if not calibrate:
        return nz
    first = _calibrated(lat, nz)
    # Screen for cliffs at a lower threshold (extra splits barely move plateau medians), then
    # measure the noise around those plateaus; keep whichever estimate is smaller.
    splits = [c[0] for c in _cliffs(ch, lat, first, 0.6 * k, w)]
    return np.minimum(first, _calibrated(lat, nz, splits))


def _locate(lat: np.ndarray, a: int, b: int, first: int, last: int, cap: float) -> tuple[int, int, int] | None:
    """Where a two-level step fits ``lat[a:b+1]`` best, splits searched in ``first..last``.

    A split ``s`` puts points ``a..s`` on the lower-channel level. The fit is to each side's median
    with residuals capped at ``cap`` (half the jump), so an outlier costs the same wherever the split
    goes. An outlier right at the cliff hides which side it belongs to: then several splits tie, and
    we return the preferred one (nearest the middle of the detection run, where a clean cliff sits)
    together with the lowest and highest tied splits, for :func:`detect_step` to resolve. None when
    a straight line fits the points as well as any step.
    """
    centre = 0.5 * (first + last)

    def cost(s: int) -> float:
        left, right = lat[a : s + 1], lat[s + 1 : b + 1]
        r = np.concatenate((np.abs(left - np.median(left)), np.abs(right - np.median(right))))
        return float(np.minimum(r, cap).sum())

    costs = {s: cost(s) for s in range(first, last + 1)}
    best = min(costs.values())
    if best >= _line_cost(lat[a : b + 1], cap):
        return None  # a straight line fits as well: a slope, not a cliff
    # A misplaced ordinary point costs about a full cap; an outlier moving sides only shifts medians.
    tied = [s for s, c in costs.items() if c <= best + 0.25 * cap]
    return min(tied, key=lambda s: (abs(s - centre), s)), min(tied), max(tied)


def _line_cost(y: np.ndarray, cap: float) -> float:
    """Capped residuals of a robust straight line (Theil-Sen) through ``y``, for comparison with a step."""
    x = np.arange(len(y), dtype=np.float64)
    i, j = np.triu_indices(len(y), 1)
    slope = float(np.median((y[j] - y[i]) / (x[j] - x[i])))
    offset = float(np.median(y - slope * x))
    return float(np.minimum(np.abs(y - slope * x - offset), cap).sum())


def _cliffs(ch: np.ndarray, lat: np.ndarray, nz: np.ndarray, k: float, w: int) -> list[tuple[int, int, int]]:
    """Cliffs as (split, lowest tied split, highest tied split), ascending; see :func:`find_cliffs`."""
    n = len(ch)
    if n < 2 * w:
        return []

    def level(lo: int, hi: int) -> tuple[float, float]:  # median latency and noise of points lo..hi-1
        lo, hi = max(lo, 0), min(hi, n)
        return float(np.median(lat[lo:hi])), float(np.median(nz[lo:hi]))

    idx = np.arange(w - 1, n - w)  # boundary between point i and i + 1
    jump = np.empty(len(idx))
    thr = np.empty(len(idx))
    for t, i in enumerate(idx):
        (ml, nl), (mr, nr) = level(i - w + 1, i + 1), level(i + 1, i + 1 + w)
        jump[t], thr[t] = mr - ml, k * math.hypot(nl, nr)
    hit = np.abs(jump) > thr
    found: dict[int, tuple[int, int, int]] = {}
    t = 0
    while t < len(idx):
        if not hit[t]:
            t += 1
            continue
        u = t
        while u + 1 < len(idx) and hit[u + 1]:
            u += 1
        cap = 0.5 * float(np.abs(jump[t : u + 1]).max())
        first, last = int(idx[t]), int(idx[u])
        a, b = max(first - w, 0), min(last + w + 1, n - 1)  # the run and a window beyond each side
        # one boundary beyond the run too: a run cut short by the sweep's edge ends next to its cliff
        cliff = _locate(lat, a, b, max(first - 1, a), min(last + 1, b - 1), cap)
        if cliff is not None:
            found.setdefault(cliff[0], cliff)
        t = u + 1
    cliffs = [found[s] for s in sorted(found)]
    while _prune_once(cliffs, level, k, w):
        pass
    return cliffs


def _prune_once(cliffs: list[tuple[int, int, int]], level, k: float, w: int) -> bool:
    """Drop one false cliff, if any; True when one was dropped.

    Two checks with whole plateaus, which a window's median cannot see: a bump (a jump and its
    opposite, back to the level before, e.g. two outliers side by side) is removed as a pair; then a
    cliff whose plateaus on either side (up to the neighbouring cliffs) do not differ by the
    threshold goes, weakest first.
    """
    splits = [c[0] for c in cliffs]
    for q in range(len(splits) - 1):
        s1, s2 = splits[q], splits[q + 1]
        (before, nb), (inside, _), (after, na) = (
            level(s1 - w + 1, s1 + 1), level(s1 + 1, s2 + 1), level(s2 + 1, s2 + 1 + w)
        )
        if (inside - before) * (after - inside) < 0 and abs(after - before) <= k * math.hypot(nb, na):
            del cliffs[q : q + 2]
            return True
    weakest, margin = -1, 0.0
    bounds = [-1] + splits + [1 << 62]
    for q, s in enumerate(splits):
        (ml, nl), (mr, nr) = level(bounds[q] + 1, s + 1), level(s + 1, bounds[q + 2] + 1)
        excess = abs(mr - ml) - k * math.hypot(nl, nr)
        if excess <= 0 and (weakest < 0 or excess < margin):
            weakest, margin = q, excess
    if weakest >= 0:
        del cliffs[weakest]
        return True
    return False


def find_cliffs(
    channels: np.ndarray,
    latency: np.ndarray,
    noise: np.ndarray | float,
    k: float = 3.0,
    window: int = 3,
    calibrate: bool = True,
) -> np.ndarray:
    """Channel counts where the latency jumps: the first count on the new level, ascending.

    Arguments as in :func:`detect_step`. A jump is the difference between the medians of ``window``
    points on each side, compared with ``k`` times the combined noise of the two sides; medians make
    one outlying point harmless. Neighbouring detections of one cliff are merged and the cliff is
    placed where a two-level fit of the surrounding points is best. Candidates are then checked
    against whole plateaus: a bump that returns to its level, or a cliff whose plateaus do not
    differ, is dropped; so is a jump that a straight line through the surrounding points fits as
    well (a slope). Cliffs closer than ``window + 1`` sweep points can merge, and a cliff within
    ``window`` points of either end of the sweep cannot be told from an outlier.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 points to be robust to outliers, got {window}")
    ch, lat, nz = _as_sweep(channels, latency, noise)
    nz = _noise(ch, lat, nz, k, window, calibrate)
    return np.array([int(round(ch[s + 1])) for s, _, _ in _cliffs(ch, lat, nz, k, window)], dtype=np.int64)


def _twos(n: int) -> int:
    """How many times 2 divides ``n`` (hardware tiles are powers of two)."""
    return (n & -n).bit_length() - 1 if n > 0 else 0


def detect_step(
    channels: np.ndarray,
    latency: np.ndarray,
    noise: np.ndarray | float,
    k: float = 3.0,
    window: int = 3,
    calibrate: bool = True,
) -> int:
    """The typical distance, in channels, between consecutive cliffs of a latency sweep.

    Args:
        channels: output-channel counts of the sweep (any order, e.g. every count from N-64 to N).
        latency: median latency at each count.
        noise: the noise of each point (same units; e.g. the IQR of its repeats), or one number.
        k: how many combined noise units a jump must exceed to count as a cliff.
        window: points per side whose median is compared (>= 2).
        calibrate: judge jumps against one noise level, the sweep's own point-to-point scatter
            where it is below the typical ``noise`` (an IQR of repeats overstates how much a median
            moves, and on a busy machine mostly counts interruptions); off, ``noise`` is taken as
            the uncertainty of each median.

    Returns:
        The spacing most consecutive cliffs agree on (each spacing counted as a range when an outlier
        right at a cliff leaves its exact place open, and at half weight one channel off, for cliffs
        misplaced by one). Ties go to the smallest spacing, since a missed cliff doubles a spacing
        far more often than a false one halves it; among tied spacings within two channels of each
        other, the one with the most factors of two wins (hardware tiles are powers of two or small
        multiples of them). Reliable when jumps exceed about six times the noise of a median and
        each stair spans at least four sweep points.

        Fallbacks, for sweeps too short to hold two measurable cliffs (a sweep should span three
        steps or more): with one cliff, the largest power of two dividing its fast edge (the width
        just below it), capped at the sweep's span, as tiles are aligned that way; with none (a flat
        or linear sweep), :data:`NO_STAIRCASE`.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 points to be robust to outliers, got {window}")
    ch, lat, nz = _as_sweep(channels, latency, noise)
    nz = _noise(ch, lat, nz, k, window, calibrate)
    cliffs = _cliffs(ch, lat, nz, k, window)
    pos = lambda s: int(round(ch[s + 1]))  # noqa: E731 - first channel count on the new level
    if not cliffs:
        log.debug("detect_step: no cliffs; no staircase, step %d", NO_STAIRCASE)
        return NO_STAIRCASE
    if len(cliffs) == 1:
        span = max(int(ch[-1] - ch[0]), 1)
        step = min(1 << _twos(pos(cliffs[0][0]) - 1), 1 << (span.bit_length() - 1))
        log.info("detect_step: one cliff (at %d); step %d from its alignment", pos(cliffs[0][0]), step)
        return max(step, 1)
    ranges = [(pos(c2[1]) - pos(c1[2]), pos(c2[2]) - pos(c1[1])) for c1, c2 in zip(cliffs, cliffs[1:])]

    def support(p: int) -> float:  # full for a spacing in range, half for one channel off
        return sum(1.0 if lo <= p <= hi else 0.5 if lo - 1 <= p <= hi + 1 else 0.0 for lo, hi in ranges)

    scores = {p: support(p) for p in range(1, max(hi for _, hi in ranges) + 2)}
    best = max(scores.values())
    tied = [p for p, c in scores.items() if c == best]
    near = [p for p in tied if p <= tied[0] + 2]
    return max(near, key=lambda p: (_twos(p), -p))
