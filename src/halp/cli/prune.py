"""``halp prune``: run a pruning recipe from a YAML file and/or flags (flags override the file)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    from halp.cli.profile import MODEL_HELP, WEIGHTS_HELP

    p = subparsers.add_parser(
        "prune",
        help="prune a model to a latency budget (recipe file or flags)",
        description="Train (or load) a dense model, profile this machine, HALP-prune with fine-tuning, and "
        "write the slim model, report.json, summary.md and figures. Rerunning resumes after a kill.",
    )
    p.add_argument("--config", help="recipe YAML (keys as halp.recipe.Recipe); flags below override it")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP + "; without it the dense model is trained first")
    p.add_argument("--task", choices=["classification", "detection"],
                   help="detection: a torchvision SSD (ssdlite320_mobilenet_v3_large, ssd300_vgg16) on shapes-voc/voc")
    p.add_argument("--data", help="data set: digits, shapes10, cifar10, imagefolder; detection: shapes-voc, voc")
    p.add_argument("--data-root", help="folder of the data set (cifar10, imagefolder)")
    p.add_argument("--table", help="latency table JSON; default: profile this machine into OUT/table.json")
    p.add_argument("--backend", help="torch-cpu, torch-cuda, onnxruntime, openvino, onnxruntime-int8 or openvino-int8")
    p.add_argument("--threads", type=int, help="intra-op threads for profiling and measuring")
    p.add_argument("--batch", type=int, help="deployment batch size of the latency budget")
    p.add_argument("--method", help="halp (default), uniform, taylor-flops")
    p.add_argument("--target", type=float, help="budget as a fraction of the dense latency (0.5 = HALP-50%%)")
    p.add_argument("--target-ms", type=float, help="absolute budget in milliseconds")
    p.add_argument("--steps", type=int, help="pruning steps k")
    p.add_argument("--interval", type=int, help="minibatches r between pruning steps")
    p.add_argument("--grouping", help="'auto' or a fixed channel block size")
    p.add_argument("--min-fraction", type=float,
                   help="no group keeps fewer than this fraction of its channels (default 0; detection 0.25, "
                        "halp.detection.run.MIN_FRACTION)")
    p.add_argument("--min-saving", type=float,
                   help="do not prune a group that saves less than this fraction of the dense latency even at its "
                        "narrowest (default 0.0025; 0 prunes every group)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=int, help="training batch size per process")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--device", help="cpu, cuda, auto")
    p.add_argument("-o", "--out", help="output directory")
    p.set_defaults(func=run)


def recipe_from_args(args: argparse.Namespace) -> Any:
    from halp.config import CLI_FIELDS
    from halp.recipe import Recipe

    data: dict[str, Any] = {}
    if args.config:
        data = Recipe.from_yaml(args.config).to_dict()
    simple = {"task": args.task, "model": args.model, "weights": args.weights, "data": args.data, "data_root": args.data_root,
              "table": args.table, "backend": args.backend, "threads": args.threads, "batch": args.batch,
              "method": args.method, "out": args.out}
    data.update({k: v for k, v in simple.items() if v is not None})
    prune = dict(data.get("prune", {}))
    grouping = args.grouping
    if grouping is not None and grouping != "auto":
        try:
            grouping = int(grouping)
        except ValueError:
            raise ValueError(f"--grouping must be 'auto' or a positive integer, got {grouping!r}") from None
    for key in CLI_FIELDS:
        value = grouping if key == "grouping" else getattr(args, key)
        if value is not None:
            prune[key] = value
    train = dict(data.get("train", {}))
    for key, value in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size),
                       ("seed", args.seed), ("device", args.device)):
        if value is not None:
            train[key] = value
    data["prune"], data["train"] = prune, train
    return Recipe.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from halp.run import run as run_recipe

    recipe = recipe_from_args(args)
    report = run_recipe(recipe, progress=not args.quiet)
    d, p = report["dense"], report["pruned"]
    print(json.dumps({"dense": d, "pruned": p, "latency_ratio": report["latency_ratio"], "out": recipe.out}, indent=2))
    return 0
