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
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from halp.graph.types import ChannelGraph, Layer, LayerShape
from halp.latency import serial
from halp.latency.entries import Calibration, LayerEntry, OpModel  # re-exported: the table's records
from halp.latency.interp import outside
from halp.latency.ops import canonical_kind

logger = logging.getLogger(__name__)

__all__ = ["Calibration", "LatencyTable", "LayerEntry", "OpModel"]

FORMAT = "halp-latency-table"
FORMAT_VERSION = 1
EXTRAPOLATE = ("warn", "raise")


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
