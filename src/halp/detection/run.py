"""``halp prune --task detection``: a recipe's HALP run on a torchvision SSD detector, resumable.

The same stages as :func:`halp.run.run`, with the detector's pieces in place of a classifier's:

  1. dense detector — ``dense/`` (trained with :func:`~halp.detection.train_detector`, loaded from
     ``weights``, or reused from an earlier run)
  2. latency table of the per-image network (:class:`~halp.detection.DetectorCore`, backbone + head at
     the recipe's batch) — ``table.json`` (profiled here unless a table is given; resumes)
  3. HALP pruning with fine-tuning on the detector's own loss (classification + box regression), whose
     gradients give the Taylor importance — ``prune_ckpt.pt`` every ``checkpoint_every`` steps and at the
     end; a rerun after a kill resumes from it to the same masks
  4. the slim *detector* — ``pruned/`` (JSON spec + safetensors; :func:`halp.load_pruned` rebuilds it),
     ``report.json`` with dense and pruned mAP@0.5 / COCO mAP, predicted and measured latency of the
     network, and the postprocessing (decode + NMS) measured apart as the fixed cost it is

The fine-tuning and dense-training configs start from :data:`~halp.detection.DETECTION_RECIPE` (AdamW;
fine-tuning at a fifth of its learning rate) and the recipe's ``train``/``dense_train`` keys override
it. Every pruning step measures the slim per-image network the solver proposes against the dense one on
the device (:mod:`halp.feedback`; ``feedback_steps: 0`` turns it off), so the budget holds as measured.
The correction step after the schedule is not run here: it would need the detector's loss in
:func:`halp.run._verify_on_device`; the report states budget, predicted and measured ratios instead.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from halp.recipe import Recipe, atomic_write_json
from halp.train import TrainConfig

log = logging.getLogger(__name__)

# SSDlite's own 0.03 lets eval-mode statistics trail the weights in a short CPU run (see create_detector)
BN_MOMENTUM = 0.1
# PruneConfig.min_fraction unless the recipe's ``prune`` sets it. A detector's thin layers (SE squeezes,
# extra-layer 1x1 convs, the first high-resolution expansions, residual streams) are where a knapsack fed a
# distorted table cut to a single channel (mAP@0.5 0.436 -> 0.221), and where, with a 10% floor, Taylor scores
# taken on a converged detector cut 9 groups to <= 25% that fine-tuning did not recover: at budget 0.6, 2 seeds,
# a 25% floor gave 0.623 / 0.648 mAP@0.5 against 0.569 / 0.633 at 10% (docs/results.md, issue 14, eighth pass).
MIN_FRACTION = 0.25


def prune_recipe(recipe: Recipe) -> Recipe:
    """The recipe the detection pruner runs: :data:`MIN_FRACTION` as the width floor where the recipe does
    not choose one. The closed loop is the recipe's (by default every pruning step is measured).

    Why every step matters most here: SSDlite's table was 12% optimistic on this CPU. Measured only in the
    last two steps, the schedule found that out late and cut a fifth of the latency in those two steps,
    with little fine-tuning left: mAP@0.5 0.329 against 0.363 with every step measured (budget 0.6, one
    seed, docs/results.md). A step's measurements cost a few seconds; a detector's fine-tuning, minutes.
    """
    prune = {"min_fraction": MIN_FRACTION, **dict(recipe.prune)}
    return dataclasses.replace(recipe, prune=prune)


def _config(base: TrainConfig, overrides: Any, **defaults: Any) -> TrainConfig:
    return TrainConfig.from_dict({**base.to_dict(), "log_every": 0, **defaults, **dict(overrides)})


def finetune_config(recipe: Recipe) -> TrainConfig:
    """The fine-tuning config: DETECTION_RECIPE at lr / 5 (it starts from a trained detector), then ``train``."""
    from halp.detection.train import DETECTION_RECIPE

    return _config(DETECTION_RECIPE, recipe.train, lr=DETECTION_RECIPE.lr / 5)


def dense_config(recipe: Recipe) -> TrainConfig:
    from halp.detection.train import DETECTION_RECIPE

    return _config(DETECTION_RECIPE, recipe.dense_train)


def _dense_detector(recipe: Recipe, out: Path, train_loader: Any, info: Any, progress: bool) -> nn.Module:
    from halp.detection import create_detector, train_detector
    from halp.recipe import load_weights
    from halp.serialize import load_pruned, save_pruned

    from halp.detection.models import set_bn_momentum

    dense_dir = out / "dense"
    if (dense_dir / "halp_model.json").is_file() and recipe.weights is None:
        log.info("reusing the dense detector in %s", dense_dir)
        det = load_pruned(dense_dir)
        set_bn_momentum(det, BN_MOMENTUM)  # not in the state dict; as the first run had it
        return det
    cfg = dense_config(recipe)
    torch.manual_seed(cfg.seed)
    det = create_detector(recipe.model, info.num_classes, bn_momentum=BN_MOMENTUM, **dict(recipe.model_kwargs))
    if recipe.weights is not None:
        load_weights(det, recipe.weights)
    else:
        log.info("training the dense %s for %d epochs", recipe.model, cfg.epochs)
        train_detector(det, train_loader, cfg, progress=progress)
    save_pruned(det, dense_dir, input_shape=(recipe.batch, *info.input_size))
    return det


def run_detection(recipe: Recipe, progress: bool = True) -> dict[str, Any]:
    """Runs a detection recipe and returns the report (also written to ``<out>/report.json``)."""
    from halp import data
    from halp.checkpoint import load_checkpoint
    from halp.detection import DetectorCore, evaluate, make_detection_optimizer, postprocess_ms, train_detector
    from halp.detection.network import network_input
    from halp.run import _make_pruner, _PrunerHooks, _table, measure_pair
    from halp.serialize import attach_spec, load_pruned, save_pruned
    from halp.surgery import prune_channels
    from halp.train import cosine_with_warmup

    t_start = time.perf_counter()
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    tcfg = finetune_config(recipe)
    if tcfg.device != "cpu" and not tcfg.device.startswith("cpu"):
        log.info("fine-tuning on %s; latency is profiled and measured on %s", tcfg.device, recipe.backend)
    train_loader, test_loader, info = data.make_loaders(recipe.data, tcfg.batch_size, recipe.data_root, seed=tcfg.seed,
                                                        **dict(recipe.data_kwargs))
    if not hasattr(test_loader.dataset, "collate_fn"):
        raise ValueError(f"--task detection needs a detection data set (shapes-voc, voc); {recipe.data!r} is not one")
    atomic_write_json(out / "recipe.json", recipe.to_dict())

    det = _dense_detector(recipe, out, train_loader, info, progress)
    torch.manual_seed(0)
    example = network_input(det, *info.input_size[1:], batch=recipe.batch)  # what the transform makes of an image
    dense_map = evaluate(det, test_loader)
    core = DetectorCore(det).eval()
    table = _table(recipe, core, example, out, progress)

    # the dense reference the closed loop and the final measurement time the slim networks against
    dense = load_pruned(out / "dense").eval()
    dense_core = DetectorCore(dense).eval()
    pruner = _make_pruner(prune_recipe(recipe), core, example, table, dense=dense_core)
    spe = len(train_loader)
    if pruner.schedule[-1] > tcfg.epochs * spe:
        raise ValueError(
            f"the schedule prunes until iteration {pruner.schedule[-1]} (start {pruner.config.start} + steps "
            f"{pruner.config.steps} x interval {pruner.config.interval}) but fine-tuning has only "
            f"{tcfg.epochs * spe} iterations ({tcfg.epochs} epochs x {spe}); add epochs or shorten the schedule"
        )
    optimizer = make_detection_optimizer(det, tcfg)
    scheduler = cosine_with_warmup(optimizer, max(tcfg.epochs * spe, 1), round(tcfg.warmup_epochs * spe))
    ckpt, start_step = out / "prune_ckpt.pt", 0
    if ckpt.is_file():
        state = load_checkpoint(ckpt, det, optimizer, scheduler)
        pruner.load_state_dict(state["extra"]["pruner"])
        start_step = int(state["step"])
        log.info("resuming from %s at step %d (pruning step %d)", ckpt, start_step, pruner.pruning_step)
    hooks = _PrunerHooks(pruner, ckpt, det)
    hooks.optimizer, hooks.scheduler = optimizer, scheduler
    result = train_detector(det, train_loader, tcfg, hooks=hooks, start_step=start_step, optimizer=optimizer,
                            scheduler=scheduler, progress=progress)
    hooks.save(result["step"])
    pruner.apply_masks()
    # the graph names the detector's own modules (backbone.*, head.*): surgery slims the detector itself
    slim = prune_channels(det, pruner.graph, pruner._pruned_keep()).eval()
    attach_spec(slim, pruner.widths(), tuple(example.shape))
    pruned_map = evaluate(slim, test_loader)
    slim_core = DetectorCore(slim).eval()
    stats = measure_pair(recipe, dense_core, example, pruner.dense_ms)(slim_core)
    image = test_loader.dataset[0][0]
    post = [postprocess_ms(d, c, image, 20) for d, c in ((dense, dense_core), (slim, slim_core))]
    report = pruner.report()
    report.update(
        format="halp-report",
        task="detection",
        method=recipe.method,
        input_shape=list(example.shape),
        target=pruner.config.target if pruner.config.target_ms is None else None,
        dense={"map50": dense_map["map50"], "map": dense_map["map"], "latency_ms": stats[0].latency_ms,
               "latency_iqr_ms": stats[0].iqr_ms, "predicted_ms": pruner.dense_ms, "postprocess_ms": post[0]},
        pruned={"map50": pruned_map["map50"], "map": pruned_map["map"], "latency_ms": stats[1].latency_ms,
                "latency_iqr_ms": stats[1].iqr_ms, "predicted_ms": report["predicted_ms"], "postprocess_ms": post[1]},
        latency_ratio=stats[1].latency_ms / stats[0].latency_ms,
        budget_ratio=pruner.final_ms / pruner.dense_ms,
        predicted_ratio=report["predicted_ms"] / pruner.dense_ms,
        latency_statistic="median of the timed forwards, in interleaved rounds (halp.latency.timing)",
        latency_note="latency_ms: the per-image network (backbone + head) at the recipe's batch; postprocess_ms: "
                     "anchor decoding, score threshold, top-k, NMS and rescaling for one test image, measured apart",
        table_meta=dict(table.meta),
        train=result["history"],
        seconds=time.perf_counter() - t_start,
    )
    save_pruned(slim, out / "pruned", meta={"map50": pruned_map["map50"], "map": pruned_map["map"],
                                            "latency_ms": stats[1].latency_ms})
    atomic_write_json(out / "report.json", report)
    return report
