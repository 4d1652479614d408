"""Channel removal: soft (zero in place) and physical (a new, smaller model).

Both read the same plan — for every module, which indices of which parameter dimension go — so the
masked model and the slim model compute the same function: a masked channel is zeroed where it is made
(conv/linear filter and bias; batch-norm weight and bias, with running mean 0 and variance 1 so that it
outputs exactly 0 whatever it receives) *and* where it is read (the consumers' input weights), so even
a non-zero value in it (``sigmoid(0) = 0.5``) never reaches a kept channel. Groups touching the network
output are never prunable, so masked channels never reach the output either.

This is the only module that rewrites weights.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from typing import Mapping, Sequence

import torch
from torch import nn

from .graph.types import ChannelGraph, ChannelGroup

log = logging.getLogger(__name__)

KeepSpec = Mapping[str, "torch.Tensor | Sequence[int]"]
_Key = tuple[str, str, int]  # (role, attr, dim)
_Plan = dict[str, dict[_Key, torch.Tensor]]  # module -> key -> removed indices (sorted)


def _as_index(name: str, value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.dtype.is_floating_point or value.dtype.is_complex:
            raise ValueError(
                f"keep[{name!r}] has dtype {value.dtype}; give integer channel indices "
                "(for a boolean mask use mask.nonzero().flatten())"
            )
        t = value.detach().to("cpu", torch.long)
    else:
        try:
            items = list(value)  # type: ignore[call-overload]
        except TypeError:
            raise ValueError(f"keep[{name!r}] must be a 1-D tensor or a list of channel indices") from None
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise ValueError(f"keep[{name!r}] must contain integer channel indices, got {items[:5]}")
        t = torch.tensor(items, dtype=torch.long)
    if t.dim() != 1:
        raise ValueError(f"keep[{name!r}] must be 1-D, got shape {tuple(t.shape)}")
    return t


def _check_group(group: ChannelGroup, idx: torch.Tensor) -> torch.Tensor:
    name, n = group.name, group.channels
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"keep[{name!r}] has indices outside [0, {n}) (min {int(idx.min())}, max {int(idx.max())})")
    idx = torch.sort(idx).values
    if idx.numel() > 1 and bool((idx[1:] == idx[:-1]).any()):
        raise ValueError(f"keep[{name!r}] lists a channel more than once")
    if not group.prunable:
        if idx.numel() == n:
            return idx
        raise ValueError(f"group {name!r} is not prunable ({group.reason}); leave it out of keep")
    if idx.numel() < group.min_channels:
        raise ValueError(
            f"keep[{name!r}] keeps {idx.numel()} channels but group {name!r} needs at least "
            f"{group.min_channels}"
        )
    if idx.numel() % group.multiple_of:
        raise ValueError(
            f"keep[{name!r}] keeps {idx.numel()} channels but group {name!r} feeds grouped convs and "
            f"must keep a multiple of {group.multiple_of} (halp.surgery.keep_from_widths makes a balanced keep)"
        )
    if group.blocks > 1:
        counts = torch.bincount(idx // (n // group.blocks), minlength=group.blocks)
        if bool((counts != counts[0]).any()):
            raise ValueError(
                f"keep[{name!r}] must keep the same number of channels in each of the {group.blocks} "
                f"conv groups of {n // group.blocks} channels (grouped convs); it keeps {counts.tolist()}. "
                "halp.surgery.keep_from_widths(graph, scores, {name: width}) makes such a keep"
            )
    return idx


def validate_keep(graph: ChannelGraph, keep: KeepSpec) -> dict[str, torch.Tensor]:
    """Check ``keep`` against the graph; returns sorted int64 index tensors per named group."""
    if not isinstance(keep, Mapping):
        raise ValueError("keep must be a dict {group name: kept channel indices}")
    out = {}
    for name, value in keep.items():
        try:
            group = graph.group(name)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        out[name] = _check_group(group, _as_index(name, value))
    return out


def _plan(graph: ChannelGraph, keep: KeepSpec) -> _Plan:
    kept = validate_keep(graph, keep)
    parts: dict[str, dict[_Key, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    for name, idx in kept.items():
        group = graph.group(name)
        mask = torch.ones(group.channels, dtype=torch.bool)
        mask[idx] = False
        removed = mask.nonzero().flatten()  # (R,)
        if removed.numel() == 0:
            continue
        for m in group.members:
            pos = m.offset + (removed[:, None] * m.repeat + torch.arange(m.repeat)).flatten()
            parts[m.module][(m.role, m.attr, m.dim)].append(pos)
    return {mod: {k: torch.sort(torch.cat(v)).values for k, v in d.items()} for mod, d in parts.items()}


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"the graph names module {name!r} but the model has none; build the graph from this model"
        ) from None


def _dim_size(m: nn.Module, role: str, attr: str, dim: int) -> int | None:
    if role == "param":
        t = getattr(m, attr, None)
        return t.shape[dim] if isinstance(t, torch.Tensor) and t.dim() > dim else None
    if isinstance(m, nn.Conv2d):
        return m.in_channels if role == "in" else m.out_channels
    if isinstance(m, nn.Linear):
        return m.in_features if role == "in" else m.out_features
    if role == "norm":
        return m.num_channels if isinstance(m, nn.GroupNorm) else getattr(m, "num_features", None)
    return None


def _check_sizes(name: str, m: nn.Module, entries: dict[_Key, torch.Tensor]) -> None:
    for (role, attr, dim), removed in entries.items():
        size = _dim_size(m, role, attr, dim)
        if size is None:
            raise ValueError(
                f"surgery does not know how to remove channels (role {role!r}) from "
                f"{type(m).__name__} {name!r}; only Conv2d, Linear, norms and per-channel tensors are supported"
            )
        if int(removed.max()) >= size:
            raise ValueError(
                f"the graph does not match the model: {type(m).__name__} {name!r} has {size} channels "
                f"({role}) but the graph removes channel {int(removed.max())}; was the model already "
                "pruned? build the graph again from this model"
            )


def _zero(t: torch.Tensor | None, dim: int, idx: torch.Tensor, value: float = 0.0) -> None:
    if t is not None:
        t.index_fill_(dim, idx.to(t.device), value)


def _conv_in_positions(conv: nn.Conv2d, removed: torch.Tensor) -> list[tuple[slice, torch.Tensor]]:
    """(output rows, local input columns) of a conv's weight that read the removed input channels."""
    g = conv.groups
    per_in, per_out = conv.in_channels // g, conv.out_channels // g
    out = []
    for j in range(g):
        local = removed[(removed >= j * per_in) & (removed < (j + 1) * per_in)] - j * per_in
        if local.numel():
            out.append((slice(j * per_out, (j + 1) * per_out), local))
    return out


@torch.no_grad()
def mask_channels(model: nn.Module, graph: ChannelGraph, keep: KeepSpec) -> None:
    """Zero, in place, exactly what :func:`prune_channels` would remove (same outputs, same shapes).

    Args:
        model: the model the graph was built from (or a deep copy of it).
        graph: its channel graph.
        keep: ``{group name: kept channel indices}``; groups not named stay whole.

    Raises:
        ValueError: a bad keep (see :func:`validate_keep`) or a graph that does not match the model.
    """
    for mod_name, entries in _plan(graph, keep).items():
        m = _module(model, mod_name)
        _check_sizes(mod_name, m, entries)
        for (role, attr, dim), removed in entries.items():
            if role in ("out", "depthwise"):
                _zero(m.weight, 0, removed)
                _zero(getattr(m, "bias", None), 0, removed)
            elif role == "in" and isinstance(m, nn.Conv2d):
                for rows, cols in _conv_in_positions(m, removed):
                    m.weight[rows].index_fill_(1, cols.to(m.weight.device), 0.0)
            elif role == "in":
                _zero(m.weight, 1, removed)
            elif role == "norm":
                for attr_name in ("weight", "bias", "running_mean"):
                    _zero(getattr(m, attr_name, None), 0, removed)
                _zero(getattr(m, "running_var", None), 0, removed, 1.0)
            else:  # "param"
                t = getattr(m, attr)
                _zero(t.data if isinstance(t, nn.Parameter) else t, dim, removed)


def _keep_along(size: int, removed: torch.Tensor | None) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    if removed is not None:
        mask[removed] = False
    return mask.nonzero().flatten()


def _set(m: nn.Module, attr: str, value: torch.Tensor) -> None:
    old = getattr(m, attr)
    if isinstance(old, nn.Parameter):
        setattr(m, attr, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        setattr(m, attr, value.contiguous())


def _take(m: nn.Module, attr: str, dim: int, idx: torch.Tensor) -> None:
    t = getattr(m, attr, None)
    if t is not None:
        _set(m, attr, t.detach().index_select(dim, idx.to(t.device)))


def _slim_conv(name: str, m: nn.Conv2d, entries: dict[_Key, torch.Tensor]) -> None:
    g = m.groups
    if ("depthwise", "", 0) in entries:
        keep = _keep_along(m.out_channels, entries[("depthwise", "", 0)])
        _take(m, "weight", 0, keep)
        _take(m, "bias", 0, keep)
        m.in_channels = m.out_channels = m.groups = int(keep.numel())
        return
    keep_out = _keep_along(m.out_channels, entries.get(("out", "", 0)))
    keep_in = _keep_along(m.in_channels, entries.get(("in", "", 0)))
    per_in, per_out = m.in_channels // g, m.out_channels // g
    blocks_out = [keep_out[(keep_out >= j * per_out) & (keep_out < (j + 1) * per_out)] for j in range(g)]
    blocks_in = [keep_in[(keep_in >= j * per_in) & (keep_in < (j + 1) * per_in)] - j * per_in for j in range(g)]
    if len({b.numel() for b in blocks_out}) > 1 or len({b.numel() for b in blocks_in}) > 1:
        raise ValueError(
            f"keep leaves grouped conv {name!r} with unequal conv groups "
            f"(out {[b.numel() for b in blocks_out]}, in {[b.numel() for b in blocks_in]})"
        )
    w = m.weight.detach()
    dev = w.device
    weight = torch.cat([w.index_select(0, bo.to(dev)).index_select(1, bi.to(dev))
                        for bo, bi in zip(blocks_out, blocks_in)])
    _set(m, "weight", weight)
    _take(m, "bias", 0, keep_out)
    m.in_channels, m.out_channels = int(keep_in.numel()), int(keep_out.numel())


def _slim_linear(m: nn.Linear, entries: dict[_Key, torch.Tensor]) -> None:
    keep_out = _keep_along(m.out_features, entries.get(("out", "", 0)))
    keep_in = _keep_along(m.in_features, entries.get(("in", "", 0)))
    dev = m.weight.device
    _set(m, "weight", m.weight.detach().index_select(0, keep_out.to(dev)).index_select(1, keep_in.to(dev)))
    _take(m, "bias", 0, keep_out)
    m.in_features, m.out_features = int(keep_in.numel()), int(keep_out.numel())


def _slim_norm(m: nn.Module, removed: torch.Tensor) -> None:
    size = m.num_channels if isinstance(m, nn.GroupNorm) else m.num_features
    keep = _keep_along(size, removed)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        _take(m, attr, 0, keep)
    if isinstance(m, nn.GroupNorm):
        m.num_channels = m.num_groups = int(keep.numel())
    else:
        m.num_features = int(keep.numel())


def _sync_counts(m: nn.Module) -> None:
    """Channel-count attributes follow the weights (a conv sliced through role "param": a computed weight)."""
    w = getattr(m, "weight", None)
    if isinstance(m, nn.Conv2d) and isinstance(w, torch.Tensor):
        m.out_channels, m.in_channels = int(w.shape[0]), int(w.shape[1]) * m.groups
    elif isinstance(m, nn.Linear) and isinstance(w, torch.Tensor):
        m.out_features, m.in_features = int(w.shape[0]), int(w.shape[1])


def prune_channels(model: nn.Module, graph: ChannelGraph, keep: KeepSpec) -> nn.Module:
    """A new, physically smaller copy of ``model`` keeping only the channels in ``keep``.

    The copy holds ordinary ``nn.Conv2d``/``nn.Linear``/norm modules with reduced sizes (it runs at full
    speed and exports to ONNX); ``model`` is not modified.

    Args:
        model: the model the graph was built from (or a deep copy of it).
        graph: its channel graph.
        keep: ``{group name: kept channel indices}``; groups not named stay whole. Indices are applied
            to every member of the group at its offset (and repeat, after a flatten).

    Returns:
        The slim model, in the same train/eval mode as ``model``.

    Raises:
        ValueError: a bad keep (see :func:`validate_keep`) or a graph that does not match the model.
    """
    plan = _plan(graph, keep)
    slim = copy.deepcopy(model)
    for mod_name, entries in plan.items():
        m = _module(slim, mod_name)
        _check_sizes(mod_name, m, entries)
        for (role, attr, dim), removed in entries.items():
            if role == "param":
                _take(m, attr, dim, _keep_along(getattr(m, attr).shape[dim], removed))
        roles = {role for role, _, _ in entries}
        if isinstance(m, nn.Conv2d) and roles & {"out", "in", "depthwise"}:
            _slim_conv(mod_name, m, entries)
        elif isinstance(m, nn.Linear) and roles & {"out", "in"}:
            _slim_linear(m, entries)
        elif ("norm", "", 0) in entries:
            _slim_norm(m, entries[("norm", "", 0)])
        _sync_counts(m)
    log.debug("pruned %d modules", len(plan))
    return slim


def keep_from_widths(
    graph: ChannelGraph,
    scores: Mapping[str, torch.Tensor] | None,
    widths: Mapping[str, int],
) -> dict[str, torch.Tensor]:
    """Turn per-group widths into kept indices: the highest-scoring channels, balanced per conv group.

    Args:
        graph: the channel graph.
        scores: ``{group name: (channels,) importance}``; None (or a group missing from it) keeps the
            lowest indices, which is what a freshly initialised or already-slim model wants.
        widths: ``{group name: channels to keep}``; groups not named stay whole.

    Returns:
        ``{group name: sorted int64 indices}``, valid for :func:`prune_channels` / :func:`mask_channels`.

    Raises:
        ValueError: an unknown group, or a width the group's constraints do not allow.
    """
    out = {}
    for name, width in widths.items():
        try:
            group = graph.group(name)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        width = int(width)
        n, b = group.channels, group.blocks
        if not 0 <= width <= n:
            raise ValueError(f"width {width} for group {name!r} is outside [0, {n}]")
        if width % b:
            raise ValueError(f"width {width} for group {name!r} must be a multiple of {b} (grouped convs)")
        score = None if scores is None else scores.get(name)
        if score is not None and tuple(score.shape) != (n,):
            raise ValueError(f"scores[{name!r}] has shape {tuple(score.shape)}, expected ({n},)")
        per = n // b
        picks = []
        for j in range(b):
            if score is None:
                local = torch.arange(width // b)
            else:
                block = score[j * per:(j + 1) * per].detach().float().cpu()
                local = torch.topk(block, width // b, sorted=False).indices
            picks.append(local + j * per)
        idx = torch.sort(torch.cat(picks)).values
        out[name] = _check_group(group, idx)
    return out
