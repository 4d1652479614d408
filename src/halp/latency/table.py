"""The latency table: what was measured, how, and how to read it.

A table holds, per distinct layer shape of the profiled model, latency over a coarse (cin × cout)
grid plus a fine sweep of cout near full width; a per-kind model of the non-conv ops; and the
calibration that maps table sums to the measured end-to-end latency. It is one self-describing JSON
file (no pickle): ``format_version`` plus the metadata that makes the measurement reproducible.

Entries are identified by ``(shape key, in_repeat, full cin, full cout)`` of the profiled dense layer.
Lookups by a layer at given widths use the shape key (with the table's dtype) and choose the
*smallest entry whose grid covers the widths*, so a slim model's layers (same shape keys, fewer
channels) resolve to the dense entries that were measured for them, and the dense graph with group
widths (:func:`halp.latency.predict.predict_from_widths`) resolves to exactly the same entries.
Width 0 (a removed layer) costs 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from halp.graph.types import ChannelGraph, Layer, LayerShape
from halp.latency import serial
from halp.latency.fit import calibrated, staircase_period
from halp.latency.interp import interp1, interp1_scalar, interp2, interp2_scalar, outside
from halp.latency.ops import canonical_kind

logger = logging.getLogger(__name__)

FORMAT = "halp-latency-table"
FORMAT_VERSION = 1
EXTRAPOLATE = ("warn", "raise")


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


class LatencyTable:
    """Latency of a model's layers and ops on one device, backend, dtype, batch and thread count.

    Build one with :func:`halp.profile`; persist with :meth:`save` / :meth:`load`.
    """

    def __init__(
        self,
        meta: Mapping[str, Any],
        entries: Iterable[LayerEntry],
        ops: Mapping[str, OpModel] | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.meta: dict[str, Any] = dict(meta)
        self.entries: list[LayerEntry] = list(entries)
        self.ops: dict[str, OpModel] = dict(ops or {})
        self.calibration: Calibration = calibration or Calibration()
        self._warned: set[str] = set()
        self._cand_cache: dict[tuple[LayerShape, int], list[LayerEntry]] = {}
        self._by_key: dict[tuple[str, int], list[LayerEntry]] = {}
        for e in self.entries:
            self._by_key.setdefault((e.key, e.in_repeat), []).append(e)
        for lst in self._by_key.values():
            lst.sort(key=lambda e: (e.cin_full * e.cout_full, e.cin_full, e.cout_full))

    # -- metadata --------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return str(self.meta["backend"])

    @property
    def batch(self) -> int:
        return int(self.meta["batch"])

    @property
    def dtype(self) -> str:
        return str(self.meta["dtype"])

    @property
    def threads(self) -> int:
        return int(self.meta["threads"])

    def check_compatible(
        self, *, backend: str | None = None, batch: int | None = None, dtype: str | None = None,
        threads: int | None = None,
    ) -> None:
        """Raise ``ValueError`` if the table was measured under other conditions than those asked."""
        asked = {"backend": backend, "batch": batch, "dtype": dtype, "threads": threads}
        have = {"backend": self.backend, "batch": self.batch, "dtype": self.dtype, "threads": self.threads}
        bad = [f"{k} {asked[k]!r} (table: {have[k]!r})" for k in asked if asked[k] is not None and asked[k] != have[k]]
        if bad:
            raise ValueError(
                "latency table does not match: " + ", ".join(bad)
                + f"; profile a table for these settings (halp profile --backend ... --input BxCxHxW), "
                f"or use inputs/settings matching the table (measured on {self.meta.get('device')})"
            )

    # -- lookups ---------------------------------------------------------------------------------
    def _candidates(self, layer: Layer) -> list[LayerEntry]:
        """Entries measured for this layer's shape (the table's dtype stands in for the layer's)."""
        ck = (layer.shape, int(layer.in_repeat))
        found = self._cand_cache.get(ck)
        if found is None:
            key = dataclasses.replace(layer.shape, dtype=self.dtype).key()
            found = self._cand_cache[ck] = self._by_key.get((key, int(layer.in_repeat)), [])
        return found

    def entry_for(self, layer: Layer) -> LayerEntry:
        """The entry that serves ``layer`` at its own widths (``KeyError`` if its shape was not profiled)."""
        cands = self._candidates(layer)
        if not cands:
            raise KeyError(
                f"layer {layer.name!r} (shape {layer.shape.key()}, in_repeat {layer.in_repeat}) is not in the "
                f"latency table; re-profile the table on this model"
            )
        cin, cout = np.array(layer.in_channels), np.array(layer.out_channels)
        for e in cands:
            if e.covers(cin, cout):
                return e
        return cands[-1]

    def layer_latency(
        self, layer: Layer, cin: int | np.ndarray, cout: int | np.ndarray, *, extrapolate: str = "warn"
    ) -> float | np.ndarray:
        """Latency (ms) of ``layer`` with ``cin`` inputs and ``cout`` outputs (broadcast arrays allowed).

        Exact at grid points, bilinear between them, with the fine cout sweep's staircase near full
        width. Outside every covering entry's grid: ``extrapolate="warn"`` continues linearly (one
        warning per entry and side) and ``"raise"`` raises ``ValueError``. Width 0 costs 0.
        """
        if extrapolate not in EXTRAPOLATE:
            raise ValueError(f"extrapolate must be one of {EXTRAPOLATE}, got {extrapolate!r}")
        cands = self._candidates(layer)
        if not cands:
            self.entry_for(layer)  # raises the KeyError with its message
        if np.ndim(cin) == 0 and np.ndim(cout) == 0:
            return self._layer_latency_one(layer, cands, int(cin), int(cout), extrapolate)
        ci, co = np.broadcast_arrays(np.asarray(cin, dtype=np.int64), np.asarray(cout, dtype=np.int64))
        if np.any(ci < 0) or np.any(co < 0):
            raise ValueError(f"channel counts must be >= 0 (layer {layer.name!r}): cin={cin}, cout={cout}")
        out = np.zeros(ci.shape, dtype=np.float64)
        todo = (ci > 0) & (co > 0)
        for e in cands:
            m = todo & e.covers(ci, co)
            if np.any(m):
                out[m] = e.lookup(ci[m], co[m])
                todo &= ~m
        if np.any(todo):
            e = cands[-1]
            self._outside(layer, e, ci[todo], co[todo], extrapolate)
            out[todo] = np.maximum(e.lookup(ci[todo], co[todo]), 0.0)
        return out

    def layer_interpolated(self, layer: Layer, cin: int | np.ndarray, cout: int | np.ndarray) -> bool | np.ndarray:
        """Whether :meth:`layer_latency` reads ``layer`` at these widths between measured points (from the
        entry it would use); a removed layer (width 0) is not."""
        cands = self._candidates(layer)
        if not cands:
            self.entry_for(layer)
        if np.ndim(cin) == 0 and np.ndim(cout) == 0:
            cin, cout = int(cin), int(cout)
            if cin <= 0 or cout <= 0:
                return False
            e = next((e for e in cands if e.covers_one(cin, cout)), None)
            return True if e is None else not e.measured_one(cin, cout)  # None: extrapolated
        ci, co = np.broadcast_arrays(np.asarray(cin, dtype=np.int64), np.asarray(cout, dtype=np.int64))
        out = np.zeros(ci.shape, dtype=bool)
        todo = (ci > 0) & (co > 0)
        for e in cands:
            m = todo & e.covers(ci, co)
            if np.any(m):
                out[m] = ~e.measured(ci[m], co[m])
                todo &= ~m
        out[todo] = True  # extrapolated
        return out

    def _layer_latency_one(self, layer: Layer, cands: list[LayerEntry], cin: int, cout: int, policy: str) -> float:
        if cin < 0 or cout < 0:
            raise ValueError(f"channel counts must be >= 0 (layer {layer.name!r}): cin={cin}, cout={cout}")
        if cin == 0 or cout == 0:
            return 0.0
        for e in cands:
            if e.covers_one(cin, cout):
                return e.lookup_one(cin, cout)
        e = cands[-1]
        self._outside(layer, e, np.array([cin]), np.array([cout]), policy)
        return max(e.lookup_one(cin, cout), 0.0)

    def _outside(self, layer: Layer, e: LayerEntry, ci: np.ndarray, co: np.ndarray, policy: str) -> None:
        axes = [("cout", co, e.cout)] + ([] if e.depthwise else [("cin", ci, e.cin)])
        parts = [
            f"{name} {int(v[outside(g, v)][0])} outside the profiled range [{int(g[0])}, {int(g[-1])}]"
            for name, v, g in axes if np.any(outside(g, v))
        ]
        msg = f"layer {layer.name!r}: " + "; ".join(parts) + f" of table entry {e.id}"
        if policy == "raise":
            raise ValueError(msg + "; profile this model (or a wider one) or pass extrapolate='warn'")
        if e.id not in self._warned:
            self._warned.add(e.id)
            logger.warning("%s; extrapolating linearly", msg)

    def cout_sweep(self, layer: Layer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(channels, median_ms, noise_ms)`` of the fine cout sweep at full cin for ``layer``'s entry.

        This is what latency-aware grouping reads to find the staircase step. Where cout was not
        prunable (no sweep) it is the coarse full-cin row. ``KeyError`` if the layer was not profiled.
        """
        e = self.entry_for(layer)
        if e.fine_cout.size:
            return e.fine_cout.copy(), e.fine_median_ms.copy(), e.fine_noise_ms.copy()
        if e.depthwise:
            return e.cout.copy(), np.asarray(e.median_ms).copy(), np.asarray(e.noise_ms).copy()
        row = int(np.searchsorted(e.cin, e.cin_full))
        return e.cout.copy(), e.median_ms[row].copy(), e.noise_ms[row].copy()

    def op_latency(self, kind: str, volume: float | np.ndarray) -> float | np.ndarray:
        """Latency (ms) of a non-conv op of ``kind`` touching ``volume`` elements."""
        model = self.ops.get(kind.lower()) or self.ops.get(canonical_kind(kind))
        if model is None:
            raise KeyError(f"op kind {kind!r} is not in the latency table; re-profile the table on this model")
        return model(volume)

    def covers(self, graph: ChannelGraph) -> list[str]:
        """Names of the graph's layers (and non-conv ops) that this table cannot predict."""
        missing = [layer.name for layer in graph.layers if not self._candidates(layer)]
        for op in graph.others:
            if op.kind.lower() not in self.ops and canonical_kind(op.kind) not in self.ops:
                missing.append(op.name)
        return missing

    def layer_names(self) -> list[str]:
        return [name for e in self.entries for name in e.layers]

    def entry_by_layer_name(self, name: str) -> LayerEntry:
        for e in self.entries:
            if name in e.layers:
                return e
        raise KeyError(f"no layer named {name!r} in the table; profiled layers: {self.layer_names()[:30]}")

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return serial.table_to_dict(self, FORMAT, FORMAT_VERSION)

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically: a reader never sees a half-written file)."""
        path = Path(path)
        serial.atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "LatencyTable":
        meta, entries, ops, calib = serial.table_from_dict(data, source, FORMAT, FORMAT_VERSION)
        return cls(meta, entries, ops, calib)

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        """Read a table written by :meth:`save`; a bad file raises ``ValueError`` saying what to do."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"latency table {path} does not exist; build one with `halp profile`") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"latency table {path} is not valid JSON ({exc.msg} at line {exc.lineno}); the file is corrupt "
                "or truncated: delete it and re-profile (`halp profile ... -o " f"{path}`)"
            ) from None
        return cls.from_dict(data, str(path))

    def __repr__(self) -> str:
        return (
            f"LatencyTable(backend={self.backend!r}, device={self.meta.get('device')!r}, batch={self.batch}, "
            f"dtype={self.dtype!r}, threads={self.threads}, entries={len(self.entries)}, ops={sorted(self.ops)})"
        )
