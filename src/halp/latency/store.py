"""The resumable measurement store behind :func:`halp.profile`.

Every measurement (a layer at one ``(cin, cout)``, an op at one shape, a calibration run) has a stable
id and is recorded once. The store is flushed to ``<table>.partial.json`` every few measurements, with
an atomic rename, and whenever profiling stops on an exception (Ctrl-C included), so a rerun measures
only what is missing. The settings that affect numbers are stored with it; resuming under different
settings is refused rather than mixing incomparable measurements.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from halp.latency.serial import atomic_write_json

logger = logging.getLogger(__name__)

PARTIAL_FORMAT = "halp-latency-partial"
PARTIAL_VERSION = 1


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial.json")


class MeasurementStore:
    """Measured values by id, optionally backed by a partial file.

    Args:
        path: the partial file (None: keep in memory only).
        fingerprint: the settings that make measurements comparable (backend, device, dtype, threads,
            batch, timing settings); a partial file with another fingerprint is an error.
        flush_every: write after this many new measurements...
        flush_seconds: ...or when this long has passed since the last write.
    """

    def __init__(
        self, path: Path | None, fingerprint: dict[str, Any], flush_every: int = 8, flush_seconds: float = 20.0
    ) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.values: dict[str, Any] = {}  # measurements
        self.notes: dict[str, Any] = {}  # decisions derived from them that a resumed run must repeat
        self.new = 0  # measured in this run
        self.resumed = 0  # found in the partial file
        self.elapsed_before = 0.0  # profiling seconds spent by earlier, interrupted runs
        self._started = time.monotonic()
        self._dirty = 0
        self._last = time.monotonic()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"partial profile {path} is corrupt ({exc.msg}); delete it to start profiling afresh"
            ) from None
        if not isinstance(data, dict) or data.get("format") != PARTIAL_FORMAT:
            raise ValueError(f"{path} is not a halp partial profile; delete it or choose another output path")
        if data.get("format_version") != PARTIAL_VERSION:
            raise ValueError(
                f"partial profile {path} has format_version {data.get('format_version')!r} (this halp writes "
                f"{PARTIAL_VERSION}); delete it to start profiling afresh"
            )
        theirs = data.get("fingerprint", {})
        diff = {k: (theirs.get(k), v) for k, v in self.fingerprint.items() if theirs.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: file {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"partial profile {path} was measured under other settings ({what}); rerun with the same "
                "settings to resume, or delete the partial file to start afresh"
            )
        values = data.get("values")
        if not isinstance(values, dict):
            raise ValueError(f"partial profile {path} has no 'values'; delete it to start profiling afresh")
        self.values = values
        self.notes = dict(data.get("notes", {}))
        self.resumed = len(values)
        self.elapsed_before = float(data.get("elapsed_s", 0.0))
        logger.info("resuming profile from %s: %d measurements already done", path, len(values))

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str) -> Any:
        return self.values[key]

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.new += 1
        self._dirty += 1
        if self._dirty >= self.flush_every or time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    @property
    def elapsed(self) -> float:
        """Seconds spent profiling, this run and the interrupted runs it resumes."""
        return self.elapsed_before + time.monotonic() - self._started

    def note(self, key: str, value: Any) -> Any:
        """Record ``value`` under ``key`` unless a (resumed) value is already there; return the recorded one."""
        return self.notes.setdefault(key, value)

    def flush(self) -> None:
        if self.path is None or not self._dirty:
            return
        atomic_write_json(
            self.path,
            {"format": PARTIAL_FORMAT, "format_version": PARTIAL_VERSION, "fingerprint": self.fingerprint,
             "elapsed_s": round(self.elapsed, 3), "notes": self.notes, "values": self.values},
        )
        self._dirty = 0
        self._last = time.monotonic()

    def discard(self) -> None:
        """Remove the partial file once the finished table is safely written."""
        if self.path is not None and self.path.exists():
            self.path.unlink()
