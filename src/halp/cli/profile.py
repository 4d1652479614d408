"""``halp profile``: measure a latency table for a model on this machine.

Also home of the small helpers the model-taking subcommands share (input-size parsing, model loading by
name — zoo, alias or ``torchvision:``/``timm:``/``yolo:`` — with ``--weights``, or from a saved folder).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

#: halp.latency.BACKENDS, spelled out so that building the parser does not import torch (a test checks they agree)
BACKENDS = ("torch-cpu", "torch-cuda", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")

logger = logging.getLogger(__name__)


def parse_input(text: str) -> tuple[int, ...]:
    """``"1x3x224x224"`` → ``(1, 3, 224, 224)`` (batch first)."""
    try:
        dims = tuple(int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"--input must look like 1x3x224x224 (batch x channels x height x width), got {text!r}")
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise ValueError(f"--input must be positive sizes joined by 'x', batch first (e.g. 1x3x224x224), got {text!r}")
    return dims


MODEL_HELP = ("model name: halp's own (resnet56 ...), an alias (resnet50 ...) or torchvision:NAME, timm:NAME, "
              "yolo:NAME (list them with `halp models PATTERN`), or a folder written by halp.save_pruned")
WEIGHTS_HELP = "local state dict of that architecture to load (.safetensors, or .pth/.pt); nothing is downloaded"


def add_model_arguments(p: argparse.ArgumentParser, positional: bool = False) -> None:
    """``MODEL`` / ``--model``, ``--weights`` and ``--num-classes``, the same for every subcommand."""
    if positional:
        p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    else:
        p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--weights", default=None, metavar="FILE", help=WEIGHTS_HELP)
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")


def load_model(spec: str, num_classes: int | None = None, weights: str | None = None) -> tuple[Any, tuple[int, ...]]:
    """A model by name (with ``weights`` from a local file), or a saved slim model folder, and its (C, H, W)."""
    import halp

    path = Path(spec)
    if path.is_dir():
        from halp.serialize import load_pruned

        if weights is not None:
            raise ValueError(f"{spec} is a saved model folder, which holds its weights; drop --weights")
        model = load_pruned(path)
        shape = getattr(model, "halp_input_shape", None)
        if shape:
            return model, tuple(shape[1:])
    else:
        model = halp.models.create(spec, num_classes=num_classes, weights=weights)
    size = tuple(getattr(model, "default_input_size", ()) or ())
    return model, size


def example_input(model_size: tuple[int, ...], text: str | None, batch: int | None = None) -> Any:
    import torch

    if text:
        dims = parse_input(text)
    elif model_size:
        dims = (1, *model_size)
    else:
        raise ValueError("this model has no default input size: pass --input BxCxHxW")
    if batch is not None:
        dims = (batch, *dims[1:])
    return torch.randn(*dims)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "profile", help="measure a latency table on this device",
        description="Measure per-layer latency grids, non-conv op costs and the end-to-end calibration of a "
                    "model; resumes from <out>.partial.json if a previous run was interrupted.",
    )
    add_model_arguments(p)
    p.add_argument("--input", help="input size BxCxHxW (default: 1 x the model's input size)")
    p.add_argument("--backend", default="torch-cpu", choices=list(BACKENDS),
                   help="where to measure; the -int8 backends time the INT8 kernels of a statically quantized network")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's current)")
    p.add_argument("-o", "--output", required=True, help="table file to write (JSON)")
    p.add_argument("--overwrite", action="store_true", help="re-profile even if the output table exists")
    p.add_argument("--recalibrate", action="store_true",
                   help="the output table exists: re-take only its end-to-end calibration on this machine now "
                        "(a minute, not a profile) and rewrite it; for a machine whose speed has changed")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--grid-points", type=int, default=12, help="widths per prunable axis of the coarse grid")
    p.add_argument("--fine-span", type=int, default=64, help="fine cout sweep over the last N channels")
    p.add_argument("--passes", type=int, default=1,
                   help="measure the layer grids in this many passes over the network, each point the median of "
                        "its passes: on a shared machine a slow spell then skews one pass, not the table "
                        "(N times the profiling time; 3 on a shared VM)")
    p.add_argument("--calibration-samples", type=int, default=None,
                   help="random slim variants timed end to end (default 16; with --recalibrate: as profiled). "
                        "Models with depthwise convolutions on a multi-threaded CPU calibrate better with ~40")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import halp

    model, size = load_model(args.model, args.num_classes, args.weights)
    x = example_input(size, args.input)
    if args.recalibrate:
        if not Path(args.output).is_file():
            raise ValueError(f"--recalibrate needs an existing table at {args.output}; profile one first (drop "
                             "--recalibrate)")
        table = halp.LatencyTable.load(args.output)
        before = table.calibration
        halp.recalibrate(table, model, x, threads=args.threads, samples=args.calibration_samples)
        table.save(args.output)
        c = table.calibration
        print(f"recalibrated {args.output}: measured = {c.a:.3f} x layers + {c.b:.3f} x ops + {c.c:.3f} ms "
              f"(was {before.a:.3f} x layers + {before.b:.3f} x ops + {before.c:.3f} ms)")
        return 0
    reusing = Path(args.output).exists() and not args.overwrite
    more = {} if args.calibration_samples is None else {"calibration_samples": args.calibration_samples}
    table = halp.profile(
        model, x, backend=args.backend, dtype=args.dtype, threads=args.threads, path=args.output,
        progress=not getattr(args, "quiet", False), name=args.model, overwrite=args.overwrite,
        warmup=args.warmup, repeats=args.repeats, grid_points=args.grid_points, fine_span=args.fine_span,
        passes=args.passes, **more,
    )
    c = table.calibration
    print(f"wrote {args.output}: {len(table.entries)} layer entries, {len(table.ops)} op kinds, "
          f"{table.backend} on {table.meta['device']} ({table.threads} threads, batch {table.batch}, {table.dtype})")
    print(f"calibration ({c.method}): measured = {c.a:.3f} x layers + {c.b:.3f} x ops + {c.c:.3f} ms")
    if reusing:
        print("the table was already there for this model and settings: reused it, measured nothing")
    elif "profile_seconds" in table.meta:
        m = table.meta.get("measurements", {})
        print(f"profiling took {table.meta['profile_seconds']:.1f} s ({m.get('new', 0)} new measurements, "
              f"{m.get('resumed', 0)} resumed)")
    return 0
