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
