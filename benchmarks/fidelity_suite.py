"""Latency fidelity on every benchmark model, at 1 and 2 threads, random and step-aligned widths (issue 13).

Runs ``benchmarks/latency_fidelity.py`` once per (model, size, threads, widths) cell as its own process
(optionally under a lock command, so that each cell has the machine to itself and other jobs run in
between), skips the cells whose JSON already exists (a killed suite resumes), and writes one summary
section to ``docs/results.md`` with both calibrations of every cell against the acceptance.

    LOCK="flock -x /tmp/halp-cpu.lock" python benchmarks/fidelity_suite.py            # everything
    python benchmarks/fidelity_suite.py --cells resnet18@160:1 mobilenet_v1@128:2:aligned
    python benchmarks/fidelity_suite.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import update_results  # noqa: E402
from latency_fidelity import ACCEPT  # noqa: E402
from latency_fidelity import meets as fidelity_meets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "fidelity"
#: model@size:threads[:aligned]; the models the issue names, the held-back ones go through --cells
MODELS = ("mobilenet_v1@128", "resnet18@160", "torchvision:mobilenet_v3_large@224", "torchvision:efficientnet_b0@224",
          "mobilenet_v2@224", "resnet50@224")
# random widths at 1 then 2 threads first, then widths on the latency steps
DEFAULT_CELLS = ([f"{m}:1" for m in MODELS[:4]] + [f"{m}:2" for m in MODELS[:4]]
                 + [f"{m}:{t}" for m in MODELS[4:] for t in (1, 2)]
                 + [f"{m}:{t}:aligned" for t in (1, 2) for m in MODELS])


#: what the two calibrations mean, written under the table every time the section is rebuilt
NOTE = (
    "Each cell ran alone on the machine (exclusive lock; other jobs between cells): 20 random prunings (level "
    "25-100%, jitter 0.3; *steps*: widths on the latency steps), two passes of 40 forwards in 8 rounds. *Re-taken* "
    "refits the calibration on the table's own calibration networks measured in the same passes "
    "(`halp.recalibrate`) and scores the other 20 networks; *as profiled* uses the calibration taken when the "
    "table was profiled, minutes earlier, so its misses include the machine's drift in between (section \"Latency "
    "that holds\", `benchmarks/drift.py`). Budgets are ratios to the dense model measured side by side, which is "
    "why the ratio-to-dense error is the one a budget feels."
)

def parse_cell(cell: str) -> tuple[str, int, int, bool]:
    """``"resnet18@160:1:aligned"`` → ``("resnet18", 160, 1, True)``; ``ValueError`` explains the form."""
    parts = cell.split(":")
    aligned = parts[-1] == "aligned"
    if aligned:
        parts = parts[:-1]
    try:
        threads = int(parts[-1])
        model, size = ":".join(parts[:-1]).rsplit("@", 1)
        return model, int(size), threads, aligned
    except ValueError:
        raise ValueError(f"cell {cell!r} is not MODEL@SIZE:THREADS[:aligned], e.g. resnet18@160:1:aligned") from None


def cell_json(cell: str) -> Path:
    model, size, threads, aligned = parse_cell(cell)
    safe = model.replace(":", "-")
    return OUT / f"{safe}_{size}_t{threads}{'_aligned' if aligned else ''}.json"


def run_cell(cell: str, variants: int, passes: int) -> None:
    model, size, threads, aligned = parse_cell(cell)
    out = cell_json(cell)
    tmp = OUT / "cells" / out.stem
    cmd = [sys.executable, str(ROOT / "benchmarks" / "latency_fidelity.py"), "--models", model, "--size", str(size),
           "--threads", str(threads), "--variants", str(variants), "--passes", str(passes), "--quiet", "--no-docs",
           "--out", str(tmp)] + (["--aligned"] if aligned else [])
    # every cell of one model and thread count shares its table
    tables = OUT / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    (tmp).mkdir(parents=True, exist_ok=True)
    if not (tmp / "tables").exists():
        (tmp / "tables").symlink_to(os.path.relpath(tables, tmp), target_is_directory=True)  # a clone moves
    got = sorted(tmp.glob("latency_fidelity_*.json"))  # a cell that finished after its driver was killed
    if not got:
        lock = shlex.split(os.environ.get("LOCK", ""))
        print(f"== {cell}: {' '.join(lock + cmd[1:])}", flush=True)
        subprocess.run(lock + cmd, check=True, cwd=ROOT)
        got = sorted(tmp.glob("latency_fidelity_*.json"))
    if not got:
        raise RuntimeError(f"latency_fidelity.py wrote no JSON for {cell} under {tmp}")
    data = json.loads(got[-1].read_text(encoding="utf-8"))
    data["cell"] = cell
    out.write_text(json.dumps(data, indent=1), encoding="utf-8")


def meets(m: dict[str, float]) -> bool:
    return fidelity_meets(m, ACCEPT)


def ratio_errors(r: dict, key: str) -> tuple[float, float]:
    """Median and p90 |error| of each network's latency as a fraction of dense, predicted vs measured."""
    pd, md = r["dense"][f"predicted_{key}_ms"], r["dense"]["measured_ms"]
    e = [abs((v[f"predicted_{key}_ms"] / pd) / (v["measured_ms"] / md) - 1) for v in r["variants"]]
    return float(np.median(e)), float(np.percentile(e, 90))


def report(cells: list[str]) -> str:
    rows = ["| model | input | threads | widths | dense measured / predicted as profiled (ms) | r (profiled) | "
            "median err (profiled) | p90 (profiled) | r (re-taken) | median err (re-taken) | p90 (re-taken) | "
            "ratio-to-dense err, as profiled: median / p90 | table (s) | meets, as profiled / re-taken |", "|" + "---|" * 14]
    met = {"profiled": 0, "session": 0}
    n = 0
    for cell in cells:
        path = cell_json(cell)
        if not path.exists():
            continue
        model, size, threads, aligned = parse_cell(cell)
        r = json.loads(path.read_text(encoding="utf-8"))["results"][0]
        p, s = r["profiled"], r.get("session", r["profiled"])
        n += 1
        met["profiled"] += meets(p)
        met["session"] += meets(s)
        rows.append(
            f"| {model} | {size}² | {threads} | {'steps' if aligned else 'random'} | "
            f"{r['dense']['measured_ms']:.2f} / {r['dense']['predicted_profiled_ms']:.2f} | "
            f"{p['pearson_r_reduction']:.4f} | {100 * p['median_abs_rel_error']:.2f}% | {100 * p['p90_abs_rel_error']:.2f}% | "
            f"{s['pearson_r_reduction']:.4f} | {100 * s['median_abs_rel_error']:.2f}% | {100 * s['p90_abs_rel_error']:.2f}% | "
            f"{100 * ratio_errors(r, 'profiled')[0]:.2f}% / {100 * ratio_errors(r, 'profiled')[1]:.2f}% | "
            f"{r['table_build_s']:.0f} | {'yes' if meets(p) else 'no'} / {'yes' if meets(s) else 'no'} |")
    rows.append("")
    rows.append(f"Cells meeting the acceptance (median ≤ 5%, p90 ≤ 12%, r ≥ 0.95): as profiled {met['profiled']}/{n}, "
                f"calibration re-taken in the same passes {met['session']}/{n}.")
    return "\n".join(rows)


def figure(cells: list[str], path: Path) -> None:
    """Predicted against measured latency for every finished cell, both calibrations."""
    from matplotlib.figure import Figure

    done = [c for c in cells if cell_json(c).exists()]
    if not done:
        return
    cols = min(4, len(done))
    rows = -(-len(done) // cols)
    fig = Figure(figsize=(3.6 * cols, 3.4 * rows))
    for i, cell in enumerate(done):
        r = json.loads(cell_json(cell).read_text(encoding="utf-8"))["results"][0]
        ax = fig.add_subplot(rows, cols, i + 1)
        measured = [v["measured_ms"] for v in r["variants"]] + [r["dense"]["measured_ms"]]
        for key, marker in (("profiled", "x"), ("session", "o")):
            if f"predicted_{key}_ms" in r["dense"]:
                pred = [v[f"predicted_{key}_ms"] for v in r["variants"]] + [r["dense"][f"predicted_{key}_ms"]]
                ax.scatter(measured, pred, s=12, marker=marker,
                           label="as profiled" if key == "profiled" else "re-taken")
        lim = [0, 1.05 * max(measured)]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_title(cell, fontsize=8)
        ax.set_xlabel("measured (ms)", fontsize=8)
        ax.set_ylabel("predicted (ms)", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=DEFAULT_CELLS, help="MODEL@SIZE:THREADS[:aligned]")
    ap.add_argument("--variants", type=int, default=20)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--title", default="## Latency fidelity on every benchmark model (issue 13)")
    args = ap.parse_args(argv)
    for cell in args.cells:
        parse_cell(cell)
    if not args.report_only:
        for cell in args.cells:
            if not cell_json(cell).exists():
                run_cell(cell, args.variants, args.passes)
    # the section covers every finished cell, not only those of this invocation (a resumed or partial run
    # must not drop the others from docs/results.md)
    cells = list(dict.fromkeys([*DEFAULT_CELLS, *args.cells]))
    body = report(cells)
    fig = OUT / "fidelity_suite.png"
    figure(cells, fig)
    body += f"\n\nFigure: `{fig.relative_to(ROOT)}`; data: `benchmarks/results/fidelity/*.json` (one per cell).\n\n{NOTE}"
    print(body)
    command = ('Command: `LOCK="flock -x /tmp/halp-cpu.lock" python benchmarks/fidelity_suite.py`; a cell is run '
               "once and kept (`--cells MODEL@SIZE:THREADS[:aligned]` runs chosen cells; `--report-only` rebuilds this)")
    update_results(args.title, f"{args.title}\n\n{command}\n\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
