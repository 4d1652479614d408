"""What HALP's allocation on a detector rides on: the importance's minibatches, or the latency table?

One dense detector of ``benchmarks/detection.py`` (its ``--work`` folder), one budget, one-shot: the
importance of ``--sets`` disjoint sets of ``--interval`` minibatches (one pruning step's worth in the
benchmark), and every table in ``--tables`` (profiles of the same network, e.g. taken minutes apart).
Each (set, table) pair gets HALP's knapsack widths at the budget. The spread between sets under one table
is what the importance's sampling noise moves; the spread between tables under one set is what the
table's profiling noise moves. Both are reported as the mean |width difference| in fractions of each
group's dense width, with the groups each choice cuts to the floor and each table's prediction of the
other tables' choices. ``--refit`` first refits every table's calibration from its stored samples with
this halp's form selection. No timing: this runs beside training.

    python benchmarks/detection_allocation.py --work runs/detection7 --tables runs/detection7/table.json \\
        runs/detection7b/table.json --out benchmarks/results/detection_allocation.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection as bench  # noqa: E402

import halp  # noqa: E402
from halp.config import PruneConfig  # noqa: E402
from halp.detection import DetectorCore  # noqa: E402
from halp.detection.train import detection_loss  # noqa: E402
from halp.graph import build_graph  # noqa: E402
from halp.latency import LatencyTable  # noqa: E402
from halp.latency.calibrate import refit  # noqa: E402

log = logging.getLogger("benchmarks.detection_allocation")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="a benchmarks/detection.py work folder (dense-seedS.ckpt)")
    p.add_argument("--tables", type=Path, nargs="+", required=True, help="latency tables of the same dense network")
    p.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=0.6)
    p.add_argument("--sets", type=int, default=4, help="disjoint importance sets")
    p.add_argument("--interval", type=int, default=8, help="minibatches per set")
    p.add_argument("--min-fraction", type=float, default=bench.MIN_FRACTION)
    p.add_argument("--min-saving", type=float, default=PruneConfig.min_saving)
    p.add_argument("--refit", action="store_true",
                   help="refit every table's calibration from its stored end-to-end samples with this halp's form "
                        "selection first (halp.latency.calibrate.refit; measures nothing)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/detection_allocation.json"))
    a = p.parse_args(argv)
    for t in a.tables:
        if not t.is_file():
            raise ValueError(f"no latency table at {t}: profile one with benchmarks/detection.py --phase profile")
    if a.sets < 2 and len(a.tables) < 2:
        raise ValueError("nothing to compare: give --sets >= 2 or two --tables")
    return a


def _spread(x: dict[str, float], y: dict[str, float]) -> float:
    common = sorted(set(x) & set(y))
    return float(np.mean([abs(x[g] - y[g]) for g in common]))


def allocations(a: argparse.Namespace) -> dict[str, Any]:
    """Every (importance set, table) pair's one-shot HALP widths at ``a.budget``, as fractions of dense."""
    bench_args = bench._args(["--phase", "halp", "--work", str(a.work), "--model", a.model,
                              "--batch-size", str(a.batch_size)] + (["--data-root", a.data_root] if a.data_root else []))
    tr, _, info = bench._loaders(bench_args)
    det = bench._dense(bench_args, a.seed, info).train()
    core = DetectorCore(det)
    cfg = PruneConfig(target=a.budget, steps=1, interval=a.interval, min_fraction=a.min_fraction,
                      min_saving=a.min_saving)
    tables = {str(t): LatencyTable.load(t) for t in a.tables}
    if a.refit:
        graph = build_graph(core, (bench._example(bench_args),))
        for t in tables.values():
            refit(t, graph)
    pruners = {name: halp.Pruner(core, bench._example(bench_args), t, cfg) for name, t in tables.items()}
    need = a.sets * a.interval
    batches = itertools.islice(itertools.chain.from_iterable(iter(tr) for _ in range(need)), need)
    out: dict[str, Any] = {"choices": [], "tables": {}}
    for name, p in pruners.items():
        c = p.table.calibration
        out["tables"][name] = {"dense_ms": p.dense_ms, "left_whole": sorted(p.negligible),
                               "calibration": {"form": c.method, "a": c.a, "b": c.b, "c": c.c, "d": c.d, "e": c.e,
                                               "loo": c.loo_rel_rmse}}
    for i, (images, targets) in enumerate(batches):
        det.zero_grad()
        sum(detection_loss(det, images, targets, torch.device("cpu")).values()).backward()
        for p in pruners.values():
            p.importance.accumulate()
        if (i + 1) % a.interval:
            continue
        for name, p in pruners.items():
            q = copy.deepcopy(p)  # its own model copy: the shared detector stays dense
            r = q.prune_now(target_ms=a.budget * q.dense_ms)
            frac = {g.name: r.widths[g.name] / g.channels for g in q.groups}
            floor = [g.name for g in q.groups if r.widths[g.name] <= max(1, round(a.min_fraction * g.channels))]
            out["choices"].append({"set": i // a.interval, "table": name, "widths": dict(r.widths), "fractions": frac,
                                   "at_floor": floor,
                                   "predicted_by": {n: o.predict(r.widths) / o.dense_ms for n, o in pruners.items()}})
            log.info("set %d, table %s: %d groups at the floor", i // a.interval, name, len(floor))
        for p in pruners.values():
            p.importance.reset()
    return out


def summary(out: dict[str, Any]) -> dict[str, Any]:
    """Mean |width difference| between importance sets (same table) and between tables (same set)."""
    ch = out["choices"]
    by_sets = [_spread(x["fractions"], y["fractions"]) for x, y in itertools.combinations(ch, 2)
               if x["table"] == y["table"]]
    by_tables = [_spread(x["fractions"], y["fractions"]) for x, y in itertools.combinations(ch, 2)
                 if x["set"] == y["set"]]
    return {"importance_sets": {"mean": float(np.mean(by_sets)), "max": float(np.max(by_sets))} if by_sets else None,
            "tables": {"mean": float(np.mean(by_tables)), "max": float(np.max(by_tables))} if by_tables else None,
            "at_floor": {c["table"] + f"#{c['set']}": len(c["at_floor"]) for c in ch}}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = _args(argv)
    torch.set_num_threads(1)
    out = allocations(a)
    out["summary"] = summary(out)
    out["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if k != "tables"}
    out["settings"]["tables"] = [str(t) for t in a.tables]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    s = out["summary"]
    for kind in ("importance_sets", "tables"):
        if s[kind]:
            log.info("widths across %s: mean |difference| %.3f of the dense width (max pair %.3f)", kind.replace("_", " "),
                     s[kind]["mean"], s[kind]["max"])
    for c in out["choices"]:
        others = ", ".join(f"{v:.3f}" for v in c["predicted_by"].values())
        log.info("set %d table %s: predicted by each table at %s x dense; %d at the floor", c["set"], c["table"],
                 others, len(c["at_floor"]))


if __name__ == "__main__":
    main()
