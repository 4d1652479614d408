"""Typed, validated pruning configuration.

One frozen dataclass carries every knob of a HALP run so that a recipe, a checkpoint and a report all say
exactly what was done. Validation happens at construction (``ValueError`` naming the field and a fix), long
before any training starts, and the config round-trips through JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

IMPORTANCE_KINDS = ("taylor", "weight-taylor", "magnitude")


@dataclass(frozen=True)
class PruneConfig:
    """How to prune: the budget, the schedule, the importance and the grouping.

    Attributes:
        target: final latency as a fraction of the dense latency predicted by the table
            (0.5 = HALP-50%). Ignored when ``target_ms`` is given.
        target_ms: an absolute budget in milliseconds, as the table predicts it.
        steps: number of pruning steps ``k``; targets fall exponentially from dense to the budget.
        interval: minibatches ``r`` of importance accumulation between pruning steps.
        start: minibatches to train before importance accumulation for the first step begins.
        importance: ``"taylor"`` (BatchNorm Taylor, weight-based where a group has no BN),
            ``"weight-taylor"`` or ``"magnitude"``.
        grouping: ``"auto"`` (each group's latency step from the table) or a fixed channel block size.
        grouping_overrides: ``{pattern: size}``; fnmatch patterns over group or layer names win over ``grouping``.
        allow_layer_removal: let a group shrink to zero channels where the graph says it may (a residual
            branch). Off by default: a vanished layer is rarely what users want.
        protect: fnmatch patterns of group or layer names never pruned.
        protect_stem: protect groups produced by a layer reading the network input.
        min_saving: a group whose narrowest allowed width, all others dense, is predicted to save less than
            this fraction of the dense latency is not pruned (0 turns the rule off). Such a group buys no
            latency a device can see, and the groups that fall under it are those first-order importance
            misjudges: squeeze-and-excitation squeezes on a pooled 1x1 map, gated by a sigmoid. SSDlite
            lost 1.4-2.6 points mAP@0.5 when HALP cut them (docs/results.md).
        min_channels: the fewest channels any group keeps.
        min_fraction: the smallest fraction of its dense width any group keeps.
        refine: after each knapsack solve, re-predict with every width updated and re-solve so the
            predicted latency lands in ``[1 - refine_tolerance, 1] x target`` where the grid allows.
        refine_tolerance: the band under the target that refinement aims for.
        solver_resolution: the knapsack's cost-grid cell in ms (None: automatic, <=0.1% of capacity).
    """

    target: float = 0.5
    target_ms: float | None = None
    steps: int = 30
    interval: int = 40
    start: int = 0
    importance: str = "taylor"
    grouping: str | int = "auto"
    grouping_overrides: Mapping[str, int] = field(default_factory=dict)
    allow_layer_removal: bool = False
    protect: tuple[str, ...] = ()
    protect_stem: bool = True
    min_saving: float = 0.0025
    min_channels: int = 1
    min_fraction: float = 0.0
    refine: bool = True
    refine_tolerance: float = 0.02
    solver_resolution: float | None = None

    def __post_init__(self) -> None:
        if self.target_ms is None:
            if not (0.0 < float(self.target) <= 1.0):
                raise ValueError(
                    f"target must be a fraction of the dense latency in (0, 1], got {self.target}; "
                    "use target_ms for an absolute budget"
                )
        elif not float(self.target_ms) > 0:
            raise ValueError(f"target_ms must be a positive number of milliseconds, got {self.target_ms}")
        for name in ("steps", "interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.start, int) or self.start < 0:
            raise ValueError(f"start must be a non-negative integer, got {self.start!r}")
        if self.importance not in IMPORTANCE_KINDS:
            raise ValueError(f"importance must be one of {IMPORTANCE_KINDS}, got {self.importance!r}")
        if isinstance(self.grouping, str):
            if self.grouping != "auto":
                raise ValueError(f"grouping must be 'auto' or a positive integer, got {self.grouping!r}")
        elif isinstance(self.grouping, bool) or not isinstance(self.grouping, int) or self.grouping < 1:
            raise ValueError(f"grouping must be 'auto' or a positive integer, got {self.grouping!r}")
        for pattern, size in dict(self.grouping_overrides).items():
            if not isinstance(pattern, str) or not isinstance(size, int) or size < 1:
                raise ValueError(
                    f"grouping_overrides maps name patterns to positive block sizes, got {pattern!r}: {size!r}"
                )
        object.__setattr__(self, "grouping_overrides", dict(self.grouping_overrides))
        if isinstance(self.protect, str):
            raise ValueError("protect is a list of name patterns, not a single string: use protect=('layer1.*',)")
        object.__setattr__(self, "protect", tuple(self.protect))
        if not isinstance(self.min_channels, int) or self.min_channels < 0:
            raise ValueError(f"min_channels must be a non-negative integer, got {self.min_channels!r}")
        if isinstance(self.min_saving, bool) or not (0.0 <= float(self.min_saving) < 1.0):
            raise ValueError(f"min_saving must be a fraction of the dense latency in [0, 1), got {self.min_saving!r}")
        if not (0.0 <= float(self.min_fraction) < 1.0):
            raise ValueError(f"min_fraction must be in [0, 1), got {self.min_fraction}")
        if not (0.0 <= float(self.refine_tolerance) < 1.0):
            raise ValueError(f"refine_tolerance must be in [0, 1), got {self.refine_tolerance}")
        if self.solver_resolution is not None and not float(self.solver_resolution) > 0:
            raise ValueError(f"solver_resolution must be positive ms or None, got {self.solver_resolution}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["protect"] = list(self.protect)
        out["grouping_overrides"] = dict(self.grouping_overrides)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PruneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PruneConfig field(s) {unknown}; known fields: {sorted(known)}")
        kwargs = dict(data)
        if "protect" in kwargs:
            kwargs["protect"] = tuple(kwargs["protect"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> "PruneConfig":
        return cls.from_dict(json.loads(text))


#: The PruneConfig fields ``halp prune`` also takes as flags (``--target-ms`` for ``target_ms``): the CLI reads
#: them from its arguments, and a refused resume names the flags that restore a checkpoint's config.
CLI_FIELDS: tuple[str, ...] = ("target", "target_ms", "steps", "interval", "grouping", "min_fraction", "min_saving")
