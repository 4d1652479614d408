"""Runs a :class:`~halp.recipe.Recipe`: the HALP pipeline end to end, resumable stage by stage.

Stages and what each leaves in ``out``:
  1. dense model  — ``dense/`` (trained here, loaded from weights, or reused from an earlier run)
  2. latency table — ``table.json`` (profiled on this machine unless a table is given; resumes)
  3. pruning with fine-tuning — ``prune_ckpt.pt`` every ``checkpoint_every`` steps (resumes)
  4. slim model, measurements — ``pruned/``, ``report.json``, ``summary.md``, figures
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from halp.recipe import Recipe, atomic_write_json, load_weights

log = logging.getLogger(__name__)


class _PrunerHooks:
    """Connects a Pruner to :func:`halp.train.train` and checkpoints both together."""

    def __init__(self, pruner: Any, ckpt: Path, model: nn.Module) -> None:
        self.pruner, self.ckpt, self.model = pruner, ckpt, model
        self.optimizer = self.scheduler = None

    def after_backward(self, step: int) -> None:
        self.pruner.step()

    def after_optimizer_step(self, step: int) -> None:
        self.pruner.apply_masks()

    def on_checkpoint(self, step: int) -> None:
        # called by halp.train after the scheduler has stepped: model, optimizer, LR and pruner all at `step`
        self.save(step)

    def save(self, step: int) -> None:
        from halp.checkpoint import save_checkpoint
        from halp.distributed import is_main_process

        if is_main_process():
            save_checkpoint(self.ckpt, self.model, self.optimizer, self.scheduler, step,
                            extra={"pruner": self.pruner.state_dict()})


def _build_model(recipe: Recipe, info: Any) -> nn.Module:
    from halp import models
    from halp.serialize import load_pruned

    if Path(recipe.model).is_dir():
        return load_pruned(recipe.model)
    kwargs = dict(recipe.model_kwargs)
    kwargs.setdefault("in_chans", info.input_size[0])
    return models.create(recipe.model, num_classes=info.num_classes, **kwargs)


def _dense_model(recipe: Recipe, out: Path, loaders: tuple, info: Any, progress: bool) -> nn.Module:
    from halp.serialize import load_pruned, save_pruned
    from halp.train import is_main_process, train

    dense_dir = out / "dense"
    if (dense_dir / "halp_model.json").is_file() and recipe.weights is None:
        log.info("reusing the dense model in %s", dense_dir)
        return load_pruned(dense_dir)
    model = _build_model(recipe, info)
    if recipe.weights is not None:
        load_weights(model, recipe.weights)
    elif not Path(recipe.model).is_dir():
        cfg = recipe.dense_train_config()
        log.info("training the dense %s for %d epochs", recipe.model, cfg.epochs)
        torch.manual_seed(cfg.seed)
        train(model, loaders[0], cfg, test_loader=None, progress=progress)
    if is_main_process():
        save_pruned(model, dense_dir, input_shape=(recipe.batch, *info.input_size))
    return model


def _table(recipe: Recipe, model: nn.Module, example: torch.Tensor, out: Path, progress: bool):
    from halp.latency import LatencyTable, profile

    if recipe.table is not None:
        table = LatencyTable.load(recipe.table)
        table.check_compatible(backend=recipe.backend, batch=recipe.batch)
        return table
    return profile(model, example, backend=recipe.backend, threads=recipe.threads, path=out / "table.json",
                   progress=progress, name=recipe.model, **dict(recipe.profile))


#: upper bound on forwards per model in one budget measurement (a tiny model at ``measure_seconds``)
MAX_MEASURE_REPEATS = 1000


def pair_meter(dense: nn.Module, example: torch.Tensor, expected_ms: float, *, backend: str = "torch-cpu",
               threads: int | None = None, seconds: float = 1.0, min_repeats: int = 40):
    """``slim model -> (dense stats, slim stats)``, both measured in the same interleaved rounds with
    halp's statistic, each for about ``seconds`` (``expected_ms``, the table's dense latency, sizes the
    repeats: at least ``min_repeats``, at most :data:`MAX_MEASURE_REPEATS`; one round per ~10 forwards).

    Budgets are ratios to the dense model, so both are always timed side by side: on a shared machine the
    level drifts by several percent within minutes while the ratio moves 1-3% (docs/results.md).
    """
    from halp.latency import measure_many

    want = math.ceil(1000.0 * seconds / max(float(expected_ms), 1e-3))
    repeats = int(min(max(min_repeats, want), MAX_MEASURE_REPEATS))
    rounds = max(8, repeats // 10)

    def measure(slim: nn.Module) -> tuple[Any, Any]:
        a, b = measure_many([dense, slim], example, backend=backend, threads=threads, repeats=repeats, rounds=rounds)
        return a, b

    return measure


def ratio_meter(dense: nn.Module, example: torch.Tensor, expected_ms: float, **kwargs: Any):
    """``slim model -> its latency / the dense model's`` (arguments as :func:`pair_meter`)."""
    pair = pair_meter(dense, example, expected_ms, **kwargs)

    def measure(slim: nn.Module) -> float:
        a, b = pair(slim)
        return b.latency_ms / a.latency_ms

    return measure


def _meter_settings(recipe: Recipe) -> dict[str, Any]:
    return {"backend": recipe.backend, "threads": recipe.threads, "seconds": recipe.measure_seconds,
            "min_repeats": recipe.measure_repeats}


def measure_pair(recipe: Recipe, dense: nn.Module, example: torch.Tensor, expected_ms: float):
    """:func:`pair_meter` on the recipe's backend and threads, for ``recipe.measure_seconds`` per model."""
    return pair_meter(dense, example, expected_ms, **_meter_settings(recipe))


def ratio_measure(recipe: Recipe, dense: nn.Module, example: torch.Tensor, expected_ms: float):
    """:func:`ratio_meter` on the recipe's backend and threads, for ``recipe.measure_seconds`` per model."""
    return ratio_meter(dense, example, expected_ms, **_meter_settings(recipe))


def _make_pruner(recipe: Recipe, model: nn.Module, example: torch.Tensor, table: Any, dense: nn.Module):
    from halp.baselines import FlopsTaylorPruner, UniformPruner
    from halp.feedback import DeviceFeedback
    from halp.pruner import Pruner

    cfg = recipe.prune_config()
    if recipe.method == "uniform":
        return UniformPruner(model, example, table, cfg)
    if recipe.method == "taylor-flops":
        return FlopsTaylorPruner(model, example, table, cfg, flops_target=recipe.flops_target)
    pruner = Pruner(model, example, table, cfg)
    steps = cfg.steps if recipe.feedback_steps is None else min(recipe.feedback_steps, cfg.steps)
    if steps > 0:
        pruner.feedback = DeviceFeedback(ratio_measure(recipe, dense, example, pruner.dense_ms),
                                         steps=steps, band=recipe.feedback_band)
    return pruner


def run(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Runs the recipe and returns the report (also written to ``<out>/report.json``)."""
    if recipe.task == "detection":
        from halp.detection.run import run_detection

        return run_detection(recipe, progress=progress)
    from halp import data
    from halp.serialize import attach_spec, save_pruned
    from halp.train import cleanup_distributed, evaluate, is_main_process, load_checkpoint, setup_distributed, train

    t_start = time.perf_counter()
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    dist = setup_distributed(recipe.train_config().device)
    tcfg = recipe.train_config()
    loaders = data.make_loaders(recipe.data, tcfg.batch_size, recipe.data_root, seed=tcfg.seed,
                                distributed=dist.world_size > 1)
    train_loader, test_loader, info = loaders
    example = torch.randn(recipe.batch, *info.input_size, generator=torch.Generator().manual_seed(0))
    if is_main_process():
        atomic_write_json(out / "recipe.json", recipe.to_dict())

    model = _dense_model(recipe, out, loaders, info, progress)
    model.eval()
    dense_acc = evaluate(model, test_loader)["accuracy"]
    table = _table(recipe, model, example, out, progress)

    dense = _dense_reference(out)
    pruner = _make_pruner(recipe, model, example, table, dense)
    spe = len(train_loader)
    needed = pruner.schedule[-1]
    if needed > tcfg.epochs * spe:
        raise ValueError(
            f"the schedule prunes until iteration {needed} (start {pruner.config.start} + steps "
            f"{pruner.config.steps} x interval {pruner.config.interval}) but fine-tuning has only "
            f"{tcfg.epochs * spe} iterations ({tcfg.epochs} epochs x {spe}); add epochs or shorten the schedule"
        )
    ckpt = out / "prune_ckpt.pt"
    from halp.train import cosine_with_warmup, make_optimizer

    optimizer = make_optimizer(model, tcfg)
    scheduler = cosine_with_warmup(optimizer, max(tcfg.epochs * spe, 1), round(tcfg.warmup_epochs * spe))
    start_step = 0
    if ckpt.is_file():
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        pruner.load_state_dict(state["extra"]["pruner"])
        start_step = int(state["step"])
        log.info("resuming from %s at step %d (pruning step %d)", ckpt, start_step, pruner.pruning_step)
    hooks = _PrunerHooks(pruner, ckpt, model)
    hooks.optimizer, hooks.scheduler = optimizer, scheduler
    model.train()
    result = train(model, train_loader, tcfg, hooks=hooks, start_step=start_step, optimizer=optimizer,
                   scheduler=scheduler, test_loader=None, progress=progress)
    hooks.save(result["step"])

    corrections = _verify_on_device(recipe, pruner, model, dense, example, train_loader, tcfg, progress)
    model.eval()
    masked_acc = evaluate(model, test_loader)["accuracy"]
    slim = pruner.finalize().eval()
    attach_spec(slim, pruner.widths(), tuple(example.shape))
    pruned_acc = evaluate(slim, test_loader)["accuracy"]
    stats = measure_pair(recipe, dense, example, pruner.dense_ms)(slim)
    report = pruner.report()
    report["corrections"] = corrections
    report.update(
        format="halp-report",
        method=recipe.method,
        input_shape=list(example.shape),
        target=pruner.config.target if pruner.config.target_ms is None else None,
        dense={"accuracy": dense_acc, "latency_ms": stats[0].latency_ms, "latency_iqr_ms": stats[0].iqr_ms,
               "predicted_ms": pruner.dense_ms},
        pruned={"accuracy": pruned_acc, "masked_accuracy": masked_acc, "latency_ms": stats[1].latency_ms,
                "latency_iqr_ms": stats[1].iqr_ms, "predicted_ms": report["predicted_ms"]},
        latency_ratio=stats[1].latency_ms / stats[0].latency_ms,
        budget_ratio=pruner.final_ms / pruner.dense_ms,
        predicted_ratio=report["predicted_ms"] / pruner.dense_ms,
        schedule_end_measured_ratio=corrections[0]["measured_ratio"] if corrections else None,
        latency_statistic="median of the timed forwards, in interleaved rounds (halp.latency.timing)",
        table_meta=dict(table.meta),
        train=result["history"],
        seconds=time.perf_counter() - t_start,
    )
    if is_main_process():
        save_pruned(slim, out / "pruned", meta={"accuracy": pruned_acc, "latency_ms": stats[1].latency_ms})
        atomic_write_json(out / "report.json", report)
        (out / "summary.md").write_text(summary_markdown(report))
        if recipe.plots:
            from halp.plots import plot_report

            plot_report(report, out)
    cleanup_distributed()
    return report


class _MaskHooks:
    """Fine-tuning after the schedule: keep pruned channels at zero, nothing else."""

    def __init__(self, pruner: Any) -> None:
        self.pruner = pruner

    def after_optimizer_step(self, step: int) -> None:
        self.pruner.apply_masks()


def _verify_on_device(
    recipe: Recipe, pruner: Any, model: nn.Module, dense: nn.Module, example: torch.Tensor, train_loader: Any,
    tcfg: Any, progress: bool,
) -> list[dict[str, Any]]:
    """Measures the slim model against the dense one; prunes further where the table was optimistic.

    The table predicts; the device decides. When the measured latency ratio misses the budget ratio by more
    than the tolerance, one more pruning step runs with its target scaled by the measured miss (importance
    from ``interval`` fresh minibatches), followed by ``correction_epochs`` of fine-tuning.
    """
    from dataclasses import replace

    import numpy as np

    from halp.train import train

    budget = pruner.final_ms / pruner.dense_ms  # the budget as a ratio of dense latency
    measure = ratio_measure(recipe, dense, example, pruner.dense_ms)
    records: list[dict[str, Any]] = []
    for attempt in range(recipe.corrections + 1):
        slim = pruner.finalize().eval()
        # the median of three measurements decides: on a shared VM one measurement of a ratio can read
        # several percent off (docs/results.md), and a miss prunes a fine-tuned network once more
        again = [measure(slim) for _ in range(3)]
        ratio = float(np.median(again))
        record = {"attempt": attempt, "measured_ratio": ratio, "measurements": again, "budget_ratio": budget,
                  "predicted_ms": pruner.predict(pruner.widths())}
        records.append(record)
        if ratio <= budget * (1 + recipe.correction_tolerance) or attempt == recipe.corrections:
            break
        target = record["predicted_ms"] * budget / ratio * (1 - recipe.correction_tolerance / 2)
        log.info("measured ratio %.3f misses the budget %.3f: correction step to %.3f ms predicted",
                 ratio, budget, target)
        model.train()
        pruner.importance.reset()
        for i, (x, y) in enumerate(train_loader):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            pruner.importance.accumulate()
            model.zero_grad(set_to_none=True)
            if i + 1 >= pruner.config.interval:
                break
        try:
            result = pruner.prune_now(target)
        except ValueError as exc:  # the table says nothing smaller is allowed: report, do not fail the run
            log.warning("no correction possible: %s", exc)
            record["correction_error"] = str(exc)
            break
        record["corrected_target_ms"] = target
        record["corrected_predicted_ms"] = result.predicted_ms
        cfg = replace(tcfg, epochs=recipe.correction_epochs, lr=tcfg.lr / 2, warmup_epochs=0.0, checkpoint_every=0)
        train(model, train_loader, cfg, hooks=_MaskHooks(pruner), progress=progress)
    return records


def _dense_reference(out: Path) -> nn.Module:
    from halp.serialize import load_pruned

    return load_pruned(out / "dense").eval()


def summary_markdown(report: dict[str, Any]) -> str:
    d, p = report["dense"], report["pruned"]
    lines = [
        f"# halp run: {report['method']}",
        "",
        f"input {report['input_shape']}, budget {report['final_target_ms']:.3f} ms predicted",
        "",
        "| model | accuracy | measured latency (ms) | predicted (ms) |",
        "|---|---|---|---|",
        f"| dense | {100 * d['accuracy']:.2f}% | {d['latency_ms']:.3f} | {d['predicted_ms']:.3f} |",
        f"| pruned | {100 * p['accuracy']:.2f}% | {p['latency_ms']:.3f} | {p['predicted_ms']:.3f} |",
        "",
        f"latency ratio pruned/dense: budget {report['budget_ratio']:.3f}, predicted "
        f"{report['predicted_ratio']:.3f}, measured **{report['latency_ratio']:.3f}** (median of the timed forwards)",
        "",
        "| step | target (ms) | knapsack (ms) | re-predicted (ms) | importance kept | solve (s) |",
        "|---|---|---|---|---|---|",
    ]
    for s in report["steps"]:
        lines.append(f"| {s['step']} | {s['target_ms']:.3f} | {s['knapsack_ms']:.3f} | {s['predicted_ms']:.3f} | "
                     f"{s['importance_kept']:.3f} | {s['solve_seconds']:.3f} |")
    return "\n".join(lines) + "\n"
