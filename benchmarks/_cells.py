"""The experiments' bookkeeping, free of torch: a resumable store of finished cells and the knob matching.

* :class:`CellStore` — every experiment is a grid of *cells* (model, task, method, budget, seed, ...).
  A finished cell is written at once (atomically) to a JSON file keyed by its parameters, so a killed
  run loses at most the cell in flight and a rerun skips every finished one.
* :func:`match_knob` — each baseline's knob (width target, FLOPs target) is tuned until its slim model's
  *measured* latency matches HALP's; latency is monotone in the knob, so a bracketing search works.
"""

from __future__ import annotations

import contextlib
import json
import re
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

try:  # POSIX; elsewhere concurrent runs of one experiment are not supported
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("experiment")


# ----------------------------------------------------------------------------- the cell store


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialises read-modify-write of ``path`` between processes (POSIX advisory lock on a sidecar file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


class CellStore:
    """A JSON file of finished cells, one record per distinct parameter set.

    Args:
        path: the store file (created on the first :meth:`put`).
        experiment: a name recorded in the file and checked on load, so two experiments never share one.

    Raises:
        ValueError: when the file exists but is not a complete store (truncated, hand-edited, another
            experiment's), with what to do about it.
    """

    FORMAT = "halp-cells/1"

    def __init__(self, path: str | os.PathLike[str], experiment: str) -> None:
        self.path = Path(path)
        self.experiment = experiment
        self._cells: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        """The cells on disk (none when the file does not exist yet)."""
        if not self.path.exists():
            return {}
        text = self.path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"the cell store {self.path} is not valid JSON ({exc.msg} at char {exc.pos} of {len(text)}): it was "
                "truncated or edited. Restore it (git checkout -- <file>) or move it aside to recompute every cell"
            ) from None
        if not isinstance(data, dict) or data.get("format") != self.FORMAT or not isinstance(data.get("cells"), dict):
            raise ValueError(f"{self.path} is not a {self.FORMAT} cell store; move it aside or choose another path")
        if data.get("experiment") != self.experiment:
            raise ValueError(
                f"{self.path} holds cells of experiment {data.get('experiment')!r}, not {self.experiment!r}"
            )
        return dict(data["cells"])

    def _update(self, put: tuple[str, dict[str, Any]] | None = None,
                drop: Callable[[dict[str, Any]], bool] | None = None) -> int:
        """Applies one change to the cells *on disk*, rewrites the file atomically, returns how many were dropped.

        The file, not this object's memory, is the truth: two runs of one experiment (say, one model per
        core) each add their own cells and keep the other's, and a dropped cell is not written back by a
        run that loaded it earlier.
        """
        with file_lock(self.path):
            cells = self._read()
            gone = [k for k, c in cells.items() if drop(c["params"])] if drop is not None else []
            for key in gone:
                del cells[key]
            if put is not None:
                cells[put[0]] = put[1]
            if put is not None or gone:
                write_json(self.path, {"format": self.FORMAT, "experiment": self.experiment, "cells": cells})
        self._cells = cells
        return len(gone)

    @staticmethod
    def key(params: Mapping[str, Any]) -> str:
        """The canonical key of a parameter set (order of keys does not matter)."""
        try:
            return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))
        except TypeError as exc:
            raise ValueError(f"cell parameters must be JSON values: {exc}") from None

    def __contains__(self, params: Mapping[str, Any]) -> bool:
        return self.key(params) in self._cells

    def __len__(self) -> int:
        return len(self._cells)

    def get(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        cell = self._cells.get(self.key(params))
        return None if cell is None else cell["result"]

    def put(self, params: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """Records a finished cell and rewrites the file atomically (a kill leaves the old or new file)."""
        key = self.key(params)
        self._update(put=(key, {"params": json.loads(key), "result": json.loads(json.dumps(dict(result)))}))

    def drop(self, match: Callable[[dict[str, Any]], bool]) -> int:
        """Forgets the cells whose parameters satisfy ``match`` (e.g. to measure again); returns how many."""
        return self._update(drop=match)

    def refresh(self) -> None:
        """Re-reads the file, picking up cells another run of the same experiment finished meanwhile."""
        self._cells = self._read()

    def run(self, params: Mapping[str, Any], compute: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """The stored result of ``params``, computing and storing it first if the cell is not finished."""
        done = self.get(params)
        if done is not None:
            log.info("skip finished cell %s", self.key(params))
            return done
        log.info("cell %s ...", self.key(params))
        t0 = time.perf_counter()
        result = dict(compute())
        result.setdefault("cell_seconds", round(time.perf_counter() - t0, 1))
        self.put(params, result)
        return self.get(params) or result

    def records(self) -> list[dict[str, Any]]:
        """Every finished cell (this run's and any concurrent run's) as ``params | result``, in a stable order."""
        self.refresh()
        return [{**c["params"], **c["result"]} for _, c in sorted(self._cells.items())]


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (results files are read by the docs and by other scripts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def write_section(md: Path, text: str, title: str, section: str) -> None:
    """Write ``md`` as ``text`` with its section headed ``title`` replaced by ``section`` (appended when it
    has none), so a benchmark rerun updates its own docs section and leaves the others alone."""
    pattern = re.compile(re.escape(title) + r"\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def update_results(title: str, section: str) -> None:
    """Replace (or append) the section headed ``title`` of the repository's ``docs/results.md``."""
    md = Path(__file__).resolve().parent.parent / "docs" / "results.md"
    write_section(md, md.read_text(encoding="utf-8") if md.exists() else "# halp results\n", title, section)


# ----------------------------------------------------------------------------- knob matching


@dataclass
class Match:
    """The outcome of :func:`match_knob`: the best knob, the ratio it gave, and every probe."""

    knob: float
    ratio: float
    converged: bool
    probes: list[tuple[float, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "ratio": self.ratio, "converged": self.converged,
                "probes": [[k, r] for k, r in self.probes]}


def match_knob(
    ratio_at: Callable[[float], float],
    lo: float,
    hi: float,
    *,
    start: float | None = None,
    tol: float = 0.02,
    max_probes: int = 12,
) -> Match:
    """Finds a knob whose (non-decreasing) ``ratio_at(knob)`` is within ``tol`` of 1.

    A bracketing search: the bracket ``[lo, hi]`` always has ratio < 1 at its low end and > 1 at its high
    end (as far as probed). The next probe interpolates linearly between the bracket's probed ends in
    log-ratio (a staircase or noise can make that poor, so every third probe, or an interpolated probe
    in the outer tenth of the bracket, is replaced by plain bisection). Stops at the first probe within
    ``tol``, when the bracket is narrower than 1e-4, or after ``max_probes``; returns the closest probe.

    Args:
        ratio_at: the candidate's latency over the reference's, as a function of the knob.
        lo, hi: the knob's range (``lo < hi``).
        start: the first probe (a good guess saves probes), default the middle.
        tol: the accepted relative mismatch.
        max_probes: the most evaluations of ``ratio_at``.
    """
    if not lo < hi:
        raise ValueError(f"need lo < hi for the knob range, got {lo}, {hi}")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    probes: list[tuple[float, float]] = []
    a, b = lo, hi
    fa = fb = None  # log-ratios at the bracket ends once probed
    x = min(max(start if start is not None else 0.5 * (lo + hi), lo), hi)
    for i in range(max_probes):
        r = float(ratio_at(x))
        probes.append((x, r))
        if abs(r - 1.0) <= tol:
            break
        if r < 1.0:
            a, fa = x, math.log(r) if r > 0 else -1e9
        else:
            b, fb = x, math.log(r)
        if b - a < 1e-4:
            break
        x = 0.5 * (a + b)
        if fa is not None and fb is not None and (i + 1) % 3 != 0 and fb > fa:
            guess = a + (b - a) * (-fa) / (fb - fa)
            if a + 0.1 * (b - a) <= guess <= b - 0.1 * (b - a):
                x = guess
    best = min(probes, key=lambda kr: abs(kr[1] - 1.0))
    return Match(best[0], best[1], abs(best[1] - 1.0) <= tol, probes)


__all__ = ["CellStore", "Match", "file_lock", "match_knob", "write_json"]
