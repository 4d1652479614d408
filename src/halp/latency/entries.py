"""The records a latency table is made of: one measured layer shape, one non-conv op model, the
end-to-end calibration.

Kept apart from :mod:`halp.latency.table` (which reads them) and :mod:`halp.latency.serial` (which
writes and parses them) so that neither of those two imports the other.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from halp.graph.types import LayerShape
from halp.latency.fit import calibrated, staircase_period
from halp.latency.interp import interp1, interp1_scalar, interp2, interp2_scalar

@dataclass
class LayerEntry:
    """Measured latency of one layer shape over its channel grid (all times in ms).

    ``median_ms``/``noise_ms`` are ``(len(cin), len(cout))``; for a depthwise conv (one width) they are
    1-D over ``cout`` and ``cin`` equals ``cout``. ``fine_*`` is a contiguous sweep of cout at full cin
    (empty when cout cannot be pruned). "Median" is the profile's statistic of the repeats (the median
    unless ``meta.settings.statistic`` says e.g. ``"p10"``); noise is their interquartile range.

    ``cout_step`` is the staircase block found in the fine sweep (:func:`~halp.latency.fit.staircase_period`):
    between grid points a cout is rounded up to the next block edge before interpolating, since a
    width inside a block costs what the full block costs (225..240 channels cost like 240 on a
    16-wide CPU). Grid points and the fine sweep are used as measured.
    """

    shape: LayerShape
    in_repeat: int
    cin_full: int
    cout_full: int
    cin: np.ndarray
    cout: np.ndarray
    median_ms: np.ndarray
    noise_ms: np.ndarray
    fine_cout: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fine_median_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fine_noise_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    layers: list[str] = field(default_factory=list)
    cout_step: int = 0  # staircase block of cout (1: none); 0 = derive it from the fine sweep
    _lists: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cout_step <= 0:
            self.cout_step = staircase_period(self.fine_cout, self.fine_median_ms) if self.fine_cout.size else 1

    @property
    def key(self) -> str:
        return self.shape.key()

    @property
    def id(self) -> str:
        return entry_id(self.shape, self.in_repeat, self.cin_full, self.cout_full)

    @property
    def depthwise(self) -> bool:
        return self.shape.depthwise

    def covers(self, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        ok = (cout >= self.cout[0]) & (cout <= self.cout[-1])
        if not self.depthwise:
            ok &= (cin >= self.cin[0]) & (cin <= self.cin[-1])
        return ok

    def _as_lists(self) -> tuple[list[float], list[float], Any, int, int, list[float]]:
        if self._lists is None:
            fine = self.fine_cout
            self._lists = (
                [float(v) for v in self.cin], [float(v) for v in self.cout], np.asarray(self.median_ms).tolist(),
                int(fine[0]) if fine.size else 1, int(fine[-1]) if fine.size else 0,
                [float(v) for v in self.fine_median_ms],
            )
        return self._lists

    def measured(self, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        """Where :meth:`lookup` returns a measurement rather than an interpolation: a grid point, or the
        fine sweep (at full cin)."""
        fine = self.fine_cout
        on_fine = (cout >= fine[0]) & (cout <= fine[-1]) if fine.size else np.zeros(np.shape(cout), dtype=bool)
        on_grid = np.isin(cout, self.cout)
        if not self.depthwise:
            on_fine = on_fine & (cin == self.cin_full)
            on_grid = on_grid & np.isin(cin, self.cin)
        return on_fine | on_grid

    def measured_one(self, cin: int, cout: int) -> bool:
        """Scalar :meth:`measured` (the pruner's inner loop asks this once per layer and prediction)."""
        gin, gout, _, f0, f1, _ = self._as_lists()
        if f0 <= cout <= f1 and (self.depthwise or cin == self.cin_full):
            return True
        return cout in gout and (self.depthwise or cin in gin)

    def covers_one(self, cin: int, cout: int) -> bool:
        gin, gout, *_ = self._as_lists()
        return gout[0] <= cout <= gout[-1] and (self.depthwise or gin[0] <= cin <= gin[-1])

    def lookup_one(self, cin: int, cout: int) -> float:
        """Scalar :meth:`lookup` (same arithmetic, same result, ~20x faster for one point)."""
        gin, gout, med, f0, f1, fine = self._as_lists()
        in_fine = f0 <= cout <= f1
        if self.depthwise:
            return fine[cout - f0] if in_fine else interp1_scalar(gout, med, float(self._block_edge_one(cout)))
        out = interp2_scalar(gin, gout, med, float(cin), float(cout if in_fine else self._block_edge_one(cout)))
        if in_fine:
            if cin == self.cin_full:
                return fine[cout - f0]
            row = interp2_scalar(gin, gout, med, float(self.cin_full), float(cout))
            if row > 0:
                out = out * (fine[cout - f0] / row)
        return out

    def _block_edge(self, cout: np.ndarray) -> np.ndarray:
        """``cout`` rounded up to its staircase block edge, never past the next grid point (so grid points
        stay exact); unchanged outside the grid."""
        p = self.cout_step
        if p <= 1:
            return cout
        g = self.cout
        nxt = g[np.clip(np.searchsorted(g, cout, side="left"), 0, g.size - 1)]
        return np.where((cout >= g[0]) & (cout <= g[-1]), np.minimum(-(-cout // p) * p, nxt), cout)

    def _block_edge_one(self, cout: int) -> int:
        p = self.cout_step
        gout = self._as_lists()[1]
        if p <= 1 or not gout[0] <= cout <= gout[-1]:
            return cout
        return int(min(-(-cout // p) * p, gout[bisect_left(gout, cout)]))

    def lookup(self, cin: np.ndarray, cout: np.ndarray) -> np.ndarray:
        """Interpolated latency; inside the fine sweep's range the staircase is restored."""
        fine = self.fine_cout
        in_fine = (cout >= fine[0]) & (cout <= fine[-1]) if fine.size else np.zeros(cout.shape, dtype=bool)
        edge = np.where(in_fine, cout, self._block_edge(cout))
        if self.depthwise:
            out = interp1(self.cout, self.median_ms, edge)
            if fine.size:
                out = np.where(in_fine, self.fine_median_ms[np.clip(cout - fine[0], 0, fine.size - 1).astype(int)], out)
            return out
        out = interp2(self.cin, self.cout, self.median_ms, cin, edge)
        if fine.size:
            # A multiplicative ripple taken from the full-cin row: exact on that row, 1 at coarse points.
            m = (cout >= fine[0]) & (cout <= fine[-1])
            if np.any(m):
                idx = np.clip(cout - fine[0], 0, fine.size - 1).astype(int)
                row = interp2(self.cin, self.cout, self.median_ms, np.full(cout.shape, self.cin_full), cout)
                ratio = np.where(m & (row > 0), self.fine_median_ms[idx] / np.where(row > 0, row, 1.0), 1.0)
                out = np.where(m & (cin == self.cin_full), self.fine_median_ms[idx], out * ratio)
        return out


def entry_id(shape: LayerShape, in_repeat: int, cin_full: int, cout_full: int) -> str:
    """The identity of a table entry (also used in partial files)."""
    return f"{shape.key()}|r{int(in_repeat)}|{int(cin_full)}x{int(cout_full)}"


@dataclass
class OpModel:
    """Latency of one non-conv op kind: ``overhead_ms + ms_per_melem · volume / 1e6``.

    ``volume`` is batch × channels × height × width of the op's output. ``samples`` are the
    measurements the line was fitted to: ``[batch, channels, h, w, median_ms, noise_ms]``.
    """

    overhead_ms: float
    ms_per_melem: float
    samples: list[list[float]] = field(default_factory=list)

    def __call__(self, volume: float | np.ndarray) -> float | np.ndarray:
        if isinstance(volume, (int, float)):
            return self.overhead_ms + self.ms_per_melem * float(volume) / 1e6
        return self.overhead_ms + self.ms_per_melem * np.asarray(volume, dtype=np.float64) / 1e6


@dataclass
class Calibration:
    """End-to-end ≈ ``a · Σ layer table + b · Σ op model + c`` (ms), fitted by non-negative least squares
    on the dense model and random slim variants measured during profiling.

    ``method`` is the form chosen by leave-one-out error (``scale``: a = b, c = 0; ``affine``: a = b;
    ``split``: free), ``loo_rel_rmse`` the leave-one-out RMS relative error of each form tried.

    ``samples`` holds ``{"label", "layers_ms", "ops_ms", "measured_ms", "noise_ms", "widths"}`` per model
    measured, so the fit can be checked or redone.

    ``d`` weighs the layer time read *between* measured grid points (``interp`` form; ``None``: as
    ``a``), which on a CPU can run slower than interpolation says. ``e`` weighs depthwise convolutions
    (``kind`` form; ``None``: as ``a``): memory-bound, they fare differently in a network than alone
    from compute-bound convolutions (2.4x against 0.5x for MobileNet-V2 at 2 threads on our VM).
    Each special weight replaces ``a`` on its part of the layer sum (the parts may overlap).
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0
    method: str = "identity"
    samples: list[dict[str, Any]] = field(default_factory=list)
    loo_rel_rmse: dict[str, float] = field(default_factory=dict)
    d: float | None = None
    e: float | None = None

    def apply(self, layers_ms: Any, ops_ms: Any, interp_ms: Any = 0.0, depthwise_ms: Any = 0.0) -> Any:
        """Calibrated latency; ``layers_ms`` is the whole layer sum, ``interp_ms`` its interpolated part and
        ``depthwise_ms`` its depthwise convolutions."""
        d = self.a if self.d is None else self.d
        e = self.a if self.e is None else self.e
        return calibrated((self.a, self.b, self.c, d, e), layers_ms, ops_ms, interp_ms, depthwise_ms)
