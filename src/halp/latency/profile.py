"""``halp.profile``: measure a model's latency table on this device.

Order of work: every distinct layer entry (fine cout sweep first, so the detected staircase step can
align the coarse grid, then the coarse cin × cout grid), the non-conv op kinds, and last the calibration
against end-to-end runs. All of it goes through one :class:`MeasurementStore`, which makes the run
resumable point by point.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import halp
from halp.latency.backends import Backend, as_inputs, get_backend
from halp.latency.calibrate import calibrate, graph_hash
from halp.latency.fit import fit_line
from halp.latency.outliers import suspects_grid, suspects_sweep
from halp.latency.plan import EntryPlan, axis_grid, default_align, fine_range, plan_entries, plan_ops
from halp.latency.store import MeasurementStore, partial_path
from halp.latency.table import LatencyTable, LayerEntry, OpModel
from halp.latency.timing import TimingSettings, parse_statistic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileSettings:
    """Knobs of a profiling run (all recorded in the table's metadata).

    Attributes:
        warmup, warmup_ms, repeats, min_time_ms, max_repeats: per-point timing (see TimingSettings).
        grid_points: at most this many widths per prunable axis of the coarse grid.
        fine_span: every cout over the last ``fine_span`` channels, at full cin (0: no fine sweep).
        op_points: representative shapes timed per non-conv op kind.
        calibration_samples: random slim variants measured end to end for the calibration.
        calibration_low: their widths are uniform in ``[calibration_low, 1]`` of each group.
        calibration_rounds: interleaved rounds of end-to-end timing.
        e2e_warmup, e2e_repeats: warm-up calls and timed calls per model in the calibration.
        clock: ``"wall"`` or ``"thread"`` (CPU time of the calling thread; threads=1 only; see
            :class:`TimingSettings`), for every timing of the run.
        statistic: what each measurement stores: ``"median"`` of its samples, or a low percentile
            such as ``"p10"`` on a machine shared with other jobs (they only ever add time); the
            calibration's end-to-end runs use the same statistic. Noise is always the IQR.
        retries: extra measurements of a point that lies ``outlier_threshold`` times above a smooth fit
            of its neighbours (disturbed by another process); the faster median is kept.
        passes: the layer grids and op points are measured in this many passes over the whole network,
            and each point keeps the median of its passes. A slow spell of the machine (seconds long, on a
            shared VM) inflates a run of consecutive entries in one pass only, where a single pass would
            bake it into those layers' costs and the knapsack would spend its budget around it.
        seed: random widths of the calibration variants.
    """

    warmup: int = 5
    warmup_ms: float = 20.0
    repeats: int = 15
    min_time_ms: float = 30.0
    max_repeats: int = 200
    grid_points: int = 12
    fine_span: int = 64
    op_points: int = 3
    calibration_samples: int = 16
    calibration_low: float = 0.25
    calibration_rounds: int = 8
    e2e_warmup: int = 10
    e2e_repeats: int = 40
    retries: int = 2
    outlier_threshold: float = 1.5
    passes: int = 1
    clock: str = "wall"
    statistic: str = "median"
    seed: int = 0

    def __post_init__(self) -> None:
        self.timing()  # validates the timing fields
        for name in ("grid_points", "op_points", "calibration_rounds", "e2e_repeats", "passes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        parse_statistic(self.statistic)
        if not self.outlier_threshold > 1.0:
            raise ValueError(f"outlier_threshold must be > 1 (a ratio to the fit), got {self.outlier_threshold}")
        for name in ("fine_span", "calibration_samples", "e2e_warmup", "retries", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if self.grid_points < 2:
            raise ValueError(f"grid_points must be >= 2 (smallest and full width), got {self.grid_points}")
        if not 0.0 < self.calibration_low <= 1.0:
            raise ValueError(f"calibration_low must be in (0, 1], got {self.calibration_low}")

    def timing(self) -> TimingSettings:
        return TimingSettings(self.warmup, self.warmup_ms, self.repeats, self.min_time_ms, self.max_repeats, self.clock)

    def e2e_timing(self) -> TimingSettings:
        return TimingSettings(self.e2e_warmup, 10 * self.warmup_ms, self.e2e_repeats, 0.0, self.e2e_repeats, self.clock)


def _rebatch(inputs: tuple[torch.Tensor, ...], batch: int | None) -> tuple[torch.Tensor, ...]:
    if batch is None or all(t.shape[0] == batch for t in inputs):
        return inputs
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    return tuple(t[:1].expand(batch, *t.shape[1:]).contiguous() for t in inputs)


def _detect_step(channels: np.ndarray, median: np.ndarray, noise: np.ndarray, full: int, points: int) -> int:
    """Alignment of the coarse cout grid: the staircase step found by halp.grouping, if it is usable."""
    fallback = default_align(full, points)
    try:
        from halp.grouping import detect_step
    except ImportError:
        return fallback
    try:
        step = int(detect_step(channels, median, noise))
    except Exception as exc:  # noqa: BLE001 - a grouping failure must not lose a long profile
        logger.warning("step detection failed (%s); aligning the grid to %d channels", exc, fallback)
        return fallback
    return step if 1 <= step <= max(full // 4, 1) else fallback


class _Profiler:
    """Measures entries and ops through the store (resumable), retaking suspect points."""

    def __init__(self, backend: Backend, store: MeasurementStore, settings: ProfileSettings,
                 tick: Callable[[int], None]) -> None:
        self.be, self.store, self.s, self.tick = backend, store, settings, tick
        self.retaken = 0
        self.pass_ = 0  # the pass being measured (ProfileSettings.passes)

    def _key(self, base: str) -> str:
        return base if self.pass_ == 0 else f"{base}|pass{self.pass_}"

    def _over_passes(self, base: str) -> tuple[float, float]:
        """The median over the passes measured so far of a point's (statistic, noise)."""
        got = [self.store.get(k)[:2] for k in (base, *(f"{base}|pass{r}" for r in range(1, self.pass_ + 1)))
               if k in self.store]
        med, noise = np.median(np.asarray(got, dtype=float), axis=0)
        return float(med), float(noise)

    def point(self, plan: EntryPlan, cin: int, cout: int, retake: bool = False) -> tuple[float, float]:
        """``(median, noise)`` of one layer point over the passes so far. A point is measured at most
        ``1 + retries`` times per pass over all runs (the count is stored with it); a retake keeps the
        faster reading."""
        # keyed by what is timed, not by entry: entries of one shape share their common points
        base = f"L|{plan.shape.key()}|r{plan.in_repeat}|{cin}|{cout}"
        key = self._key(base)
        if key not in self.store:
            st = self.be.time_layer(plan.shape, int(cin), int(cout), plan.in_repeat)
            self.store.put(key, [st.summary(self.s.statistic), st.iqr_ms, 1])
            self.tick(1)
        elif retake:
            med, noise, *rest = self.store.get(key)
            tries = int(rest[0]) if rest else 1
            if tries <= self.s.retries:
                st = self.be.time_layer(plan.shape, int(cin), int(cout), plan.in_repeat)
                self.retaken += 1
                if st.summary(self.s.statistic) < med:
                    med, noise = st.summary(self.s.statistic), st.iqr_ms
                self.store.put(key, [med, noise, tries + 1])
        return self._over_passes(base)

    def entry(self, plan: EntryPlan) -> LayerEntry:
        s = self.s
        fine = fine_range(plan, s.fine_span)
        fine_cin = (lambda c: c) if plan.depthwise else (lambda c: plan.cin_full)
        fv = np.array([self.point(plan, fine_cin(c), c) for c in fine]).reshape(-1, 2)
        for _ in range(s.retries if fine.size >= 5 else 0):
            bad = np.flatnonzero(suspects_sweep(fv[:, 0], s.outlier_threshold))
            for i in bad:
                fv[i] = self.point(plan, fine_cin(fine[i]), fine[i], retake=True)
            if not bad.size:
                break
        # the grid's alignment is stored: retakes below may change the sweep, a resumed run must not
        align = self.store.note(f"align|{plan.id}", _detect_step(fine, fv[:, 0], fv[:, 1], plan.cout_full, s.grid_points)
                                if fine.size >= 8 else default_align(plan.cout_full, s.grid_points))
        cout = axis_grid(plan.cout_full, plan.cout_low, s.grid_points, int(align), plan.multiple)
        cin = cout if plan.depthwise else axis_grid(
            plan.cin_full, plan.cin_low, s.grid_points, default_align(plan.cin_full, s.grid_points), plan.multiple)
        pairs = [(c, c) for c in cout] if plan.depthwise else [(ci, co) for ci in cin for co in cout]
        shape = (len(cout),) if plan.depthwise else (len(cin), len(cout))
        vals = np.array([self.point(plan, ci, co) for ci, co in pairs])
        for _ in range(s.retries):
            grid_cin = cin if not plan.depthwise else cout[:1]
            bad = np.flatnonzero(suspects_grid(grid_cin, cout, vals[:, 0].reshape(-1, len(cout)), s.outlier_threshold))
            for i in bad:
                vals[i] = self.point(plan, *pairs[i], retake=True)
            if not bad.size:
                break
        # re-read the sweep: grid retakes on the full-cin row are the same points
        fv = np.array([self.point(plan, fine_cin(c), c) for c in fine]).reshape(-1, 2)
        return LayerEntry(plan.shape, plan.in_repeat, plan.cin_full, plan.cout_full, cin, cout,
                          vals[:, 0].reshape(shape), vals[:, 1].reshape(shape), fine, fv[:, 0].copy(),
                          fv[:, 1].copy(), list(plan.layers))

    def op_kind(self, kind: str, configs: list[tuple[int, int, int, int]]) -> OpModel:
        samples = []
        for b, c, h, w in configs:
            base = f"O|{kind}|{b}x{c}x{h}x{w}"
            key = self._key(base)
            if key not in self.store:
                st = self.be.time_op(kind, b, c, (h, w))
                self.store.put(key, [st.summary(self.s.statistic), st.iqr_ms])
                self.tick(1)
            med, noise = self._over_passes(base)
            samples.append([b, c, h, w, float(med), float(noise)])
        overhead, slope = fit_line([b * c * h * w / 1e6 for b, c, h, w, _, _ in samples],
                                   [m for *_, m, _ in samples])
        return OpModel(overhead, slope, samples)


def _calibrate(model: nn.Module, inputs: tuple[torch.Tensor, ...], graph: Any, table: LatencyTable, be: Backend,
               store: MeasurementStore, cfg: ProfileSettings, on_measured: Any = None) -> Any:
    """The end-to-end calibration as the settings ask for it (a profile and a recalibration alike)."""
    return calibrate(model, inputs, graph, table, be, store, samples=cfg.calibration_samples, low=cfg.calibration_low,
                     rounds=cfg.calibration_rounds, seed=cfg.seed, timing=cfg.e2e_timing(), statistic=cfg.statistic,
                     on_measured=on_measured)


def _metadata(be: Backend, cfg: ProfileSettings, model: nn.Module, inputs: tuple[torch.Tensor, ...],
              name: str | None, gh: str) -> dict[str, Any]:
    """Everything needed to reproduce (or refuse to mix) a measurement."""
    info = be.info()
    return {
        "backend": be.name, "device": info["device"], "batch": int(inputs[0].shape[0]), "dtype": be.dtype,
        "threads": be.threads, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {k: info.get(k) for k in ("torch", "numpy", "onnxruntime", "openvino", "python")} | {"halp": halp.__version__},
        "platform": info["platform"], "settings": dataclasses.asdict(cfg), "backend_options": be.options(),
        "model": {"name": name, "class": type(model).__name__, "graph_hash": gh,
                  "input_shapes": [list(t.shape) for t in inputs]},
    }


def _reuse(path: Path, meta: dict[str, Any], graph: Any) -> LatencyTable:
    """The finished table at ``path`` if it was profiled for this model and settings, else an error."""
    old = LatencyTable.load(path)
    keys = ("backend", "batch", "dtype", "threads", "backend_options")
    # a setting added in a later halp version is missing from older tables; it defaulted to the old behaviour
    defaults = dataclasses.asdict(ProfileSettings())
    same = all(old.meta.get(k) == meta[k] for k in keys) and {**defaults, **old.meta.get("settings", {})} == meta["settings"]
    if same and old.meta.get("model", {}).get("graph_hash") == meta["model"]["graph_hash"] and not old.covers(graph):
        logger.info("latency table %s already profiled for this model and settings; reusing it", path)
        return old
    raise ValueError(
        f"{path} holds a latency table for another model or settings ({old!r}); choose another output "
        "path, delete it, or pass overwrite=True (CLI: --overwrite)"
    )


def profile(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    backend: str | Backend = "torch-cpu",
    dtype: str = "float32",
    threads: int | None = None,
    batch: int | None = None,
    path: str | Path | None = None,
    progress: bool = True,
    *,
    name: str | None = None,
    overwrite: bool = False,
    calibration_data: Any = None,
    **settings: Any,
) -> LatencyTable:
    """Measure the latency table of ``model`` on this device.

    For every distinct prunable layer shape: a coarse ``cin × cout`` grid (1-D for depthwise convs) and
    a fine sweep of cout near full width; a line per non-conv op kind; then the calibration against the
    dense model and random slim variants measured end to end. ``model`` is not modified.

    Args:
        model: the dense network.
        example_inputs: a tensor or tuple of tensors (their shape fixes the spatial sizes).
        backend: a name from :data:`halp.latency.BACKENDS` (``"torch-cpu"``, ``"torch-cuda"``,
            ``"onnxruntime"``, ``"openvino"``, ``"onnxruntime-int8"``, ``"openvino-int8"``) or a :class:`Backend`.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` (onnxruntime, openvino: float32 only; the
            INT8 backends record ``"int8"``).
        threads: intra-op threads while measuring (None: torch's current setting, recorded);
            restored afterwards.
        batch: batch size to profile at (None: the inputs' batch).
        path: where to write the table. Measurements are flushed to ``<path>.partial.json`` as they
            are made and a rerun resumes from it; an existing finished table for the same model and
            settings is returned without measuring (``overwrite=True`` re-profiles).
        progress: show a tqdm progress bar.
        name: a label for the model, stored in the metadata.
        overwrite: ignore an existing finished table at ``path``.
        calibration_data: INT8 backends only: example batches that quantize the calibration's whole
            networks (None: the example inputs; single layers are quantized on random inputs).
        **settings: fields of :class:`ProfileSettings` (``repeats``, ``grid_points``, ``fine_span``, ...).
    """
    try:
        cfg = ProfileSettings(**settings)
    except TypeError as exc:
        names = [f.name for f in dataclasses.fields(ProfileSettings)]
        raise ValueError(f"unknown profile setting ({exc}); valid settings: {names}") from None
    inputs = _rebatch(as_inputs(example_inputs), batch)
    be = get_backend(backend, dtype=dtype, threads=threads, settings=cfg.timing(), calibration_data=calibration_data)
    be.settings = cfg.timing()  # a Backend instance passed in is timed with this run's settings too
    dtype = be.dtype
    from halp.graph import build_graph

    graph = build_graph(model, inputs)
    gh = graph_hash(graph)
    meta = _metadata(be, cfg, model, inputs, name, gh)
    path = Path(path) if path is not None else None
    if path is not None and path.exists() and not overwrite:
        return _reuse(path, meta, graph)
    fingerprint = {k: meta[k] for k in ("backend", "device", "batch", "dtype", "threads")}
    fingerprint["timing"] = dataclasses.asdict(cfg.timing())
    fingerprint["e2e"] = [cfg.e2e_warmup, cfg.e2e_repeats, cfg.calibration_rounds]
    fingerprint["torch"] = torch.__version__
    fingerprint["backend_options"] = be.options()
    fingerprint["statistic"] = cfg.statistic
    store = MeasurementStore(partial_path(path) if path is not None else None, fingerprint)

    plans = plan_entries(graph, dtype)
    op_plans = plan_ops(graph, cfg.op_points)
    n_cal = cfg.calibration_samples + 1
    total = cfg.passes * (sum(len(fine_range(p, cfg.fine_span)) + (1 if p.depthwise else cfg.grid_points)
                              * cfg.grid_points for p in plans) + sum(len(v) for v in op_plans.values())) + n_cal
    from tqdm.auto import tqdm

    start = time.perf_counter()
    bar = tqdm(total=total, initial=min(store.resumed, total), disable=not progress, desc="profiling", unit="pt",
               dynamic_ncols=True)
    try:
        with be, torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            prof = _Profiler(be, store, cfg, bar.update)
            for r in range(cfg.passes):  # the last pass's entries hold the medians over all passes
                prof.pass_ = r
                entries = []
                for p in plans:
                    bar.set_postfix_str(p.layers[0], refresh=False)
                    entries.append(prof.entry(p))
                ops = {}
                for kind, configs in op_plans.items():
                    bar.set_postfix_str(kind, refresh=False)
                    ops[kind] = prof.op_kind(kind, configs)
            table = LatencyTable(meta, entries, ops)
            bar.set_postfix_str("calibration", refresh=False)
            table.calibration = _calibrate(model, inputs, graph, table, be, store, cfg, on_measured=bar.update)
    finally:
        store.flush()
        bar.total = bar.n  # the estimate counted every axis as prunable
        bar.close()
    table.meta["profile_seconds"] = round(store.elapsed, 2)  # including interrupted earlier runs
    table.meta["run_seconds"] = round(time.perf_counter() - start, 2)
    table.meta["measurements"] = {"new": store.new, "resumed": store.resumed, "retaken": prof.retaken}
    logger.info("profiled %d entries, %d op kinds in %.1f s (%d new measurements, %d resumed)",
                len(entries), len(ops), table.meta["profile_seconds"], store.new, store.resumed)
    if path is not None:
        table.save(path)
        store.discard()
    return table


def recalibrate(
    table: LatencyTable,
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    backend: str | Backend | None = None,
    *,
    threads: int | None = None,
    samples: int | None = None,
) -> LatencyTable:
    """Re-take ``table``'s end-to-end calibration on this machine now, keeping its layer measurements.

    Why: the per-layer grids describe the hardware and stay valid, but a machine's overall speed
    drifts (clock governors, thermal limits, other tenants of a VM: we measured the same dense
    MobileNet-V2 at 18.0 ms and, minutes later, 16.1 ms on a shared 2-core VM). The calibration maps
    layer sums to whole-network latency, so re-measuring its dense model and slim variants (seconds
    to a minute, against many minutes for a profile) brings predictions back in line with the
    machine as it is. The same variants are measured as in the profile (same seed), with the same
    settings.

    Args:
        table: a table profiled for ``model`` (modified in place and returned).
        model: the dense model the table was profiled on.
        example_inputs: inputs of the profiled shape (re-batched to the table's batch).
        backend: by default the table's backend; a :class:`Backend` instance must be of that kind.
        threads: by default the table's thread count.
        samples: random slim networks to measure (default: as many as when profiled; the first ones are
            the same networks). More pin the calibration's weights down better: MobileNet-V2 at 2 threads
            on our VM scored r 0.981 on held-out networks with 40, 0.972–0.977 with 16.

    Raises:
        ValueError: ``model`` is not the profiled model, or the backend differs from the table's.
    """
    meta = table.meta
    try:
        cfg = ProfileSettings(**meta["settings"])
        if samples is not None:
            cfg = dataclasses.replace(cfg, calibration_samples=samples)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the table's metadata holds no usable profile settings ({exc}); profile again") from None
    inputs = _rebatch(as_inputs(example_inputs), int(meta["batch"]))
    be = get_backend(backend if backend is not None else meta["backend"], dtype=meta["dtype"],
                     threads=threads if threads is not None else meta.get("threads"), settings=cfg.timing())
    if be.name != meta["backend"]:
        raise ValueError(f"the table was profiled on {meta['backend']!r}; recalibrating it on {be.name!r} would mix "
                         "devices: profile a table for that backend instead")
    from halp.graph import build_graph

    graph = build_graph(model, inputs)
    if (meta.get("model") or {}).get("graph_hash") != graph_hash(graph):
        raise ValueError("recalibrate needs the dense model the table was profiled on (its graph differs)")
    store = MeasurementStore(None, {})
    with be, torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        table.calibration = _calibrate(model, inputs, graph, table, be, store, cfg)
    meta["recalibrated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    logger.info("recalibrated: measured ≈ %.3f·layers + %.3f·ops + %.3f ms", table.calibration.a,
                table.calibration.b, table.calibration.c)
    return table
