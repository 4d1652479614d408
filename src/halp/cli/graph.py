"""``halp graph``: what of a model can be pruned — its channel groups, the frozen ones and why."""

from __future__ import annotations

import argparse
import collections
import json
from typing import Any

from halp.cli.profile import example_input, load_model


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "graph", help="prunable channel groups of a model, frozen channels and why",
        description="Capture a model with torch.export, find every group of channels that must be pruned "
                    "together, and say which groups are frozen and why (an op whose channel semantics halp "
                    "does not know, a size written in the code, the network output ...).",
    )
    p.add_argument("model", metavar="MODEL",
                   help="model name (zoo, torchvision:NAME, timm:NAME, yolo:NAME) or a saved slim model folder")
    p.add_argument("--input", help="input size BxCxHxW (default: 1 x the model's input size)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--ignore", nargs="*", default=[], metavar="MODULE", help="modules whose channels stay whole")
    p.add_argument("--no-check", action="store_true",
                   help="skip the checking prune (faster; sizes written in the code then go unnoticed)")
    p.add_argument("--json", metavar="FILE", help="also write the groups as JSON")
    p.add_argument("--frozen-only", action="store_true", help="list only the frozen groups")
    p.set_defaults(func=run)


def summarize(graph: Any) -> dict[str, Any]:
    """The graph as plain data: counts, every group with its reason, the ops without a handler."""
    frozen = [g for g in graph.groups if not g.prunable]
    reasons = collections.Counter(r.strip() for g in frozen for r in g.reason.split(";") if r.strip())
    return {
        "groups": len(graph.groups),
        "prunable": len(graph.prunable_groups),
        "channels": sum(g.channels for g in graph.groups),
        "frozen_channels": sum(g.channels for g in frozen),
        "layers": len(graph.layers),
        "unknown_ops": list(graph.unknown_ops),
        "reasons": reasons.most_common(),
        "group_list": [{"name": g.name, "channels": g.channels, "prunable": g.prunable, "reason": g.reason,
                        "producers": list(g.producers), "consumers": list(g.consumers), "blocks": g.blocks}
                       for g in graph.groups],
    }


def run(args: argparse.Namespace) -> int:
    import halp

    from halp.detection.network import is_detector, network_input, per_image_network

    model, size = load_model(args.model, args.num_classes)
    x = example_input(size, args.input)
    if is_detector(model):  # its per-image network, named as in the detector (see halp.detection.network)
        x = network_input(model, x.shape[2], x.shape[3], batch=x.shape[0])
        print(f"{args.model} is a detector: the graph of its per-image network on {tuple(x.shape)} "
              "(after its own resize), postprocessing excluded")
        model = per_image_network(model)
    graph = halp.build_graph(model, x, check=not args.no_check, ignore=args.ignore)
    info = summarize(graph)
    print(f"{args.model}: {info['groups']} channel groups, {info['prunable']} prunable; "
          f"{info['frozen_channels']} of {info['channels']} channels frozen; {info['layers']} conv/linear layers")
    width = max((len(g["name"]) for g in info["group_list"]), default=10)
    for g in info["group_list"]:
        if args.frozen_only and g["prunable"]:
            continue
        state = "prunable" if g["prunable"] else "frozen  "
        extra = f" (balanced over {g['blocks']} conv groups)" if g["blocks"] > 1 else ""
        print(f"  {g['name']:<{width}}  {g['channels']:>5}  {state}{extra}  {g['reason']}")
    if info["unknown_ops"]:
        print(f"ops without a handler (their channels are frozen; halp.graph.register_handler teaches them): "
              f"{', '.join(sorted(set(op.split(' (')[0] for op in info['unknown_ops'])))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)
    return 0
