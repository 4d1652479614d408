"""JSON (de)serialisation of latency tables, with validation that explains what is wrong.

Kept apart from :mod:`halp.latency.table` so the lookup logic reads on its own. Every problem in a file
becomes a ``ValueError`` naming the file, the field and the remedy (re-profile), never a ``KeyError``
from deep inside a lookup later.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from halp.graph.types import LayerShape

from halp.latency.entries import Calibration, LayerEntry, OpModel

logger = logging.getLogger(__name__)

META_FIELDS = {"backend": str, "device": str, "batch": int, "dtype": str, "threads": int, "date": str, "settings": dict}
#: profile settings of earlier halp versions that no longer exist (the speed guard: median latency over
#: interleaved rounds does not chase a shared host's slow spells, so probe-driven retakes were dropped)
RETIRED_SETTINGS = ("guard", "guard_wait_s")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON next to ``path`` and rename it into place (readers see old or new, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def shape_to_dict(shape: LayerShape) -> dict[str, Any]:
    return {
        "kind": shape.kind, "kernel": list(shape.kernel), "stride": list(shape.stride),
        "padding": list(shape.padding), "dilation": list(shape.dilation), "groups": shape.groups,
        "in_hw": list(shape.in_hw), "batch": shape.batch, "dtype": shape.dtype, "bias": shape.bias,
    }


def shape_from_dict(d: dict[str, Any]) -> LayerShape:
    return LayerShape(
        kind=str(d["kind"]), kernel=_pair(d["kernel"]), stride=_pair(d["stride"]), padding=_pair(d["padding"]),
        dilation=_pair(d["dilation"]), groups=int(d["groups"]), in_hw=_pair(d["in_hw"]), batch=int(d["batch"]),
        dtype=str(d["dtype"]), bias=bool(d["bias"]),
    )


def _pair(v: Any) -> tuple[int, int]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise TypeError(f"expected a pair of integers, got {v!r}")
    return int(v[0]), int(v[1])


def _floats(a: np.ndarray) -> Any:
    return np.asarray(a, dtype=np.float64).tolist()


def _ints(a: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(a).ravel()]


def table_to_dict(table: Any, fmt: str, version: int) -> dict[str, Any]:
    entries = []
    for e in table.entries:
        entries.append({
            "id": e.id, "key": e.key, "shape": shape_to_dict(e.shape), "in_repeat": e.in_repeat,
            "cin_full": e.cin_full, "cout_full": e.cout_full, "layers": list(e.layers),
            "cin": _ints(e.cin), "cout": _ints(e.cout),
            "median_ms": _floats(e.median_ms), "noise_ms": _floats(e.noise_ms),
            "fine": {"cout": _ints(e.fine_cout), "median_ms": _floats(e.fine_median_ms),
                     "noise_ms": _floats(e.fine_noise_ms)},
            "cout_step": int(e.cout_step),
        })
    ops = {
        kind: {"overhead_ms": m.overhead_ms, "ms_per_melem": m.ms_per_melem, "samples": m.samples}
        for kind, m in sorted(table.ops.items())
    }
    c = table.calibration
    calib = {"a": c.a, "b": c.b, "c": c.c, "method": c.method, "loo_rel_rmse": c.loo_rel_rmse, "samples": c.samples}
    if c.d is not None:
        calib["d"] = c.d
    if c.e is not None:
        calib["e"] = c.e
    return {"format": fmt, "format_version": version, "meta": table.meta, "layers": entries, "ops": ops,
            "calibration": calib}


def table_from_dict(
    data: Any, source: str, fmt: str, version: int
) -> tuple[dict[str, Any], list["LayerEntry"], dict[str, "OpModel"], "Calibration"]:
    def fail(what: str) -> ValueError:
        return ValueError(f"latency table {source}: {what}; re-profile to rebuild it (`halp profile ...`)")

    if not isinstance(data, dict) or data.get("format") != fmt:
        raise fail(f"not a halp latency table (expected \"format\": \"{fmt}\")")
    got = data.get("format_version")
    if got != version:
        raise ValueError(
            f"latency table {source} has format_version {got!r}, but this halp reads version {version}; "
            "re-profile with this version of halp (or use the halp version that wrote it)"
        )
    for name in ("meta", "layers", "ops", "calibration"):
        if name not in data:
            raise fail(f"missing field {name!r} (the file is incomplete)")
    meta = data["meta"]
    if not isinstance(meta, dict):
        raise fail("'meta' must be an object")
    for name, typ in META_FIELDS.items():
        if name not in meta:
            raise fail(f"meta is missing {name!r}")
        if not isinstance(meta[name], typ) or (typ is int and isinstance(meta[name], bool)):
            raise fail(f"meta.{name} must be {typ.__name__}, got {meta[name]!r}")
    meta = _without_retired_settings(meta, source)
    entries = []
    for i, d in enumerate(data["layers"]):
        try:
            entries.append(_entry_from_dict(d, LayerEntry))
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(f"layer entry {i} ({d.get('id') if isinstance(d, dict) else d!r}) is malformed: {exc!s}")
    ops = {}
    for kind, d in dict(data["ops"]).items():
        try:
            ops[str(kind)] = OpModel(float(d["overhead_ms"]), float(d["ms_per_melem"]), list(d.get("samples", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise fail(f"op model {kind!r} is malformed: {exc!s}")
    c = data["calibration"]
    try:
        calib = Calibration(float(c["a"]), float(c["b"]), float(c["c"]), str(c["method"]), list(c.get("samples", [])),
                            {str(k): float(v) for k, v in dict(c.get("loo_rel_rmse", {})).items()},
                            None if c.get("d") is None else float(c["d"]),
                            None if c.get("e") is None else float(c["e"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise fail(f"calibration is malformed: {exc!s}")
    return meta, entries, ops, calib


def _without_retired_settings(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """``meta`` without :data:`RETIRED_SETTINGS`, so that its settings read as today's (a resumed profile, a
    recalibration); a table profiled under the speed guard is used as measured, which is logged."""
    settings = meta["settings"]
    if not any(k in settings for k in RETIRED_SETTINGS):
        return meta
    if settings.get("guard"):
        logger.info("latency table %s was profiled under the speed guard (guard=%s), which halp no longer has: "
                    "the table is used as measured, and anything measured for it now runs without the guard",
                    source, settings["guard"])
    return {**meta, "settings": {k: v for k, v in settings.items() if k not in RETIRED_SETTINGS}}


def _entry_from_dict(d: dict[str, Any], cls: type) -> "LayerEntry":
    shape = shape_from_dict(d["shape"])
    cin = np.asarray(d["cin"], dtype=np.int64)
    cout = np.asarray(d["cout"], dtype=np.int64)
    med = np.asarray(d["median_ms"], dtype=np.float64)
    noise = np.asarray(d["noise_ms"], dtype=np.float64)
    fine = d.get("fine") or {}
    fc = np.asarray(fine.get("cout", []), dtype=np.int64)
    fm = np.asarray(fine.get("median_ms", []), dtype=np.float64)
    fn = np.asarray(fine.get("noise_ms", []), dtype=np.float64)
    want = (cout.size,) if shape.depthwise else (cin.size, cout.size)
    if cin.size == 0 or cout.size == 0:
        raise ValueError("empty channel grid")
    if med.shape != want or noise.shape != want:
        raise ValueError(f"median/noise have shape {med.shape}/{noise.shape}, expected {want}")
    for name, g in (("cin", cin), ("cout", cout)):
        if np.any(np.diff(g) <= 0) or g[0] < 1:
            raise ValueError(f"{name} grid must be positive and strictly increasing")
    if not (fc.shape == fm.shape == fn.shape) or (fc.size and np.any(np.diff(fc) != 1)):
        raise ValueError("fine sweep must be a contiguous run of channels with one median and noise each")
    if not (np.all(np.isfinite(med)) and np.all(med >= 0) and np.all(np.isfinite(fm))):
        raise ValueError("latencies must be finite and non-negative")
    return cls(
        shape=shape, in_repeat=int(d["in_repeat"]), cin_full=int(d["cin_full"]), cout_full=int(d["cout_full"]),
        cin=cin, cout=cout, median_ms=med, noise_ms=noise, fine_cout=fc, fine_median_ms=fm, fine_noise_ms=fn,
        layers=[str(n) for n in d.get("layers", [])], cout_step=int(d.get("cout_step", 0)),
    )
