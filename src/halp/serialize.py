"""Saving and loading slim models without pickle: a JSON spec plus a safetensors file.

A slim model's architecture is its dense architecture plus the width kept in every channel group, so a
saved model is ``{model name and arguments, input shape, widths}`` in JSON and the weights in safetensors;
the name is whatever :func:`halp.models.create` built it from (``resnet56``, ``torchvision:resnet50``,
``timm:resnet18`` …, recorded in ``model.halp_arch``).
Loading rebuilds the dense model, slims it with :func:`halp.prune_channels` to those widths and loads the
weights with ``strict=True``: no code from the file ever runs. Models not built by ``halp.models.create``
are loaded by passing the dense model they came from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPEC_FILE = "halp_model.json"
WEIGHTS_FILE = "weights.safetensors"


def attach_spec(model: nn.Module, widths: Mapping[str, int] | None = None, input_shape: tuple[int, ...] | None = None) -> None:
    """Records on ``model`` what :func:`save_pruned` needs (widths per group, example input shape)."""
    if widths is not None:
        model.halp_widths = {k: int(v) for k, v in widths.items()}  # type: ignore[assignment]
    if input_shape is not None:
        model.halp_input_shape = tuple(int(d) for d in input_shape)  # type: ignore[assignment]


def save_pruned(
    model: nn.Module,
    path: str | os.PathLike,
    widths: Mapping[str, int] | None = None,
    input_shape: tuple[int, ...] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``model`` (dense or slim) to the directory ``path``.

    Args:
        model: a model from :func:`halp.models.create` or one slimmed from it (it carries ``halp_arch``),
            or any model whose dense form the loader will be given.
        widths: kept channels per group; defaults to what the pruner attached (``model.halp_widths``), or
            dense.
        input_shape: the example input shape the graph is built with; defaults to ``model.halp_input_shape``
            or the named model's batch-1 input.
        meta: JSON-able extras stored alongside (accuracy, latency, the recipe ...).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    arch = getattr(model, "halp_arch", None)
    widths = dict(widths if widths is not None else getattr(model, "halp_widths", {}))
    if input_shape is None:
        input_shape = getattr(model, "halp_input_shape", None)
    if input_shape is None and arch is not None:
        input_shape = (1, *getattr(model, "default_input_size"))
    if input_shape is None:
        raise ValueError("save_pruned needs input_shape=(N, C, H, W): the model does not record its input size")
    spec = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "input_shape": list(input_shape),
        "widths": {k: int(v) for k, v in sorted(widths.items())},
        "meta": dict(meta or {}),
    }
    json.dumps(spec)  # fail before writing anything if meta is not JSON-able
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out / WEIGHTS_FILE)
    (out / (SPEC_FILE + ".tmp")).write_text(json.dumps(spec, indent=2))
    os.replace(out / (SPEC_FILE + ".tmp"), out / SPEC_FILE)
    return out


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON spec of a saved model, validated."""
    spec_path = Path(path) / SPEC_FILE
    if not spec_path.is_file():
        raise ValueError(f"{path} is not a saved halp model: {SPEC_FILE} is missing (save it with halp.save_pruned)")
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{spec_path} is not valid JSON ({exc}); the file is corrupt: save the model again") from exc
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{spec_path} has format_version {spec.get('format_version')!r}; this halp reads version {FORMAT_VERSION}"
        )
    for key in ("arch", "input_shape", "widths"):
        if key not in spec:
            raise ValueError(f"{spec_path} lacks the field {key!r}; the file is corrupt: save the model again")
    return spec


def load_pruned(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Loads a model written by :func:`save_pruned`.

    Args:
        path: the directory written by ``save_pruned``.
        model: the *dense* model it was pruned from; needed only for models not built by
            :func:`halp.models.create`.
    """
    from halp.graph import build_graph
    from halp.models import create
    from halp.surgery import prune_channels

    spec = read_spec(path)
    if model is None:
        if spec["arch"] is None:
            raise ValueError(
                f"{path} holds a model not built by halp.models.create: pass the dense model it was pruned from, "
                "load_pruned(path, model=MyNet())"
            )
        model = create(spec["arch"]["name"], **spec["arch"].get("kwargs", {}))
    model.eval()
    widths = {k: int(v) for k, v in spec["widths"].items()}
    slim = model
    if widths:
        example = torch.zeros(spec["input_shape"])
        from halp.detection.network import prunable_network

        graph = build_graph(prunable_network(model), example)  # a detector: its per-image network
        keep = {name: torch.arange(w) for name, w in widths.items() if w < graph.group(name).channels}
        slim = prune_channels(model, graph, keep)
    state = load_file(str(Path(path) / WEIGHTS_FILE))
    try:
        slim.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights in {path} do not fit the architecture its spec describes: {exc}") from exc
    attach_spec(slim, widths, tuple(spec["input_shape"]))
    slim.halp_meta = spec["meta"]  # type: ignore[assignment]
    return slim
