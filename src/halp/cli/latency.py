"""``halp latency``: a model's latency predicted from a table next to the measured one."""

from __future__ import annotations

import argparse
from typing import Any

from halp.cli.profile import BACKENDS, add_model_arguments, example_input, load_model


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "latency", help="predicted vs measured latency of a model",
        description="Predict a model's latency from a latency table and measure it on this device with the "
                    "table's backend, threads and dtype.",
    )
    add_model_arguments(p, positional=True)
    p.add_argument("--table", required=True, help="latency table (from halp profile)")
    p.add_argument("--input", help="input size BxCxHxW (default: the table's profiled input)")
    p.add_argument("--repeats", type=int, default=40,
                   help="timed forwards for the measurement, in 8 rounds; the latency is their median")
    p.add_argument("--no-measure", action="store_true", help="only predict")
    p.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help="measure on this backend instead of the table's (e.g. how a model pruned for one runtime "
                        "runs on another)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import halp

    table = halp.LatencyTable.load(args.table)
    model, size = load_model(args.model, args.num_classes, args.weights)
    text = args.input
    if text is None:
        shapes = (table.meta.get("model") or {}).get("input_shapes") or []
        if shapes:
            text = "x".join(str(d) for d in shapes[0])
    x = example_input(size, text)
    predicted = halp.predict_latency(model, x, table)
    print(f"predicted: {predicted:.3f} ms  ({table.backend}, {table.threads} threads, batch {table.batch}, "
          f"{table.dtype}; table {args.table})")
    if args.no_measure:
        return 0
    backend = args.backend or table.backend
    dtype = table.dtype if backend == table.backend else "float32"
    stats = halp.measure_latency(model, x, backend=backend, threads=table.threads, repeats=args.repeats, dtype=dtype)
    print(f"measured:  {stats.latency_ms:.3f} ms  (median of {len(stats.samples)} forwards in "
          f"{len(stats.round_medians_ms)} interleaved rounds; IQR {stats.iqr_ms:.3f} ms, {backend})")
    print(f"ratio predicted/measured: {predicted / stats.latency_ms:.3f}")
    return 0
