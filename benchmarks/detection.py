"""Detection benchmark (paper Fig. 5 at small scale): HALP vs uniform width scaling on SSDlite / SSD300.

The pruned network is the detector's per-image network (:class:`halp.detection.DetectorCore`: backbone
+ head at batch 1); decoding and NMS are a fixed cost measured apart. The work is split into phases
so that only the timing phases need the machine to itself:

    flock -s /tmp/halp-cpu.lock python benchmarks/detection.py --phase dense    # train dense detectors
    flock -x /tmp/halp-cpu.lock python benchmarks/detection.py --phase profile  # latency table (timing)
    flock -x /tmp/halp-cpu.lock python benchmarks/detection.py --phase halp     # HALP prune + fine-tune (measures)
    flock -x /tmp/halp-cpu.lock python benchmarks/detection.py --phase match    # uniform width vs HALP, measured
    flock -x /tmp/halp-cpu.lock python benchmarks/detection.py --phase measure  # latencies, side by side
    flock -s /tmp/halp-cpu.lock python benchmarks/detection.py --phase uniform  # uniform prune + fine-tune
    flock -s /tmp/halp-cpu.lock python benchmarks/detection.py --phase control  # dense fine-tuned alike (optional)
    flock -s /tmp/halp-cpu.lock python benchmarks/detection.py --phase report   # mAP + latency: json, table, figure

(``benchmarks/detection_run.sh`` runs them all in that order.) Every phase reuses what an earlier one
left in ``--work`` (checkpoints, table, slim models), so a killed run is resumed by running the phase
again. ``measure`` times the networks (the uniform ones by their widths, before their fine-tune) and
``report`` writes ``--out`` as a list of ``{"model", "method", "budget", "seed", "map50", "map",
"latency_ms", ...}`` (``budget`` null for dense) and the figure (mAP@0.5 vs measured latency) next to it.

Uniform width scaling is matched to HALP's *measured* latency: ``match`` searches the width multiplier
(from the table's prediction, then regula falsi), measuring each candidate slim network interleaved with
HALP's (``measure_many``), until the measured ratio is within ``--match-tol`` (2%); the uniform
fine-tune then prunes to exactly that multiplier's widths at its last step (the table's prediction is not
monotone in the multiplier, so a bisection on it can land elsewhere) with the same schedule, steps and
learning rate as HALP's. HALP runs with the library's closed loop (``--feedback-steps``, as ``halp prune``):
its last steps measure the slim network the solver proposes against the dense one, so its budget holds as
measured; that phase therefore wants the machine alone too. ``--quick`` shrinks everything to check
the pipeline in minutes (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import halp
import halp.data as data
from halp.baselines import UniformPruner
from halp.checkpoint import load_checkpoint, save_checkpoint
from halp.data.sampler import steps_per_epoch
from halp.config import PruneConfig
from halp.detection import (DetectorCore, create_detector, evaluate, make_detection_optimizer, postprocess_ms,
                            train_detector, with_core)
from halp.detection.models import INPUT_SIZE
from halp.detection.run import MIN_FRACTION
from halp.feedback import DeviceFeedback
from halp.latency import LatencyTable, measure_many
from halp.run import ratio_meter
from halp.serialize import load_pruned, save_pruned
from halp.surgery import keep_from_widths, prune_channels
from halp.train import TrainConfig, cosine_with_warmup

log = logging.getLogger("benchmarks.detection")
INCOMPLETE = 3  # exit code of a training phase stopped by --slice-minutes (rerun it to resume)
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)  # its per-evaluation summary tables


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=["dense", "profile", "halp", "match", "uniform", "control", "measure", "report"],
                   required=True)
    p.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.6, 0.8], help="fractions of dense latency")
    p.add_argument("--epochs", type=int, default=8, help="dense training epochs (DETECTION_RECIPE's 8)")
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW (make_detection_optimizer)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="HALP pruning steps k")
    p.add_argument("--interval", type=int, default=10, help="minibatches between pruning steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None, help="cache folder of the generated shapes-voc tree")
    p.add_argument("--work", type=Path, default=Path("runs/detection"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/detection.json"))
    p.add_argument("--match-clock", default="wall", choices=["wall", "thread"],
                   help="clock of the match and measure timings; thread (CPU time, 1 thread) resists other jobs")
    p.add_argument("--match-tol", type=float, default=0.02, help="uniform vs HALP measured latency, relative")
    p.add_argument("--profile-grid", type=int, default=6, help="grid_points of the latency table")
    p.add_argument("--profile-passes", type=int, default=3,
                   help="ProfileSettings.passes: the table's layer grids measured in this many passes over the "
                        "network, each point the median of its passes (a slow spell of the machine then skews one "
                        "pass, not the table)")
    p.add_argument("--profile-statistic", default=None,
                   help="the latency table's statistic (default: the library's; p10 on a machine shared with other jobs)")
    p.add_argument("--feedback-steps", type=int, default=None,
                   help="HALP's last steps measured on this CPU (halp.feedback; default: every step, as "
                        "halp prune; 0: the table alone)")
    p.add_argument("--measure-seconds", type=float, default=1.0,
                   help="seconds per network of each closed-loop and matching measurement (Recipe.measure_seconds)")
    p.add_argument("--measure-passes", type=int, default=3,
                   help="final timing: interleaved passes per seed; each network's median ratio to dense is reported")
    p.add_argument("--min-fraction", type=float, default=MIN_FRACTION,
                   help="PruneConfig.min_fraction: no group below this fraction of its dense width (HALP and uniform)")
    p.add_argument("--protect", nargs="*", default=[],
                   help="PruneConfig.protect: fnmatch patterns of groups never pruned (HALP and uniform), e.g. "
                        "'*.fc1' (the SE squeezes) 'backbone.extra.*.0.0' (the extra layers' 1x1 reductions)")
    p.add_argument("--min-saving", type=float, default=PruneConfig.min_saving,
                   help="PruneConfig.min_saving: HALP leaves alone a group saving less than this fraction of dense "
                        "latency (uniform scales every group); 0 is HALP without the rule")
    p.add_argument("--slice-minutes", type=float, default=0.0,
                   help="stop a training phase after this many minutes with a checkpoint (exit code 3); rerun resumes")
    p.add_argument("--quick", action="store_true", help="tiny data, epochs and profile: a pipeline check")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs, a.finetune_epochs, a.steps, a.interval, a.seeds = 1, 1, 2, 2, a.seeds[:1]
        a.work, a.out = a.work / "quick", a.work / "quick" / "detection.json"
    return a


def _loaders(a: argparse.Namespace) -> tuple[Any, Any, Any]:
    sizes = dict(n_train=32, n_val=8, n_test=16) if a.quick else {}
    return data.make_loaders("shapes-voc", a.batch_size if not a.quick else 4, root=a.data_root, eval_batch_size=25,
                             size=INPUT_SIZE[a.model], **sizes)


def _cfg(a: argparse.Namespace, epochs: int, seed: int, lr: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, weight_decay=1e-4, warmup_epochs=min(1.0, epochs), grad_clip=10.0,
                       batch_size=a.batch_size, seed=seed, log_every=0, eval_every=0)


def _finetune_cfg(a: argparse.Namespace, seed: int) -> TrainConfig:
    """Fine-tuning of every pruned run and of the dense control: the same recipe by construction."""
    return _cfg(a, a.finetune_epochs, seed, a.lr / 5)


def _dense(a: argparse.Namespace, seed: int, info: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    det = create_detector(a.model, info.num_classes, bn_momentum=0.1)
    load_checkpoint(a.work / f"dense-seed{seed}.ckpt", det)
    return det.eval()


def _example(a: argparse.Namespace) -> torch.Tensor:
    s = INPUT_SIZE[a.model]
    return torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))


class _Slice:
    """Hooks of one time slice of training: pruner calls (if any), checkpoints, and a stop after the slice."""

    def __init__(self, a: argparse.Namespace, path: Path, det: torch.nn.Module, optimizer: Any, scheduler: Any,
                 pruner: halp.Pruner | None, total: int) -> None:
        self.a, self.path, self.det, self.optimizer, self.scheduler, self.pruner = a, path, det, optimizer, scheduler, pruner
        self.total = total
        self.t0 = time.perf_counter()

    def after_backward(self, step: int) -> None:
        if self.pruner is not None:
            self.pruner.step()

    def after_optimizer_step(self, step: int) -> None:
        if self.pruner is not None:
            self.pruner.apply_masks()

    def save(self, step: int) -> None:
        extra = {"pruner": self.pruner.state_dict()} if self.pruner is not None else {}
        save_checkpoint(self.path, self.det, self.optimizer, self.scheduler, step, extra=extra)

    on_checkpoint = save  # train_detector calls it at every epoch's end

    def should_stop(self, step: int) -> bool:
        if step >= self.total or not self.a.slice_minutes or time.perf_counter() - self.t0 < 60 * self.a.slice_minutes:
            return False
        self.save(step)  # called after the scheduler stepped: everything at `step`
        log.info("slice over at step %d: checkpoint %s (rerun the phase to resume)", step, self.path)
        return True


def _train_sliced(a: argparse.Namespace, det: torch.nn.Module, tr: Any, cfg: TrainConfig, ckpt: Path,
                  pruner: halp.Pruner | None = None, test_loader: Any = None) -> dict[str, Any] | None:
    """``train_detector`` resumable across ``--slice-minutes`` slices; None while unfinished.

    A resumed run is the uninterrupted one (per-step seeding, optimizer, LR schedule and pruner restored).
    """
    spe = steps_per_epoch(tr)
    optimizer = make_detection_optimizer(det, cfg)
    scheduler = cosine_with_warmup(optimizer, max(cfg.epochs * spe, 1), round(cfg.warmup_epochs * spe))
    start = 0
    if ckpt.is_file():
        state = load_checkpoint(ckpt, det, optimizer, scheduler)
        start = state["step"]
        if pruner is not None:
            pruner.load_state_dict(state["extra"]["pruner"])
        log.info("resuming %s at step %d", ckpt, start)
    hooks = _Slice(a, ckpt, det, optimizer, scheduler, pruner, cfg.epochs * spe)
    res = train_detector(det, tr, cfg, hooks=hooks, start_step=start, optimizer=optimizer, scheduler=scheduler,
                         test_loader=test_loader, progress=False)
    return None if res["stopped"] else res


def phase_dense(a: argparse.Namespace) -> bool:
    tr, te, info = _loaders(a)
    for seed in a.seeds:
        path = a.work / f"dense-seed{seed}.ckpt"
        if path.is_file():
            continue
        torch.manual_seed(seed)
        det = create_detector(a.model, info.num_classes, bn_momentum=0.1)
        res = _train_sliced(a, det, tr, _cfg(a, a.epochs, seed, a.lr), path.with_suffix(".part.ckpt"), test_loader=te)
        if res is None:
            return False
        save_checkpoint(path, det, step=res["step"], extra={"test": res["test"], "history": res["history"]})
        path.with_suffix(".part.ckpt").unlink(missing_ok=True)
        log.info("dense seed %d: %s", seed, res["test"])
    return True


def phase_control(a: argparse.Namespace) -> bool:
    """The dense detector fine-tuned with the pruned runs' recipe and no pruning: what the extra training alone
    buys, so that a pruned network above dense is not read as pruning's gain. No timing (dense widths)."""
    tr, te, info = _loaders(a)
    for seed in a.seeds:
        folder = a.work / f"dense_finetuned-seed{seed}"
        if (folder / "result.json").is_file():
            continue
        det = _dense(a, seed, info)
        ckpt = folder.with_name(folder.name + ".part.ckpt")
        if _train_sliced(a, det, tr, _finetune_cfg(a, seed), ckpt) is None:
            return False
        result = evaluate(det.eval(), te)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "result.json").write_text(json.dumps(
            {"model": a.model, "method": "dense_finetuned", "budget": None, "seed": seed, "map50": result["map50"],
             "map": result["map"], "finetune_epochs": a.finetune_epochs}, indent=1))
        ckpt.unlink(missing_ok=True)
    return True


def phase_profile(a: argparse.Namespace) -> None:
    _, _, info = _loaders(a)
    core = DetectorCore(_dense(a, a.seeds[0], info)).eval()
    settings = (dict(repeats=3, grid_points=3, fine_span=0, calibration_samples=2, e2e_repeats=3) if a.quick else
                dict(grid_points=a.profile_grid, fine_span=0, repeats=7, min_time_ms=15.0, calibration_samples=8,
                     e2e_repeats=15, passes=a.profile_passes))
    if a.profile_statistic is not None and not a.quick:
        settings["statistic"] = a.profile_statistic
    halp.profile(core, _example(a), threads=a.threads, path=a.work / "table.json", name=a.model, **settings)


def _prune_config(a: argparse.Namespace, budget: float, target_ms: float | None = None) -> PruneConfig:
    """HALP's and uniform's config: the same schedule and the same floor on every group's width."""
    return PruneConfig(target=budget, target_ms=target_ms, steps=a.steps, interval=a.interval,
                       min_fraction=a.min_fraction, protect=tuple(a.protect), min_saving=a.min_saving)


class _MatchedUniform(UniformPruner):
    """Uniform scaling whose last step keeps exactly the widths of ``multiplier``, the one matched to HALP's
    measured latency (None: plain uniform scaling)."""

    def __init__(self, *args: Any, multiplier: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # taken before any step, with every channel kept: the widths match phase measured
        self.final_widths = {} if multiplier is None else self.uniform_widths(multiplier)

    def _allocate(self, offers, ranked, scores, target):
        result = super()._allocate(offers, ranked, scores, target)
        if self.pruning_step < self.config.steps - 1 or not self.final_widths:
            return result
        predicted = self.predict(self.final_widths)
        return dataclasses.replace(result, widths=dict(self.final_widths), knapsack_ms=predicted, predicted_ms=predicted)


def _prune_one(a: argparse.Namespace, seed: int, method: str, budget: float, target_ms: float | None,
               loaders: tuple[Any, Any, Any], table: LatencyTable,
               multiplier: float | None = None) -> dict[str, Any] | None:
    tr, te, info = loaders
    dense = _dense(a, seed, info)
    det = copy.deepcopy(dense)
    core = DetectorCore(det)
    cfg = _prune_config(a, budget, target_ms)
    if method == "uniform":
        pruner = _MatchedUniform(core, _example(a), table, cfg, multiplier=multiplier)
    else:
        pruner = halp.Pruner(core, _example(a), table, cfg)
        steps = a.steps if a.feedback_steps is None else min(a.feedback_steps, a.steps)
        if steps > 0:
            dense_core = DetectorCore(dense).eval()
            pruner.feedback = DeviceFeedback(
                ratio_meter(dense_core, _example(a), pruner.dense_ms, threads=a.threads, seconds=a.measure_seconds),
                steps=steps)
    folder = a.work / f"{method}-{budget}-seed{seed}"
    ckpt = folder.with_name(folder.name + ".part.ckpt")
    res = _train_sliced(a, det, tr, _finetune_cfg(a, seed), ckpt, pruner=pruner)
    if res is None:
        return None
    if not pruner.done:
        raise ValueError(f"{a.steps} steps x {a.interval} minibatches do not fit in {res['total_steps']} fine-tune "
                         "steps: lower --steps/--interval or raise --finetune-epochs")
    slim = pruner.finalize().eval()
    result = evaluate(with_core(det, slim), te)
    save_pruned(slim, folder, widths=pruner.widths(), input_shape=tuple(_example(a).shape))
    rec = {"model": a.model, "method": method, "budget": budget, "seed": seed, "map50": result["map50"],
           "map": result["map"], "predicted_ms": pruner.predict(pruner.widths()), "dense_predicted_ms": pruner.dense_ms,
           "loop_measured_ratio": pruner.history[-1].get("measured_ratio")}
    (folder / "result.json").write_text(json.dumps(rec, indent=1))
    ckpt.unlink(missing_ok=True)
    return rec


def phase_halp(a: argparse.Namespace) -> bool:
    loaders = _loaders(a)
    table = LatencyTable.load(a.work / "table.json")
    for seed in a.seeds:
        for budget in a.budgets:
            if not (a.work / f"halp-{budget}-seed{seed}" / "result.json").is_file():
                if _prune_one(a, seed, "halp", budget, None, loaders, table) is None:
                    return False
    return True


def _measured_ratio(model: torch.nn.Module, reference: torch.nn.Module, a: argparse.Namespace,
                    reference_ms: float) -> float:
    """``model`` over ``reference``, side by side for about ``--measure-seconds`` each (halp's statistic;
    ``reference_ms``, the table's prediction of the reference, sizes the repeats)."""
    if a.match_clock == "wall":
        return ratio_meter(reference, _example(a), reference_ms, threads=a.threads, seconds=a.measure_seconds)(model)
    stats = measure_many([reference, model], _example(a), threads=a.threads, repeats=30, rounds=8, clock=a.match_clock)
    return float(stats[1]) / float(stats[0])


def _predicted_multiplier(up: UniformPruner, target_ms: float) -> float:
    """The largest width multiplier whose uniform widths the table predicts at or under ``target_ms``."""
    lo, hi = 0.0, 1.0
    for _ in range(20):
        m = 0.5 * (lo + hi)
        lo, hi = (m, hi) if up.predict(up.uniform_widths(m)) <= target_ms else (lo, m)
    return max(lo, 1e-3)


def _next_multiplier(tries: list[dict[str, Any]], lo: float, hi: float) -> float:
    """Regula falsi on the measured ratio between the closest tries either side of 1; else a power-law step
    from the last try (latency ~ multiplier^1.5), kept inside the bracket ``(lo, hi)``."""
    below = [t for t in tries if t["ratio_to_halp"] < 1.0]
    above = [t for t in tries if t["ratio_to_halp"] >= 1.0]
    if below and above:
        b = max(below, key=lambda t: t["ratio_to_halp"])
        c = min(above, key=lambda t: t["ratio_to_halp"])
        w = (1.0 - b["ratio_to_halp"]) / (c["ratio_to_halp"] - b["ratio_to_halp"])
        m = b["multiplier"] + w * (c["multiplier"] - b["multiplier"])
    else:
        last = tries[-1]
        m = last["multiplier"] * last["ratio_to_halp"] ** (-1 / 1.5)
    return m if lo < m < hi else 0.5 * (lo + hi)


def phase_match(a: argparse.Namespace) -> None:
    """Search the uniform width multiplier until its slim network measures within ``--match-tol`` of HALP's.

    The first try is the multiplier the table predicts at HALP's predicted latency; then regula falsi on the
    measured ratio inside a shrinking bracket (bisection where it would leave it). Every try is measured
    interleaved with HALP's network (``measure_many``) and recorded.
    """
    _, _, info = _loaders(a)
    table = LatencyTable.load(a.work / "table.json")
    path = a.work / "match.json"
    matches = json.loads(path.read_text()) if path.is_file() else {}
    for seed in a.seeds:
        dense_core = DetectorCore(_dense(a, seed, info)).eval()
        for budget in a.budgets:
            key = f"{budget}-seed{seed}"
            if key in matches:
                continue
            folder = a.work / f"halp-{budget}-seed{seed}"
            if not (folder / "result.json").is_file():
                log.warning("match %s: no HALP run to match (run --phase halp first): skipped", key)
                continue
            halp_slim = load_pruned(folder, model=copy.deepcopy(dense_core)).eval()
            halp_predicted = json.loads((folder / "result.json").read_text())["predicted_ms"]
            up = UniformPruner(dense_core, _example(a), table, _prune_config(a, budget))
            lo, hi, tries = 0.0, 1.0, []
            m = _predicted_multiplier(up, halp_predicted)
            for _ in range(8):
                widths = up.uniform_widths(m)
                slim = prune_channels(dense_core, up.graph, keep_from_widths(up.graph, None, widths)).eval()
                ratio = _measured_ratio(slim, halp_slim, a, halp_predicted)
                tries.append({"multiplier": m, "ratio_to_halp": ratio, "predicted_ms": up.predict(widths)})
                log.info("match %s: multiplier %.4f -> uniform/halp measured %.4f", key, m, ratio)
                if abs(ratio - 1.0) <= a.match_tol:
                    break
                lo, hi = (m, hi) if ratio < 1.0 else (lo, m)
                m = _next_multiplier(tries, lo, hi)
            best = min(tries, key=lambda t: abs(t["ratio_to_halp"] - 1.0))
            matches[key] = {**best, "tries": tries}
            path.write_text(json.dumps(matches, indent=1))


def phase_uniform(a: argparse.Namespace) -> bool:
    loaders = _loaders(a)
    table = LatencyTable.load(a.work / "table.json")
    matches = json.loads((a.work / "match.json").read_text())
    for seed in a.seeds:
        for budget in a.budgets:
            if not (a.work / f"uniform-{budget}-seed{seed}" / "result.json").is_file():
                # the schedule's targets fall to the matched network's predicted latency; its last step
                # keeps exactly the matched multiplier's widths
                match = matches.get(f"{budget}-seed{seed}")
                if match is None:
                    log.warning("uniform %s seed %d: not matched yet (run --phase match first): skipped", budget, seed)
                    continue
                target = match["predicted_ms"] * (1 + 1e-9)
                if _prune_one(a, seed, "uniform", budget, target, loaders, table,
                              multiplier=match["multiplier"]) is None:
                    return False
    return True


def _matched_widths(a: argparse.Namespace, dense_core: torch.nn.Module, table: LatencyTable, budget: float,
                    match: dict[str, Any]) -> tuple[dict[str, int], Any]:
    """The widths of the matched multiplier, which the uniform fine-tune ends at."""
    up = UniformPruner(dense_core, _example(a), table, _prune_config(a, budget, match["predicted_ms"]))
    return up.uniform_widths(match["multiplier"]), up.graph


def _networks(a: argparse.Namespace, seed: int, dense_core: torch.nn.Module, table: LatencyTable
              ) -> list[tuple[str, float, torch.nn.Module, dict[str, int]]]:
    """(method, budget, slim network, widths) for every HALP run of this seed and the uniform network matched
    to it, cut from the dense network at the widths its fine-tune ends at (latency depends on the shapes
    only, so the timing need not wait for the uniform fine-tune; ``report`` checks the widths agree)."""
    matches = json.loads((a.work / "match.json").read_text()) if (a.work / "match.json").is_file() else {}
    out = []
    for budget in a.budgets:
        folder = a.work / f"halp-{budget}-seed{seed}"
        if not (folder / "result.json").is_file():
            continue
        out.append(("halp", budget, load_pruned(folder, model=copy.deepcopy(dense_core)).eval(),
                    json.loads((folder / "halp_model.json").read_text())["widths"]))
        key = f"{budget}-seed{seed}"
        if key not in matches:
            continue
        widths, graph = _matched_widths(a, dense_core, table, budget, matches[key])
        out.append(("uniform", budget, prune_channels(dense_core, graph, keep_from_widths(graph, None, widths)).eval(),
                    widths))
    return out


def phase_measure(a: argparse.Namespace) -> None:
    """The timing: every seed's dense, HALP and matched uniform networks measured interleaved, and the
    postprocessing; written to ``<work>/latency.json`` for ``report``."""
    _, te, info = _loaders(a)
    table = LatencyTable.load(a.work / "table.json")
    x = _example(a)
    rows = []
    for seed in a.seeds:
        det = _dense(a, seed, info)
        dense_core = DetectorCore(det).eval()
        nets = _networks(a, seed, dense_core, table)
        models = [dense_core, *[n for _, _, n, _ in nets]]
        passes = []  # --measure-passes interleaved measurements, alternately in reverse order
        for k in range(a.measure_passes):
            order = list(range(len(models)))[::(-1 if k % 2 else 1)]
            got = measure_many([models[i] for i in order], x, threads=a.threads, repeats=80, rounds=16,
                               clock=a.match_clock)
            passes.append([float(got[order.index(i)]) for i in range(len(models))])
        ms = np.median(np.array(passes), axis=0)
        ratios = [[p[i] / p[0] for p in passes] for i in range(len(models))]
        rows.append({"method": "dense", "budget": None, "seed": seed, "latency_ms": float(ms[0]),
                     "latency_ms_passes": [p[0] for p in passes]})
        for i, (method, budget, _, widths) in enumerate(nets, start=1):
            rows.append({"method": method, "budget": budget, "seed": seed, "latency_ms": float(ms[i]),
                         "latency_ratio": float(np.median(ratios[i])), "latency_ratio_passes": ratios[i],
                         "widths": widths})
    # decoding + NMS at batch 1: the fixed cost outside the pruned network, reported apart (halp's statistic:
    # the median after warm-up; a mean of 30 calls without warm-up read 4.56 ms and then 32.55 ms, minutes apart)
    torch.set_num_threads(a.threads)
    post_ms = postprocess_ms(det, dense_core, te.dataset[0][0], repeats=30)
    (a.work / "latency.json").write_text(json.dumps(
        {"rows": rows, "postprocess_ms": post_ms, "threads": a.threads, "clock": a.match_clock,
         "command": " ".join(sys.argv)}, indent=1))
    for r in rows:
        log.info("%s %s seed %d: %.2f ms", r["method"], r["budget"], r["seed"], r["latency_ms"])


def phase_report(a: argparse.Namespace) -> None:
    """No timing: joins the runs' mAP (``result.json``) with ``latency.json`` into ``--out``, the markdown
    table and the figure. Refuses a uniform run whose fine-tuned widths are not the widths that were timed."""
    _, te, info = _loaders(a)
    timing = json.loads((a.work / "latency.json").read_text())
    lat = {(r["method"], r["budget"], r["seed"]): r for r in timing["rows"]}
    records = []
    for seed in a.seeds:
        dense_map = evaluate(_dense(a, seed, info), te)
        records.append({"model": a.model, "method": "dense", "budget": None, "seed": seed, "map50": dense_map["map50"],
                        "map": dense_map["map"], "latency_ms": lat[("dense", None, seed)]["latency_ms"]})
        control = a.work / f"dense_finetuned-seed{seed}" / "result.json"
        if control.is_file():  # --phase control: dense widths, so dense's latency
            records.append({**json.loads(control.read_text()), "latency_ms": records[-1]["latency_ms"]})
        for method in ("halp", "uniform"):
            for budget in a.budgets:
                folder = a.work / f"{method}-{budget}-seed{seed}"
                t = lat.get((method, budget, seed))
                if t is None or not (folder / "result.json").is_file():
                    log.warning("no %s run at budget %s seed %d (or not timed): left out", method, budget, seed)
                    continue
                widths = json.loads((folder / "halp_model.json").read_text())["widths"]
                if widths != t["widths"]:
                    raise ValueError(f"{folder}: fine-tuned widths differ from the widths timed; rerun --phase measure")
                r = json.loads((folder / "result.json").read_text())
                records.append({**r, "latency_ms": t["latency_ms"], "latency_ratio": t["latency_ratio"]})
        halp_ms = {r["budget"]: r["latency_ms"] for r in records if r["method"] == "halp" and r["seed"] == seed}
        for r in records:
            if r["method"] == "uniform" and r["seed"] == seed and r["budget"] in halp_ms:
                r["matched_ratio_to_halp"] = r["latency_ms"] / halp_ms[r["budget"]]
    post_ms = timing["postprocess_ms"]
    graph = halp.build_graph(DetectorCore(_dense(a, a.seeds[0], info)).eval(), _example(a))
    channels = {g.name: g.channels for g in graph.groups}
    for r in records:  # the evidence behind a shortfall: how thin each pruned network's thinnest groups are
        t = lat.get((r["method"], r["budget"], r["seed"]), {})
        if "widths" in t:
            fracs = sorted((w / channels[n], n, w) for n, w in t["widths"].items())
            r["narrowest"] = [{"group": n, "width": w, "channels": channels[n]} for _, n, w in fracs[:4]]
            r["groups_at_or_under_0.25"] = sum(f <= 0.25 for f, _, _ in fracs)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(records, indent=1))
    (a.out.with_name(a.out.stem + "_meta.json")).write_text(json.dumps(
        {k: timing[k] for k in ("postprocess_ms", "threads", "clock", "command")}, indent=1))
    _figure(records, a.out.with_suffix(".png"))
    a.out.with_suffix(".md").write_text(_markdown(records, post_ms))
    for r in records:
        print(json.dumps(r))
    print(f"postprocessing (decode + NMS, batch 1): {post_ms:.2f} ms")


def _markdown(records: list[dict[str, Any]], post_ms: float) -> str:
    """The results table for docs/results.md: one row per run, latencies as measured side by side."""
    lines = ["| method | budget | seed | mAP@0.5 | COCO mAP | measured ms | / dense | predicted ms | uniform / HALP measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        pred = f"{r['predicted_ms']:.2f}" if "predicted_ms" in r else "-"
        match = f"{r['matched_ratio_to_halp']:.3f}" if "matched_ratio_to_halp" in r else "-"
        ratio = f"{r.get('latency_ratio', 1.0):.3f}"
        budget = "-" if r["budget"] is None else f"{r['budget']}"
        lines.append(f"| {r['method']} | {budget} | {r['seed']} | {r['map50']:.3f} | {r['map']:.3f} | "
                     f"{r['latency_ms']:.2f} | {ratio} | {pred} | {match} |")
    lines += ["", f"postprocessing (decode + NMS, batch 1, dense detector): {post_ms:.2f} ms, not in the latencies above", ""]
    for r in records:
        if "narrowest" in r:
            thin = ", ".join(f"{t['group']} {t['width']}/{t['channels']}" for t in r["narrowest"])
            lines.append(f"* {r['method']} {r['budget']} seed {r['seed']}: {r['groups_at_or_under_0.25']} groups at <= 25% "
                         f"of their width; narrowest: {thin}")
    return "\n".join(lines) + "\n"


def _figure(records: list[dict[str, Any]], path: Path) -> None:
    """mAP@0.5 against measured latency: dense, HALP and uniform (one marker per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for method, style in (("dense", "k*"), ("dense_finetuned", "kx"), ("halp", "o-"), ("uniform", "s--")):
        for seed in sorted({r["seed"] for r in records}):
            rs = sorted((r for r in records if r["method"] == method and r["seed"] == seed), key=lambda r: r["latency_ms"])
            if rs:
                ax.plot([r["latency_ms"] for r in rs], [r["map50"] for r in rs], style, ms=9 if method == "dense" else 6,
                        label=f"{method} (seed {seed})")
    ax.set_xlabel("measured latency of the per-image network, batch 1 (ms)")
    ax.set_ylabel("test mAP@0.5")
    ax.set_title(f"{records[0]['model']} on shapes-voc")
    ax.grid(alpha=0.3)
    # beside the axes: the dense and control markers sit in the corner a legend inside would take
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = _args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, a.threads))
    done = {"dense": phase_dense, "profile": phase_profile, "halp": phase_halp, "match": phase_match,
            "uniform": phase_uniform, "control": phase_control, "measure": phase_measure, "report": phase_report}[a.phase](a)
    if done is False:
        sys.exit(INCOMPLETE)


if __name__ == "__main__":
    main()
