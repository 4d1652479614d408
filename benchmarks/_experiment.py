"""Shared plumbing of the paper-figure experiments: presets, cached dense models and tables, robust
timing, and one fine-tuning recipe for every method. (The cell store and the knob matching live in
``_cells.py`` and are re-exported here.)

Why each piece exists:

* :class:`Preset` — the quick grid this session runs and the issue's full grid, in one place.
* :func:`dense_model` / :func:`latency_table` — dense pretraining and profiling are the two costs every
  experiment shares; both are cached on disk (``results/dense/``, ``results/tables/``; gitignored).
* :func:`finetune` — the identical fine-tuning budget (epochs, LR schedule, data order) for every
  method; the pruners run inside it through the same hooks.
* :func:`timing_backend` — the backend of every table and measurement (halp's one statistic).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import CellStore, Match, file_lock, match_knob, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("experiment")


# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """The size of an experiment run: which grid, how much training, how much measuring.

    ``prune_span`` is the share of the fine-tuning iterations over which the pruning steps are spread
    (``interval = span // steps``), so every method and every ``k`` gets the same recovery time after its
    last step. ``n_train`` limits the train split (None: all of it); the test split is always whole.
    ``per_model`` overrides training fields for one model (a recipe that trains ResNet-56 can leave
    MobileNet-V2 at chance); every method pruning that model gets the same overridden recipe.
    """

    name: str
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    budgets: tuple[float, ...]
    n_train: int | None
    dense_epochs: int
    finetune_epochs: int
    batch_size: int = 64
    dense_lr: float = 0.1
    finetune_lr: float = 0.02
    steps: int = 10
    prune_span: float = 0.5
    calib_batches: int = 4
    measure_repeats: int = 40
    measure_rounds: int = 10
    dry_repeats: int = 20
    match_tol: float = 0.02
    profile: Mapping[str, Any] = field(default_factory=dict)
    ablation_models: tuple[str, ...] = ("resnet56",)
    ablation_task: str = "shapes10"
    ablation_budget: float = 0.6
    ablation_seeds: tuple[int, ...] = (0,)
    hardware_budget: float = 0.7
    threads: int = 2
    protect_stem: bool = False
    per_model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    data_kw: Mapping[str, Any] = field(default_factory=dict)  # data set options (e.g. digits ``size``)
    skip: tuple[tuple[str, str], ...] = ()  # (model, task) pairs of models × tasks this preset does not run

    def pairs(self) -> list[tuple[str, str]]:
        """The (model, task) grid: every model on every task, less ``skip``."""
        return [(m, t) for m in self.models for t in self.tasks if (m, t) not in self.skip]

    def for_model(self, model_name: str) -> "Preset":
        """This preset with ``model_name``'s overrides applied (the same preset when it has none)."""
        extra = dict(self.per_model.get(model_name, {}))
        allowed = {"dense_lr", "finetune_lr", "dense_epochs", "finetune_epochs", "batch_size"}
        if set(extra) - allowed:
            raise ValueError(f"per_model[{model_name!r}] may set only {sorted(allowed)}, got {sorted(extra)}")
        return replace(self, **extra) if extra else self

    def tag(self) -> str:
        """Names what the dense models were trained with (dense caches are shared across presets
        only when these agree)."""
        data = "".join(f"-{k}{v}" for k, v in sorted(self.data_kw.items()))  # empty: the old keys stay valid
        return f"n{self.n_train or 'all'}-e{self.dense_epochs}-b{self.batch_size}-lr{self.dense_lr:g}{data}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["profile"] = dict(self.profile)
        out["per_model"] = {k: dict(v) for k, v in self.per_model.items()}
        out["data_kw"] = dict(self.data_kw)
        return out


QUICK = Preset(
    name="quick",
    tasks=("shapes10", "digits"),
    skip=(("mobilenet_v2_cifar", "digits"),),  # not run yet: ~30 min more on 2 cores
    models=("resnet56", "mobilenet_v2_cifar"),
    seeds=(0, 1, 2),
    budgets=(0.8, 0.55, 0.45, 0.3),
    n_train=2000,
    dense_epochs=10,
    finetune_epochs=2,
    batch_size=32,
    dense_lr=0.05,
    steps=10,
    calib_batches=4,
    measure_repeats=40,
    dry_repeats=30,
    ablation_models=("resnet56",),
    ablation_budget=0.6,
    ablation_seeds=(0,),
    threads=1,
    # at LR 0.05 MobileNet-V2 stays at chance on 2,000 images; 0.02 (with zero-initialised residuals)
    # reaches 41% in 4 epochs; 6 dense epochs because each costs ~2 min on one core
    per_model={"mobilenet_v2_cifar": {"dense_lr": 0.02, "dense_epochs": 6}},
)

# A minutes-long end-to-end check of the scripts' code paths (numbers meaningless; not reported).
SMOKE = Preset(
    name="smoke",
    tasks=("shapes10",),
    models=("resnet20",),
    seeds=(0,),
    budgets=(0.8,),
    n_train=1024,
    dense_epochs=1,
    finetune_epochs=2,
    batch_size=32,
    steps=2,
    calib_batches=1,
    measure_repeats=6,
    measure_rounds=2,
    dry_repeats=4,
    ablation_models=("resnet20",),
    ablation_budget=0.8,
    threads=1,
)

FULL = Preset(
    name="full",
    tasks=("digits", "shapes10"),
    models=("resnet56", "mobilenet_v2_cifar"),
    seeds=(0, 1, 2),
    budgets=(0.8, 0.55, 0.45, 0.3),
    n_train=None,
    dense_epochs=30,
    finetune_epochs=10,
    steps=30,
    calib_batches=8,
    measure_repeats=60,
    dry_repeats=30,
    ablation_models=("resnet56", "mobilenet_v2_cifar"),
    ablation_budget=0.6,
    ablation_seeds=(0, 1, 2),
)


def preset(quick: bool, threads: int | None = None, smoke: bool = False) -> Preset:
    """The quick or full preset, optionally at another thread count (training and measuring)."""
    chosen = SMOKE if smoke else QUICK if quick else FULL
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        chosen = replace(chosen, threads=threads)
    return chosen


# ----------------------------------------------------------------------------- timing

def timing_backend(name: str, threads: int, timing: Any = None) -> Any:
    """The halp latency backend every table and measurement of these experiments uses.

    It reports halp's one statistic, the median of all timed forwards in interleaved rounds (issue 13: the
    demo, ``halp prune``'s report, ``halp latency`` and the benchmarks all measure the same way). The
    experiments used the 10th percentile until then; results in docs/results.md taken that way say so.
    """
    from halp.latency.backends import BACKENDS, get_backend

    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    return get_backend(name, threads=threads, settings=timing)


# ----------------------------------------------------------------------------- data, dense models, tables


def loaders(task: str, p: Preset, seed: int) -> tuple[Any, Any, Any]:
    """Train and test loaders; the train split is limited to ``p.n_train`` where the data set allows."""
    from halp import data

    kw: dict[str, Any] = dict(p.data_kw)
    if p.n_train is not None and task == "shapes10":
        kw["n_train"] = p.n_train
    return data.make_loaders(task, p.batch_size, seed=seed, eval_batch_size=256, **kw)


def example_input(info: Any) -> torch.Tensor:
    """The deployment input: batch 1 at the task's resolution (fixed values, so runs agree)."""
    return torch.randn(1, *info.input_size, generator=torch.Generator().manual_seed(0))


def train_config(p: Preset, seed: int, *, dense: bool) -> Any:
    from halp.train import TrainConfig

    epochs = p.dense_epochs if dense else p.finetune_epochs
    return TrainConfig(
        epochs=epochs, lr=p.dense_lr if dense else p.finetune_lr, batch_size=p.batch_size, seed=seed,
        warmup_epochs=min(1.0, epochs / 4) if dense else 0.0, log_every=0, eval_every=0,
    )


def create_model(model_name: str, info: Any) -> nn.Module:
    """A fresh zoo model for the task; residual networks start with their last BN per block at zero
    (deep CIFAR ResNets trained briefly on small data otherwise stall at chance for epochs)."""
    from halp import models

    kw = {"num_classes": info.num_classes, "in_chans": info.input_size[0]}
    try:
        return models.create(model_name, zero_init_residual=True, **kw)
    except ValueError:  # models without residual blocks take no such option
        return models.create(model_name, **kw)


def dense_model(model_name: str, task: str, p: Preset, seed: int) -> tuple[nn.Module, float]:
    """The dense model trained on ``task`` with ``seed`` (cached as a halp saved model) and its accuracy."""
    from halp.serialize import load_pruned, save_pruned
    from halp.train import evaluate, train

    out = RESULTS / "dense" / dense_key(model_name, task, p, seed)
    train_loader, test_loader, info = loaders(task, p, seed)
    if (out / "halp_model.json").is_file():
        model = load_pruned(out).eval()
        return model, float(model.halp_meta["accuracy"])  # type: ignore[attr-defined]
    log.info("training dense %s on %s (seed %d, %d epochs)", model_name, task, seed, p.dense_epochs)
    torch.manual_seed(seed)
    model = create_model(model_name, info)
    t0 = time.perf_counter()
    train(model, train_loader, train_config(p, seed, dense=True), progress=False)
    model.eval()
    acc = evaluate(model, test_loader)["accuracy"]
    save_pruned(model, out, input_shape=(1, *info.input_size),
                meta={"accuracy": acc, "task": task, "seed": seed, "preset": p.tag(),
                      "train_seconds": round(time.perf_counter() - t0, 1)})
    log.info("dense %s on %s: accuracy %.4f", model_name, task, acc)
    record_dense(model_name, task, p, seed, acc)
    return load_pruned(out).eval(), acc


DENSE_INDEX = RESULTS / "dense_accuracy.json"


def dense_key(model_name: str, task: str, p: Preset, seed: int) -> str:
    return f"{model_name}-{task}-{p.tag()}-s{seed}"


def record_dense(model_name: str, task: str, p: Preset, seed: int, accuracy: float) -> None:
    """Keeps each dense model's test accuracy in a small tracked file: the model files themselves are
    gitignored, and the reports need the accuracy on machines that never trained it."""
    with file_lock(DENSE_INDEX):  # seeds run as parallel processes finish their dense models independently
        index = json.loads(DENSE_INDEX.read_text()) if DENSE_INDEX.is_file() else {}
        index[dense_key(model_name, task, p, seed)] = {"accuracy": float(accuracy)}
        write_json(DENSE_INDEX, index)


def dense_accuracy(model_name: str, task: str, p: Preset, seed: int) -> float | None:
    """The recorded dense accuracy (the index, else the cached model), or None when never trained here."""
    key = dense_key(model_name, task, p, seed)
    if DENSE_INDEX.is_file() and key in (index := json.loads(DENSE_INDEX.read_text())):
        return float(index[key]["accuracy"])
    meta = RESULTS / "dense" / key / "halp_model.json"
    return float(json.loads(meta.read_text())["meta"]["accuracy"]) if meta.is_file() else None


def latency_table(model: nn.Module, model_name: str, x: torch.Tensor, backend: str, p: Preset,
                  settings: Mapping[str, Any] | None = None) -> Any:
    """The latency table of ``model_name`` at input ``x`` on ``backend`` (profiled once, resumable).

    ``settings`` (ProfileSettings fields) default to the preset's; they are part of the file name, since a
    table is only reused for identical settings.
    """
    from halp.latency import ProfileSettings, profile

    settings = dict(p.profile if settings is None else settings)
    shape = "x".join(str(d) for d in x.shape[1:])
    extra = "-".join(f"{k}{v}" for k, v in sorted(settings.items())) or "default"
    path = RESULTS / "tables" / f"{model_name}_{shape}_{backend}_t{p.threads}_median_{extra}.json"
    be = timing_backend(backend, p.threads, ProfileSettings(**settings).timing())
    return profile(model, x, backend=be, threads=p.threads, path=path, progress=False, name=model_name,
                   **settings)


class Context:
    """Everything the cells of one (model, task, seed) share: data, dense model, table, graph.

    Building it trains the dense model and profiles the table the first time (both cached on disk).
    """

    def __init__(self, model_name: str, task: str, seed: int, p: Preset, backend: str = "torch-cpu") -> None:
        from halp.graph import build_graph

        p = p.for_model(model_name)
        self.model_name, self.task, self.seed, self.p = model_name, task, seed, p
        self.train_loader, self.test_loader, self.info = loaders(task, p, seed)
        self.dense, self.dense_accuracy = dense_model(model_name, task, p, seed)
        self.x = example_input(self.info)
        self.table = latency_table(self.dense, model_name, self.x, backend, p)
        self.graph = build_graph(self.dense, self.x)
        self.steps_per_epoch = len(self.train_loader)

    def schedule(self, steps: int | None = None) -> tuple[int, int]:
        return schedule(self.p, self.steps_per_epoch, steps)

    def prune_config(self, steps: int | None = None, **fields: Any) -> Any:
        """A PruneConfig with the preset's schedule and stem policy (``fields`` override)."""
        from halp.config import PruneConfig

        k, interval = self.schedule(steps)
        return PruneConfig(**{"steps": k, "interval": interval, "protect_stem": self.p.protect_stem, **fields})

    def model_dir(self, experiment: str, **cell: Any) -> Path:
        """Where a cell's slim model is kept (gitignored; measured again by later cells)."""
        parts = [self.model_name, self.task, f"s{self.seed}", self.p.name]
        parts += [f"{k}{v}" for k, v in sorted(cell.items())]
        return RESULTS / "models" / experiment / "-".join(str(x) for x in parts)

    def run_pruner(self, make_pruner: Callable[[nn.Module], Any], out: Path) -> dict[str, Any]:
        """Prunes a copy of the dense model during the preset's fine-tuning; saves and scores the slim model.

        ``make_pruner(model)`` builds the pruner on the copy (it may raise ValueError for an unreachable
        budget before any training).
        """
        from halp.serialize import attach_spec, save_pruned
        from halp.train import evaluate

        model = copy.deepcopy(self.dense)
        pruner = make_pruner(model)
        ft = finetune(model, self.train_loader, self.p, self.seed, pruner)
        slim = pruner.finalize().eval()
        widths = pruner.widths()
        attach_spec(slim, widths, tuple(self.x.shape))
        acc = evaluate(slim, self.test_loader)["accuracy"]
        save_pruned(slim, out, meta={"accuracy": acc})
        report = pruner.report()
        return {"accuracy": acc, "widths": widths, "predicted_ms": report["predicted_ms"],
                "dense_predicted_ms": report["dense_ms"], "group_steps": report["group_steps"],
                "step_targets_ms": report["targets_ms"], **model_stats(self.graph, widths), **ft,
                **({"loop_measured_ratios": [h.get("measured_ratio") for h in report["steps"]]}
                   if getattr(pruner, "feedback", None) is not None else {})}

    def evaluate(self, model: nn.Module) -> float:
        from halp.train import evaluate

        return float(evaluate(model.eval(), self.test_loader)["accuracy"])


def load_slim(path: Path) -> nn.Module:
    from halp.serialize import load_pruned

    return load_pruned(path).eval()


# ----------------------------------------------------------------------------- fine-tuning


class _PrunerHooks:
    def __init__(self, pruner: Any) -> None:
        self.pruner = pruner

    def after_backward(self, step: int) -> None:
        self.pruner.step()

    def after_optimizer_step(self, step: int) -> None:
        self.pruner.apply_masks()


def schedule(p: Preset, steps_per_epoch: int, steps: int | None = None) -> tuple[int, int]:
    """``(k, interval)`` spreading ``k`` pruning steps over ``p.prune_span`` of the fine-tuning."""
    k = p.steps if steps is None else steps
    total = p.finetune_epochs * steps_per_epoch
    interval = max(1, int(p.prune_span * total) // k)
    if k * interval > total:
        raise ValueError(f"{k} pruning steps do not fit in {total} fine-tuning iterations; add epochs")
    return k, interval


def finetune(model: nn.Module, train_loader: Any, p: Preset, seed: int, pruner: Any = None) -> dict[str, Any]:
    """Fine-tunes ``model`` in place with the preset's budget; ``pruner`` (if any) prunes during it."""
    from halp.train import train

    model.train()
    result = train(model, train_loader, train_config(p, seed, dense=False),
                   hooks=_PrunerHooks(pruner) if pruner is not None else None, progress=False)
    if pruner is not None and not pruner.done:
        raise RuntimeError(f"the pruner finished only {pruner.pruning_step}/{pruner.config.steps} steps")
    last = result["history"][-1] if result["history"] else {}
    return {"train_loss": last.get("train_loss"), "train_accuracy": last.get("train_accuracy"),
            "train_seconds": round(result["seconds"], 1), "nonfinite_steps": result["nonfinite_steps"]}


def calibration_batches(train_loader: Any, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n`` minibatches of epoch 0 (the data the one-shot scores are computed on)."""
    from halp.data.sampler import epoch_batches

    out = []
    for x, y in epoch_batches(train_loader, 0, 0):
        out.append((x, y))
        if len(out) >= n:
            break
    return out


# ----------------------------------------------------------------------------- measuring


def measure(models: list[nn.Module], x: torch.Tensor, p: Preset, backend: str = "torch-cpu",
            repeats: int | None = None) -> list[float]:
    """Latencies (ms; halp's statistic) of ``models`` measured interleaved."""
    from halp.latency import measure_many

    be = timing_backend(backend, p.threads)
    stats = measure_many([m.eval() for m in models], x, backend=be, threads=p.threads,
                         repeats=repeats or p.measure_repeats, rounds=p.measure_rounds)
    return [s.latency_ms for s in stats]


def measure_joint(models: list[nn.Module], x: torch.Tensor, p: Preset, backend: str = "torch-cpu",
                  passes: int = 3) -> list[float]:
    """The reported latencies: ``passes`` separate interleaved measurements, the median per model.

    One pass still wanders by a few percent on a busy machine; the median of three passes
    taken minutes apart in the same process is what the results report."""
    runs = [measure(models, x, p, backend, repeats=2 * p.measure_repeats) for _ in range(passes)]
    return [float(sorted(col)[len(col) // 2]) for col in zip(*runs)]


def model_stats(graph: Any, widths: Mapping[str, int]) -> dict[str, int]:
    from halp.flops import count_macs, count_params

    return {"flops": int(count_macs(graph, widths)), "params": int(count_params(graph, widths))}


def slim_copy(model: nn.Module, graph: Any, widths: Mapping[str, int]) -> nn.Module:
    """A slim model of ``model`` at ``widths`` (first channels kept: for latency only)."""
    from halp.latency.calibrate import slim_variant

    return slim_variant(model, graph, widths).eval()


# ----------------------------------------------------------------------------- run metadata and docs


def machine(p: Preset) -> dict[str, Any]:
    from halp.latency.backends import cpu_model_name

    return {"cpu": cpu_model_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": p.threads,
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def setup(p: Preset, quiet: bool = False) -> None:
    """Logging and threads for a benchmark script: training and measuring use ``p.threads``."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("halp.staircase", "halp.grouping", "halp.pruner"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(p.threads)


def add_common_args(parser: Any) -> None:
    """``--quick`` / ``--threads`` / ``--quiet``, the same in every experiment script."""
    parser.add_argument("--quick", action="store_true", help="the small preset (what docs/results.md reports)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for training and measuring (default: the preset's)")
    parser.add_argument("--quiet", action="store_true", help="warnings only")
    parser.add_argument("--smoke", action="store_true", help=argparse_suppress())
    parser.add_argument("--remeasure", action="store_true",
                        help="forget the joint latency measurements of this preset and take them again")


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


def cells_path(experiment: str, p: Preset) -> Path:
    """Where an experiment keeps the finished cells of a preset."""
    return RESULTS / "cells" / f"{experiment}-{p.name}.json"


def open_cells(experiment: str, p: Preset, remeasure: bool = False, measure_key: str = "measure", *,
               ablation: bool = False) -> CellStore:
    """The experiment's cell store for preset ``p``; ``remeasure`` forgets the joint latency measurements
    (cells keyed by ``measure_key``) of the models, tasks and seeds this run covers (the ablation grid when
    ``ablation``), so that they are taken again. Other cells' measurements stay: taking them again would need
    their dense models, which this machine may not have."""
    store = CellStore(cells_path(experiment, p), experiment)
    if remeasure:
        models, tasks, seeds = ((p.ablation_models, (p.ablation_task,), p.ablation_seeds) if ablation
                                else (p.models, p.tasks, p.seeds))
        store.drop(lambda c: measure_key in c and c.get("preset") == p.name and c.get("model") in models
                   and c.get("task") in tasks and c.get("seed") in seeds)
    return store


def preset_from_args(args: Any) -> Preset:
    return preset(args.quick, args.threads, smoke=getattr(args, "smoke", False))


def fmt(value: float | None, digits: int = 2, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.{digits}f}" if pct else f"{value:.{digits}f}"


def mean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def std(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return 0.0
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


__all__ = [
    "CellStore", "FULL", "replace", "cells_path", "open_cells", "Match", "Preset", "QUICK", "RESULTS", "ROOT", "add_common_args", "calibration_batches",
    "dense_accuracy", "dense_model", "example_input", "record_dense", "finetune", "latency_table", "loaders", "machine", "match_knob",
    "measure", "measure_joint", "model_stats", "preset", "schedule", "setup", "slim_copy", "write_json",
]
