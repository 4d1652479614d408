"""halp — hardware-aware latency pruning.

Public names are resolved lazily (PEP 562) so ``import halp`` stays cheap and a command such as
``halp plot`` does not pay for importing the profiler or the pruner.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    # name: module that defines it
    "models": "halp.models",
    "build_graph": "halp.verify",
    "ChannelGraph": "halp.graph",
    "ChannelGroup": "halp.graph",
    "mask_channels": "halp.surgery",
    "prune_channels": "halp.surgery",
    "LatencyTable": "halp.latency",
    "profile": "halp.latency",
    "recalibrate": "halp.latency",
    "predict_latency": "halp.latency",
    "measure_latency": "halp.latency",
    "export_onnx": "halp.export",
    "export_int8": "halp.export",
    "save_pruned": "halp.serialize",
    "load_pruned": "halp.serialize",
    "knapsack": "halp.knapsack",
    "grouping": "halp.grouping",
    "PruneConfig": "halp.config",
    "Pruner": "halp.pruner",
    "baselines": "halp.baselines",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    module_name = _PUBLIC.get(name)
    if module_name is None:
        raise AttributeError(f"module 'halp' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"halp.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
