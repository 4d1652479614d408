"""``halp models [PATTERN]``: the model names ``--model`` accepts (zoo, aliases, torchvision, timm, YOLO)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models", help="list model names for --model",
        description="List the names --model and halp.models.create accept: halp's own models, aliases, and "
                    "torchvision:NAME, timm:NAME, yolo:NAME for each installed library. PATTERN is a glob "
                    "over the full names, e.g. 'timm:*mobilenet*' or 'torchvision:*'.",
    )
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN", help="glob, e.g. 'torchvision:res*'")
    p.add_argument("--sizes", action="store_true", help="also print each model's default input size CxHxW")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from halp import models

    names = models.list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; patterns are globs over full names, e.g. "
                         "'timm:*resnet*' (the library prefix is part of the name)")
    for name in names:
        if args.sizes:
            print(f"{name}\t{'x'.join(str(d) for d in models.input_size(name))}")
        else:
            print(name)
    return 0
