"""Does one measurement of one model agree with the next? The statistic behind halp's latency, checked.

Measures each model ``--times`` times with :func:`halp.measure_latency` (its defaults: 40 forwards in 8
rounds), a pause between measurements so that they fall into different spells of a shared host, at each
thread count; reports for every statistic the spread of the repeated measurements, max / min - 1:
``latency`` (halp's: the median of all forwards), ``fastest_round`` (the median of the fastest round, halp's
statistic until issue 13 showed it catches the host's rare fast spells) and ``p10``.

    flock -x /tmp/halp-cpu.lock python benchmarks/measure_repeat.py --threads 1 2
    ... --repeats 40 120 --rounds 8 24    # longer measurements: every (repeats, rounds) pair
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

import halp

MODELS = {  # name -> (zoo name, kwargs, input)
    "digits_resnet@32": ("digits_resnet", {"num_classes": 10, "in_chans": 1}, (1, 1, 32, 32)),
    "resnet18@160": ("resnet18", {}, (1, 3, 160, 160)),
    "mobilenet_v2@224": ("mobilenet_v2", {}, (1, 3, 224, 224)),
}
STATISTICS = {"latency": lambda s: s.latency_ms, "fastest_round": lambda s: min(s.round_medians_ms),
              "p10": lambda s: s.quantile(10)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--times", type=int, default=6, help="measurements per model and thread count")
    ap.add_argument("--pause", type=float, default=3.0, help="seconds between measurements")
    ap.add_argument("--repeats", nargs="+", type=int, default=[40], help="forwards per measurement")
    ap.add_argument("--rounds", nargs="+", type=int, default=[8], help="rounds per measurement")
    ap.add_argument("--out", default="benchmarks/results/measure_repeat.json")
    args = ap.parse_args()
    results = []
    for key in args.models:
        name, kwargs, shape = MODELS[key]
        torch.manual_seed(0)
        model = halp.models.create(name, **kwargs).eval()
        x = torch.randn(*shape)
        for threads, repeats, rounds in itertools.product(args.threads, args.repeats, args.rounds):
            got = []
            for _ in range(args.times):
                got.append(halp.measure_latency(model, x, threads=threads, repeats=repeats, rounds=rounds))
                time.sleep(args.pause)
            row = {"model": key, "threads": threads, "repeats": repeats, "rounds": rounds}
            for stat, f in STATISTICS.items():
                values = [f(s) for s in got]
                row[stat] = {"ms": values, "spread": max(values) / min(values) - 1}
            results.append(row)
            print(f"| {key} | {threads} | {repeats}/{rounds} | " + " | ".join(
                f"{min(row[s]['ms']):.3f}–{max(row[s]['ms']):.3f} ms ({100 * row[s]['spread']:.1f}%)"
                for s in STATISTICS) + " |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                          "device": halp.latency.get_backend("torch-cpu").device_name(),
                                          "torch": torch.__version__, "results": results}, indent=1))


if __name__ == "__main__":
    main()
