"""Small non-negative least-squares fits: the op models and the end-to-end calibration.

Both fits have two or three unknowns, so the exact solution is found by trying every active set
(2^k small least-squares problems) instead of pulling in scipy. Non-negativity matters: a negative
per-op overhead or a negative weight on the layer sum would make predictions fall as widths grow.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)


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


#: smallest weight a calibration form may give the table's layer time (see :func:`fit_calibration`)
MIN_LAYER_WEIGHT = 0.25
#: largest jackknife relative standard error a weight of a form beyond ``affine`` may have (see
#: :func:`fit_calibration`): above it the samples do not pin that weight down
MAX_WEIGHT_SPREAD = 0.25
#: the weights each form adds to ``affine``'s one factor, as indices into ``(a, b, c, d, e)``
_EXTRA_WEIGHTS = {"interp": (0, 3), "split": (0, 1), "kind": (0, 4, 1)}
#: calibration forms, simplest first (see :func:`fit_calibration`)
CALIBRATION_FORMS = ("scale", "affine", "interp", "split", "kind")
_UNKNOWNS = {"scale": 1, "affine": 2, "interp": 3, "split": 3, "kind": 4}


def _design(form: str, lay: np.ndarray, ops: np.ndarray, interp: np.ndarray, dw: np.ndarray) -> np.ndarray:
    """Design matrix; ``lay`` is the whole layer sum, ``interp`` the part of it read between measured points,
    ``dw`` the part from depthwise convolutions."""
    one = np.ones_like(lay)
    if form == "scale":
        return (lay + ops)[:, None]
    if form == "affine":
        return np.stack([lay + ops, one], axis=1)
    if form == "interp":
        return np.stack([lay - interp + ops, interp, one], axis=1)
    if form == "kind":
        return np.stack([lay - dw, dw, ops, one], axis=1)
    return np.stack([lay, ops, one], axis=1)


Coefficients = tuple[float, float, float, float, float]  # (a, b, c, d, e)


def _solve(form: str, lay: np.ndarray, ops: np.ndarray, interp: np.ndarray, dw: np.ndarray,
           y: np.ndarray) -> Coefficients:
    """``(a, b, c, d, e)`` by Huber-weighted NNLS on relative residuals: one end-to-end run disturbed by
    another process on a shared machine must not tilt the whole calibration."""
    a = _design(form, lay, ops, interp, dw)
    w = 1.0 / np.maximum(y, 1e-12)  # relative errors: small and large models count alike
    robust = np.ones_like(y)
    for _ in range(6 if y.size > a.shape[1] + 2 else 1):
        x = nnls(a * (w * robust)[:, None], y * w * robust)
        rel = (a @ x - y) * w
        scale = 1.4826 * float(np.median(np.abs(rel - np.median(rel))))
        delta = max(1.5 * scale, 0.005)  # residuals under 0.5% are never down-weighted
        robust = np.sqrt(np.minimum(1.0, delta / np.maximum(np.abs(rel), 1e-12)))
    x = [float(v) for v in x]
    if form == "scale":
        return x[0], x[0], 0.0, x[0], x[0]
    if form == "affine":
        return x[0], x[0], x[1], x[0], x[0]
    if form == "interp":
        return x[0], x[0], x[2], x[1], x[0]
    if form == "kind":
        return x[0], x[2], x[3], x[0], x[1]
    return x[0], x[1], x[2], x[0], x[0]


def calibrated(coef: Coefficients, layers_ms: Any, ops_ms: Any, interp_ms: Any = 0.0, depthwise_ms: Any = 0.0) -> Any:
    """The calibration's formula, the one place it is written: ``a·(layers − interp) + d·interp
    + (e − a)·depthwise + b·ops + c`` (scalars or arrays)."""
    a, b, c, d, e = coef
    return a * (layers_ms - interp_ms) + d * interp_ms + (e - a) * depthwise_ms + b * ops_ms + c


def _loo(form: str, lay: np.ndarray, ops: np.ndarray, interp: np.ndarray, dw: np.ndarray,
         y: np.ndarray) -> tuple[float, float]:
    """Leave-one-out RMS relative error of a calibration form, and the largest jackknife relative standard
    error of the weights it adds to ``affine`` (0 for ``scale`` and ``affine``), from the same fits."""
    errs, coefs = [], []
    for i in range(y.size):
        m = np.arange(y.size) != i
        coef = _solve(form, lay[m], ops[m], interp[m], dw[m], y[m])
        coefs.append(coef)
        errs.append(calibrated(coef, lay[i], ops[i], interp[i], dw[i]) / y[i] - 1.0)
    spread = 0.0
    if form in _EXTRA_WEIGHTS:
        c = np.asarray(coefs)
        full = _solve(form, lay, ops, interp, dw, y)
        se = np.sqrt((y.size - 1) / y.size * np.sum((c - c.mean(axis=0)) ** 2, axis=0))
        spread = max(float(se[i]) / max(abs(full[i]), 1e-12) for i in _EXTRA_WEIGHTS[form])
    return float(np.sqrt(np.mean(np.square(errs)))), spread


def fit_calibration(
    layers_ms: Sequence[float], ops_ms: Sequence[float], measured_ms: Sequence[float],
    interp_ms: Sequence[float] | None = None, depthwise_ms: Sequence[float] | None = None,
) -> tuple[float, float, float, float, float, str, dict[str, float]]:
    """Fit ``measured ≈ a·(layers − interp) + d·interp + (e − a)·depthwise + b·ops + c`` with all weights
    ``>= 0``.

    ``interp_ms`` is the part of each layer sum read *between* measured grid points. It gets its own
    weight because on a CPU a width off the measured points can run markedly slower than interpolation
    says (SIMD/tile remainders, other kernels): calibrating with one weight for all layer time fitted
    ResNet-50's slim networks only by over-predicting its dense model (whose layers all sit on measured
    points) by 8–10%.

    The layer and op sums grow together as widths change, so a free fit on a dozen noisy measurements
    can trade one term for another and extrapolate badly. The forms are therefore compared by
    leave-one-out error and the simplest one within 5% of the best is kept: ``scale`` (one factor),
    ``affine`` (a factor and a constant), ``interp`` (measured and interpolated layer time weighted
    apart, ops with the measured layers), ``split`` (layers and ops apart, ``d = a``) and ``kind``
    (depthwise convolutions, other layers and ops apart: memory-bound depthwise convolutions slow down
    in a network more than compute-bound ones; MobileNet-V2 at 2 threads on our VM fitted 2.4x against
    0.5x, and only this form brought its held-out r of reductions to 0.98).

    A form whose fit weights any part of the layer time below :data:`MIN_LAYER_WEIGHT` is not offered:
    the layer and op sums move together, and such a fit (``0.000·layers + 7.77·ops`` on SSDlite320,
    ``0.19·layers + 7.15·ops`` on MobileNet-V3-Large) has traded one for the other. Nor is a form whose
    added weights the samples do not pin down: a jackknife relative standard error above
    :data:`MAX_WEIGHT_SPREAD` over the leave-one-out fits. The knapsack spends the budget by each group's
    *marginal* cost, which such a weight sets: four profiles of one SSDlite320, whose totals every form
    predicted within 2–3%, fitted ``split`` weights of 0.31–0.91·layers and 2.5–4.9·ops (jackknife error
    120–160%), chose it or not by a few tenths of a percent of leave-one-out error, and HALP's widths at
    0.6 then differed by 19–21% of each group's width between profiles; with one form, by 4%.

    Returns:
        ``(a, b, c, d, e, form, loo)``: the coefficients, the chosen form (``"identity"`` without samples)
        and the leave-one-out RMS relative error of every form that could be assessed.
    """
    lay = np.asarray(layers_ms, dtype=np.float64)
    ops = np.asarray(ops_ms, dtype=np.float64)
    y = np.asarray(measured_ms, dtype=np.float64)
    interp = np.zeros_like(lay) if interp_ms is None else np.asarray(interp_ms, dtype=np.float64)
    dw = np.zeros_like(lay) if depthwise_ms is None else np.asarray(depthwise_ms, dtype=np.float64)
    if y.size == 0:
        return 1.0, 1.0, 0.0, 1.0, 1.0, "identity", {}
    distinct = np.unique(np.round(lay + ops, 9)).size
    # each form needs two more distinct samples than unknowns for its leave-one-out error to mean anything;
    # the interp and kind forms also need their part of the layer time to vary, or its weight is arbitrary
    def varies(part: np.ndarray) -> bool:
        return np.unique(np.round(part, 9)).size >= 4 and bool(np.any(part > 0))

    needs = {"interp": varies(interp), "kind": varies(dw) and varies(lay - dw)}
    usable = [f for f in CALIBRATION_FORMS if distinct >= _UNKNOWNS[f] + 2 and needs.get(f, True)]
    usable = usable or ["scale"]
    # a form that weights the table's layer time below MIN_LAYER_WEIGHT has traded it for another term
    # (the op sum grows with the same widths): it fits its samples and extrapolates wrongly, so it is
    # not offered (seen: 0.000·layers + 7.77·ops on SSDlite, 0.19·layers + 7.15·ops on MobileNet-V3)
    fits = {f: _solve(f, lay, ops, interp, dw, y) for f in usable}
    usable = [f for f in usable if f in ("scale", "affine") or min(fits[f][i] for i in (0, 3, 4)) >= MIN_LAYER_WEIGHT]
    assessed = {f: _loo(f, lay, ops, interp, dw, y) for f in usable} if y.size >= 3 else {}
    loo = {f: err for f, (err, _) in assessed.items()}
    # a weight the samples do not pin down is set by their noise, and the knapsack follows it
    loose = {f: spread for f, (_, spread) in assessed.items() if spread > MAX_WEIGHT_SPREAD}
    if loose:
        logger.info("calibration forms not used, their weights not pinned down by the %d samples (jackknife error "
                    "above %.0f%%): %s", y.size, 100 * MAX_WEIGHT_SPREAD,
                    ", ".join(f"{f} {100 * v:.0f}%" for f, v in loose.items()))
    usable = [f for f in usable if f not in loose]
    form = usable[0]
    for f in usable[1:]:
        if loo[f] < 0.95 * loo[form] and loo[form] - loo[f] > 1e-6:  # a material gain, not rounding
            form = f
    a, b, c, d, e = fits[form]
    return a, b, c, d, e, form, loo


STAIRCASE_PERIODS = (2, 4, 8, 16, 32)


def staircase_period(
    channels: Sequence[int], ms: Sequence[float], candidates: Sequence[int] = STAIRCASE_PERIODS, min_gain: float = 0.5
) -> int:
    """The block size ``P`` of a latency staircase in a contiguous channel sweep, or 1 if there is none.

    Hardware pads channels to a block (a SIMD width, a tile): latency is then ``f(ceil(c / P) · P)``,
    flat inside a block and jumping just after each multiple of ``P``. Each candidate ``P`` is fitted
    jointly over the whole sweep (``ms ≈ α + β · ceil(c/P)·P``) and compared with a straight line; a
    period is kept only if it removes at least ``1 - min_gain`` of the line's squared error. Fitting all
    points at once tolerates noise that makes individual cliffs hard to see, and an unclear sweep yields
    1 (no rounding), the conservative answer.
    """
    c = np.asarray(channels, dtype=np.float64)
    y = np.asarray(ms, dtype=np.float64)
    if c.size < 16 or np.any(np.diff(c) != 1):
        return 1

    def sse(x: np.ndarray) -> float:
        a = np.stack([np.ones_like(x), x], axis=1)
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        return float(np.sum((a @ coef - y) ** 2))

    line = sse(c)
    best, best_err = 1, line
    for p in candidates:
        if c.size < 2 * p:
            continue
        err = sse(np.ceil(c / p) * p)
        if err < best_err:
            best, best_err = int(p), err
    return best if best_err < min_gain * line else 1
