"""A whole HALP run from one recipe: data, dense model, table, pruning with fine-tuning, slim model, report.

``halp prune`` and ``halp demo`` are thin wrappers around :func:`run`. Every stage leaves its result in
the output directory (dense model, table, checkpoints, slim model) so a rerun after a kill resumes from
the last checkpoint, and a finished stage is never redone.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from halp.config import PruneConfig
from halp.train import TrainConfig

log = logging.getLogger(__name__)

METHODS = ("halp", "uniform", "taylor-flops")
TASKS = ("classification", "detection")


@dataclass(frozen=True)
class Recipe:
    """Everything one pruning run needs (a YAML file or CLI flags map onto it one to one).

    Attributes:
        model: a model name (``halp.models.list_models()``: the zoo's, an alias, or a library model such
            as ``torchvision:resnet50``, ``timm:resnet18``) or a directory written by ``halp.save_pruned``.
        weights: a local state dict of that architecture (``.pth``/``.pt``, loaded with
            ``weights_only=True``, or ``.safetensors``) to start from; None trains the dense model first (``dense_train``) or
            reuses ``<out>/dense`` from an earlier run.
        task: ``classification`` or ``detection`` (a torchvision SSD on a detection data set such as
            ``shapes-voc`` or ``voc``; see :mod:`halp.detection.run`).
        data: a data set name (``halp.data.list_datasets()``); ``data_root`` its folder; ``data_kwargs``
            options of its builder (e.g. ``n_train`` for ``shapes-voc``).
        batch: the deployment batch the latency table and budget refer to.
        backend, threads: where latency is profiled and measured.
        table: a latency table file; None profiles this machine now into ``<out>/table.json``.
        profile: extra :class:`halp.latency.ProfileSettings` fields for that profiling run.
        method: ``halp`` (the knapsack) or a baseline: ``uniform``, ``taylor-flops`` (with ``flops_target``).
        prune: :class:`PruneConfig` fields; train: :class:`halp.train.TrainConfig` fields for fine-tuning.
        dense_train: TrainConfig fields for training the dense model when no weights are given.
        corrections: after the schedule, the slim model is measured against the dense one on this device;
            when the measured ratio misses the budget by more than ``correction_tolerance``, up to this many
            correction steps prune further (target scaled by the measured miss) and fine-tune
            ``correction_epochs`` more. 0 trusts the table alone (the paper's behaviour).
        feedback_steps: the last this many pruning steps measure the slim models the solver proposes on
            this device and move their targets by the measured miss (:mod:`halp.feedback`), so the schedule
            ends within ``[(1 - feedback_band), 1] x`` the budget as measured; None (the default): every
            step, so a table that is off by 10% is found out at the first step, not in the last two with
            little fine-tuning left; 0 trusts the table. HALP only (the baselines keep their own targets).
        measure_repeats, measure_seconds: the budget's measurements (the closed loop, the check after the
            schedule, the report) time each model for at least ``measure_repeats`` forwards and at least
            ``measure_seconds`` (estimated from the table's dense latency; at most 1000 forwards): a ratio
            of two small models measured in 0.1 s on a shared machine scatters by ±3%, more than the
            budget's band allows.
        out: the output directory.
    """

    model: str = "digits_resnet"
    weights: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    task: str = "classification"
    data: str = "digits"
    data_root: str | None = None
    data_kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch: int = 1
    backend: str = "torch-cpu"
    threads: int | None = None
    table: str | None = None
    profile: Mapping[str, Any] = field(default_factory=dict)
    method: str = "halp"
    flops_target: float = 0.5
    prune: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    dense_train: Mapping[str, Any] = field(default_factory=lambda: {"epochs": 5})
    measure_repeats: int = 50
    measure_seconds: float = 1.0
    corrections: int = 1
    correction_tolerance: float = 0.02
    correction_epochs: int = 2
    feedback_steps: int | None = None
    feedback_band: float = 0.05
    plots: bool = True
    out: str = "runs/halp"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "detection" and self.method == "taylor-flops":
            raise ValueError("method taylor-flops is not available for --task detection; use halp or uniform")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be a positive integer, got {self.batch!r}")
        if not isinstance(self.corrections, int) or self.corrections < 0:
            raise ValueError(f"corrections must be a non-negative integer, got {self.corrections!r}")
        if not 0 <= self.correction_tolerance < 1:
            raise ValueError(f"correction_tolerance must be in [0, 1), got {self.correction_tolerance}")
        steps = self.feedback_steps
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
            raise ValueError(f"feedback_steps must be a non-negative integer (0: off) or null (every pruning "
                             f"step), got {steps!r}")
        if not isinstance(self.measure_repeats, int) or isinstance(self.measure_repeats, bool) or self.measure_repeats < 1:
            raise ValueError(f"measure_repeats must be a positive integer, got {self.measure_repeats!r}")
        if not isinstance(self.measure_seconds, (int, float)) or not 0 <= self.measure_seconds <= 60:
            raise ValueError(f"measure_seconds must be between 0 and 60 seconds, got {self.measure_seconds!r}")
        if not 0 < self.feedback_band < 1:
            raise ValueError(f"feedback_band must be a fraction in (0, 1), e.g. 0.05, got {self.feedback_band!r}")
        if not 0 < self.flops_target <= 1:
            raise ValueError(f"flops_target must be in (0, 1], got {self.flops_target}")
        # validate the nested configs now, not after an hour of dense training
        self.prune_config()
        self.train_config()
        self.dense_train_config()

    def prune_config(self) -> PruneConfig:
        return PruneConfig.from_dict(dict(self.prune))

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(dict(self.train))

    def dense_train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(dict(self.dense_train))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Recipe":
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read the recipe {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"the recipe {path} must be a mapping of keys to values, got {type(data).__name__}")
        return cls.from_dict(data)


def load_weights(model: nn.Module, path: str) -> None:
    """Loads a local state dict (``.safetensors``, or ``.pth``/``.pt`` with ``weights_only=True``), strictly.

    See :func:`halp.models.load_weights`; a file that does not fit is a ValueError naming the keys.
    """
    from halp.models.weights import load_weights as load

    load(model, path)


def atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
