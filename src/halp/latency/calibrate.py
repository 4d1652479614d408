"""Calibration: from the sum of isolated timings to the latency of the whole network.

Isolated layers run with hot caches and no neighbours; in a network, producers and consumers fight
over caches, tensors are allocated, and the framework adds per-op overhead. We measured the sum of
isolated layers at 60–84% of the real latency of a depthwise-separable net, varying with the widths.
So profiling ends by measuring the dense model and a few random slim variants end to end, interleaved,
and fitting ``measured ≈ a·Σ layers + b·Σ ops + c`` (non-negative least squares, relative errors).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from halp.graph.types import ChannelGraph
from halp.latency.backends import Backend
from halp.latency.fit import fit_calibration
from halp.latency.predict import split_features
from halp.latency.store import MeasurementStore
from halp.latency.table import Calibration, LatencyTable
from halp.latency.timing import TimingSettings

logger = logging.getLogger(__name__)

#: relative spread of group widths around each calibration variant's level (see :func:`random_widths`)
CALIBRATION_JITTER = 0.3


def graph_hash(graph: ChannelGraph) -> str:
    """A short fingerprint of a graph's layers, ops and groups (names, shapes, widths)."""
    desc = [
        [(l.name, l.shape.key(), l.in_slices, l.out_slices, l.in_repeat) for l in graph.layers],
        [(o.name, o.kind, o.slices, o.hw, o.batch) for o in graph.others],
        [(g.name, g.channels, g.prunable) for g in graph.groups],
    ]
    return hashlib.sha1(json.dumps(desc, default=str).encode()).hexdigest()[:16]


def random_widths(
    graph: ChannelGraph, rng: np.random.Generator, low: float = 0.25, high: float = 1.0,
    steps: Mapping[str, int] | None = None, jitter: float | None = None,
) -> dict[str, int]:
    """Kept channels per prunable group, respecting ``min_channels`` and ``multiple_of`` (and rounded
    to ``steps[group]`` when given: the widths latency-aware pruning produces).

    Args:
        low, high: every group keeps a fraction in ``[low, high]`` of its channels.
        jitter: ``None``: each group's fraction is an independent uniform draw, so (by the law of large
            numbers over dozens of groups) every such network ends up near the same total latency.
            A number: the network first draws one level uniformly in ``[low, high]`` and each group
            keeps ``level · (1 + u)``, ``u`` uniform in ``[-jitter, jitter]`` (clipped to the range);
            widths still differ per group, but the networks span light to heavy prunings the way
            pruning to different budgets does.
    """
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"need 0 < low <= high <= 1 for random widths, got low={low}, high={high}")
    if jitter is not None and not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1] (a relative spread around the level), got {jitter}")
    level = rng.uniform(low, high) if jitter is not None else 0.0
    widths = {}
    for g in graph.prunable_groups:
        # grouped convs: a multiple of the conv groups (and of the latency step, when aligned)
        m = int(np.lcm.reduce([max(int(g.multiple_of), 1), max(int(g.blocks), 1),
                               max(int((steps or {}).get(g.name, 1)), 1)]))
        if jitter is None:
            frac = rng.uniform(low, high)
        else:
            frac = min(max(level * (1.0 + rng.uniform(-jitter, jitter)), low), high)
        w = int(round(frac * g.channels / m)) * m
        widths[g.name] = int(min(max(w, g.min_channels, m), g.channels))
    return widths


def slim_variant(model: nn.Module, graph: ChannelGraph, widths: Mapping[str, int]) -> nn.Module:
    """A physically slimmed copy of ``model`` keeping ``widths[g]`` channels of each group (which channels
    does not matter for latency; the lowest, balanced across conv groups so grouped convs accept them)."""
    from halp.surgery import keep_from_widths, prune_channels

    slim = {g: int(w) for g, w in widths.items() if int(w) < graph.group(g).channels}
    return prune_channels(model, graph, keep_from_widths(graph, None, slim))


def widths_hash(widths: Mapping[str, int]) -> str:
    return hashlib.sha1(json.dumps(sorted(widths.items())).encode()).hexdigest()[:12]


def calibration_widths(
    graph: ChannelGraph, table: LatencyTable, samples: int, low: float, rng: np.random.Generator
) -> list[dict[str, int]]:
    """The widths of ``samples`` random slim networks for the calibration (fewer if a draw keeps every
    channel), drawn from ``rng``.

    Half the networks sit on each group's latency step, which is what latency-aware pruning produces;
    half keep arbitrary widths (any other slim model a user predicts): off the step (on a CPU, off the
    vector/tile size) a layer runs markedly slower than the grid's interpolation says, and a calibration
    seen only on steps under-predicted such models by ~8% on ResNet-50. Each network prunes to its own
    level, so the fit sees light to heavy prunings and can tell the per-layer scale from the constant.
    """
    if not graph.prunable_groups:
        return []
    try:
        from halp.grouping import group_steps

        steps = group_steps(graph, table)
    except Exception as exc:  # noqa: BLE001 - calibration must not fail on a step detection problem
        logger.warning("calibration: no latency steps (%s); variants use unaligned widths", exc)
        steps = {}
    variants = [random_widths(graph, rng, low, steps=steps if i % 2 == 0 else None, jitter=CALIBRATION_JITTER)
                for i in range(samples)]
    return [w for w in variants if any(w[g] < graph.group(g).channels for g in w)]


def calibrate(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    graph: ChannelGraph,
    table: LatencyTable,
    backend: Backend,
    store: MeasurementStore,
    *,
    samples: int,
    low: float,
    rounds: int,
    seed: int,
    timing: TimingSettings | None = None,
    statistic: str = "median",
    on_measured: Any = None,
) -> Calibration:
    """Measure the dense model and ``samples`` random slim variants and fit the calibration."""
    variants = calibration_widths(graph, table, samples, low, np.random.default_rng(seed))
    try:
        from halp.surgery import prune_channels  # noqa: F401
    except ImportError:
        logger.warning("halp.surgery.prune_channels is unavailable: calibrating on the dense model only")
        variants = []
    gh = graph_hash(graph)
    all_widths: list[dict[str, int]] = [{}] + variants
    labels = ["dense"] + [f"variant{i}" for i in range(len(variants))]
    keys = [f"E|{gh}|{widths_hash(w)}" for w in all_widths]
    if not all(k in store for k in keys):
        models = [model] + [slim_variant(model, graph, w) for w in variants]
        saved = backend.settings
        backend.settings = timing or saved  # whole networks: fewer, longer runs than single layers
        try:
            stats = backend.time_models(models, inputs, rounds=rounds)
        finally:
            backend.settings = saved
        for key, st in zip(keys, stats):
            store.put(key, [st.summary(statistic), st.iqr_ms])
        if on_measured is not None:
            on_measured(len(keys))
    measured = [tuple(store.get(k)[:2]) for k in keys]
    return fit_samples(graph, table, [
        {"label": label, "widths": widths, "measured_ms": float(m), "noise_ms": float(n)}
        for label, widths, (m, n) in zip(labels, all_widths, measured)
    ])


def fit_samples(graph: ChannelGraph, table: LatencyTable, samples: list[dict[str, Any]]) -> Calibration:
    """Fit the calibration to end-to-end measurements ``samples`` (``label``, ``widths``, ``measured_ms``,
    ``noise_ms``), predicting each with ``table``'s current lookups."""
    rows = []
    for sample in samples:
        lay, ops, interp, dw = split_features(graph, table, sample["widths"])
        rows.append({"label": sample["label"], "layers_ms": lay, "ops_ms": ops, "interp_ms": interp, "depthwise_ms": dw,
                     "measured_ms": float(sample["measured_ms"]), "noise_ms": float(sample["noise_ms"]),
                     "widths": dict(sample["widths"])})
    a, b, c, d, e, method, loo = fit_calibration(
        [r["layers_ms"] for r in rows], [r["ops_ms"] for r in rows], [r["measured_ms"] for r in rows],
        [r["interp_ms"] for r in rows], [r["depthwise_ms"] for r in rows],
    )
    calib = Calibration(a, b, c, method, rows, loo, d if method == "interp" else None, e if method == "kind" else None)
    errs = [abs(calib.apply(r["layers_ms"], r["ops_ms"], r["interp_ms"], r["depthwise_ms"]) / r["measured_ms"] - 1)
            for r in rows]
    logger.info(
        "calibration (%s): measured ≈ %.3f·layers (%.3f between measured points, %.3f depthwise) + %.3f·ops + %.3f ms; "
        "max rel. error on its %d samples %.1f%%, leave-one-out %s", method, a, d, e, b, c, len(rows), 100 * max(errs),
        ", ".join(f"{k} {100 * v:.1f}%" for k, v in loo.items()),
    )
    return calib


def refit(table: LatencyTable, graph: ChannelGraph) -> Calibration:
    """Refit ``table``'s calibration from its stored end-to-end samples with the current lookup code
    (after an upgrade of halp's interpolation), measuring nothing; sets and returns it.

    Raises:
        ValueError: ``graph`` is not the graph of the model the table was profiled on.
    """
    want = (table.meta.get("model") or {}).get("graph_hash")
    if want != graph_hash(graph):
        raise ValueError("refit needs the graph of the model the table was profiled on (graph hashes differ)")
    table.calibration = fit_samples(graph, table, table.calibration.samples)
    return table.calibration
