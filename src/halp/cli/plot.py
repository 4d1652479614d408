"""``halp plot``: figures from halp's files.

A latency table: one layer's latency staircase against FLOPs (the paper's Fig. 9). A pruning report
(``report.json`` of ``halp prune``/``halp demo``): latency per step against its target and kept channels per
group (Fig. 12).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plot", help="draw a figure from a table or report",
        description="Latency table: latency and FLOPs against output channels for one layer (--layer). "
                    "Pruning report: latency per step vs target and kept channels per group.",
    )
    p.add_argument("file", metavar="FILE", help="a latency table or a report.json (JSON)")
    p.add_argument("--layer", help="layer name to plot (latency tables)")
    p.add_argument("--fine-only", action="store_true", help="only the fine sweep near full width")
    p.add_argument("-o", "--output", help="image file (tables; default <FILE stem>-<layer>.png) or folder (reports; "
                   "default: the report's folder)")
    p.set_defaults(func=run)


def _kind(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg}); is it a halp table or report?") from None
    return str(data.get("format", "")) if isinstance(data, dict) else ""


def run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    kind = _kind(path)
    if kind == "halp-report":
        from halp.plots import plot_report

        report = json.loads(path.read_text(encoding="utf-8"))
        for written in plot_report(report, Path(args.output) if args.output else path.parent):
            print(f"wrote {written}")
        return 0
    if kind != "halp-latency-table":
        raise ValueError(
            f"{path} is not a file halp knows how to plot (format {kind!r}); expected a latency table or a report.json"
        )
    import halp
    from halp.plots import plot_layer_latency

    table = halp.LatencyTable.load(path)
    if not args.layer:
        raise ValueError(f"pass --layer NAME; layers in this table: {', '.join(table.layer_names())}")
    out = Path(args.output) if args.output else path.with_name(f"{path.stem}-{args.layer.replace('.', '_')}.png")
    plot_layer_latency(table, args.layer, out, fine_only=args.fine_only)
    print(f"wrote {out}")
    return 0
