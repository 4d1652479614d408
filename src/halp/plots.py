"""Figures. matplotlib is imported only when a figure is drawn (``pip install halp[plots]``), and
figures are built on ``matplotlib.figure.Figure`` directly so pyplot's global state is never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from halp.latency.table import LatencyTable


def _figure(**kwargs: Any) -> "Figure":
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ValueError("plotting needs matplotlib: `pip install halp[plots]`") from exc
    return Figure(**kwargs)


def _save(fig: "Figure", path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(str(path), dpi=150, bbox_inches="tight")


def layer_staircase(table: "LatencyTable", layer: str) -> dict[str, np.ndarray]:
    """Latency (median, noise) and FLOPs against output channels at full input width for one layer:
    the coarse grid's full-cin row merged with the fine sweep."""
    from halp.flops import layer_macs
    from halp.graph.types import Layer

    try:
        e = table.entry_by_layer_name(layer)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    if e.depthwise:
        ch, med, noise = e.cout, np.asarray(e.median_ms), np.asarray(e.noise_ms)
    else:
        row = int(np.searchsorted(e.cin, e.cin_full))
        ch, med, noise = e.cout, e.median_ms[row], e.noise_ms[row]
    points = {int(c): (float(m), float(n)) for c, m, n in zip(ch, med, noise)}
    points.update({int(c): (float(m), float(n)) for c, m, n in zip(e.fine_cout, e.fine_median_ms, e.fine_noise_ms)})
    channels = np.array(sorted(points), dtype=np.int64)
    probe = Layer(layer, e.shape, ((None, e.cin_full),), ((None, e.cout_full),), e.in_repeat)
    flops = np.array([2 * e.shape.batch * layer_macs(probe, c if e.depthwise else e.cin_full, c) for c in channels])
    return {
        "channels": channels,
        "median_ms": np.array([points[c][0] for c in channels]),
        "noise_ms": np.array([points[c][1] for c in channels]),
        "flops": flops.astype(np.float64),
    }


def plot_layer_latency(
    table: "LatencyTable", layer: str, path: str | Path | None = None, *, fine_only: bool = False
) -> "Figure":
    """Latency and FLOPs of one layer against its output channels (the paper's Fig. 9).

    FLOPs fall linearly with channels while latency moves in steps; the two y-axes make the mismatch
    visible. Error bars are the measured interquartile range.

    Args:
        table: a profiled latency table.
        layer: a layer name of the profiled model (``table.layer_names()``).
        path: write the figure there (PNG, PDF, SVG... by extension).
        fine_only: show only the fine sweep near full width (where the staircase is resolved).
    """
    data = layer_staircase(table, layer)
    e = table.entry_by_layer_name(layer)
    ch, med, noise, flops = data["channels"], data["median_ms"], data["noise_ms"], data["flops"]
    if fine_only and e.fine_cout.size:
        m = ch >= e.fine_cout[0]
        ch, med, noise, flops = ch[m], med[m], noise[m], flops[m]
    fig = _figure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    ax.errorbar(ch, med, yerr=noise / 2, fmt="o-", ms=3, lw=1.2, color="tab:blue", ecolor="tab:gray",
                capsize=0, label="latency (median, IQR)")
    ax.set_xlabel("output channels")
    ax.set_ylabel(f"latency (ms), {table.backend}", color="tab:blue")
    ax.tick_params(axis="y", labelcolor="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(ch, flops / 1e9, "--", color="tab:orange", lw=1.2, label="FLOPs")
    ax2.set_ylabel("GFLOPs", color="tab:orange")
    ax2.tick_params(axis="y", labelcolor="tab:orange")
    s = e.shape
    what = f"depthwise {s.kernel[0]}x{s.kernel[1]}" if e.depthwise else (
        "linear" if s.kind == "linear" else f"{s.kernel[0]}x{s.kernel[1]}/{s.stride[0]} conv, cin={e.cin_full}")
    ax.set_title(f"{layer}: {what}, {s.in_hw[0]}x{s.in_hw[1]}, batch {s.batch}, {table.threads} thread(s)\n"
                 f"{table.meta.get('device')}", fontsize=9)
    ax.grid(alpha=0.3)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    _save(fig, path)
    return fig


def plot_schedule(report: dict[str, Any], path: str | Path | None = None) -> "Figure":
    """Predicted latency after every pruning step against its target (knapsack estimate too)."""
    steps = report["steps"]
    fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot()
    x = [s["step"] for s in steps]
    ax.plot([0, *x], [report["dense_ms"], *[s["target_ms"] for s in steps]], "k--", label="target")
    ax.plot(x, [s["knapsack_ms"] for s in steps], "o", mfc="none", label="knapsack estimate (frozen widths)")
    ax.plot(x, [s["predicted_ms"] for s in steps], ".-", label="re-predicted (all widths updated)")
    measured = report.get("pruned", {}).get("latency_ms")
    if measured is not None:
        ax.axhline(measured, color="tab:red", lw=0.8, label=f"measured slim model ({measured:.3g} ms)")
    ax.set_xlabel("pruning step")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency per pruning step")
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_widths(
    report: dict[str, Any], path: str | Path | None = None, steps: dict[str, int] | None = None,
    others: dict[str, dict[str, int]] | None = None,
) -> "Figure":
    """Kept channels per group against the dense width (the paper's Fig. 12), optionally with each group's
    latency-step edges marked and other methods' widths beside HALP's (Fig. 8)."""
    dense = report["dense_widths"]
    names = list(dense)
    fig = _figure(figsize=(max(6, 0.3 * len(names) + 2), 4))
    ax = fig.add_subplot()
    idx = np.arange(len(names))
    series = {report.get("method", "halp"): report["widths"], **(others or {})}
    width = 0.8 / (len(series) + 1)
    ax.bar(idx - 0.4 + width / 2, [dense[n] for n in names], width, color="0.85", label="dense")
    for i, (label, widths) in enumerate(series.items(), start=1):
        ax.bar(idx - 0.4 + width * (i + 0.5), [widths.get(n, dense[n]) for n in names], width, label=label)
    if steps:
        for i, n in enumerate(names):
            s = steps.get(n, 1)
            if 1 < s < dense[n]:
                for edge in range(s, dense[n] + 1, s):
                    ax.plot([i - 0.45, i + 0.45], [edge, edge], color="k", lw=0.3, alpha=0.5)
    ax.set_xticks(idx)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("channels kept")
    ax.set_title("kept channels per group" + (" (lines: latency-step edges)" if steps else ""))
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """The figures of a pruning run: latency per step against its target, kept channels per group."""
    out = Path(out_dir)
    paths = [out / "latency_per_step.png", out / "widths.png"]
    plot_schedule(report, paths[0])
    plot_widths(report, paths[1], steps=report.get("group_steps"))
    return paths
