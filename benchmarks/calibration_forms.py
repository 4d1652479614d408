"""Which calibration form predicts held-out networks best? Offline, from the fidelity suite's measurements.

For every cell of ``benchmarks/fidelity_suite.py`` (its JSON and its table), each calibration form of
:mod:`halp.latency.fit` is fitted to the table's calibration networks as measured in the cell's passes
and scored on the cell's *other* networks (the random prunings): Pearson r of the reductions, median and
p90 absolute relative error. Nothing is measured here; the numbers come from the stored measurements.

    python benchmarks/calibration_forms.py                 # every finished cell
    python benchmarks/calibration_forms.py --no-docs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import halp
from halp.latency import fit
from halp.latency.predict import split_features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import update_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CELLS = ROOT / "benchmarks" / "results" / "fidelity"
TITLE = "## Calibration forms on held-out networks (issue 13)"


def score_cell(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    out = data["results"][0]
    table_path = Path(out["table"])
    table = halp.LatencyTable.load(table_path if table_path.is_absolute() else ROOT / table_path)
    torch.manual_seed(0)
    model = halp.models.create(out["model"]).eval()
    graph = halp.build_graph(model, torch.randn(*out["input"]))
    widths = {s["label"]: s["widths"] for s in table.calibration.samples}
    cal = out["calibrations"].get("session", out["calibrations"]["profiled"])["samples"]
    fc = np.array([split_features(graph, table, widths.get(s["label"], {})) for s in cal])
    yc = np.array([s["measured_ms"] for s in cal])
    fv = np.array([split_features(graph, table, v["widths"]) for v in out["variants"]])
    yv = np.array([v["measured_ms"] for v in out["variants"]])
    fd, yd = np.array(split_features(graph, table, {})), out["dense"]["measured_ms"]
    rows = []
    for form in fit.CALIBRATION_FORMS:
        coef = fit._solve(form, *fc.T, yc)
        pv, pd = fit.calibrated(coef, *fv.T), fit.calibrated(coef, *fd)
        rel = np.abs(pv - yv) / yv
        rows.append({"cell": data.get("cell", path.stem), "form": form, "coefficients": [float(c) for c in coef],
                     "r": float(np.corrcoef(pd - pv, yd - yv)[0, 1]), "median": float(np.median(rel)),
                     "p90": float(np.percentile(rel, 90))})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    rows = [r for p in sorted(CELLS.glob("*.json")) for r in score_cell(p)]
    lines = [TITLE, "", "Command: `python benchmarks/calibration_forms.py` (no measurement: the fidelity suite's "
             "stored timings, each form fitted to the calibration networks and scored on the random prunings)", "",
             "| cell | " + " | ".join(f"{f}: r / median / p90" for f in fit.CALIBRATION_FORMS) + " |",
             "|---|" + "---|" * len(fit.CALIBRATION_FORMS)]
    for cell in dict.fromkeys(r["cell"] for r in rows):
        got = {r["form"]: r for r in rows if r["cell"] == cell}
        lines.append(f"| {cell} | " + " | ".join(
            f"{got[f]['r']:.3f} / {100 * got[f]['median']:.1f}% / {100 * got[f]['p90']:.1f}%" for f in fit.CALIBRATION_FORMS)
            + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / "calibration_forms.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    if not args.no_docs:
        update_results(TITLE, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
