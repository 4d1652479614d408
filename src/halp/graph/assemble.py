"""Turn the facts recorded during the walk into the frozen ChannelGraph.

Naming rule: a group is named after its first producer layer in execution order (the order of the
traced graph), as ``"layer"`` when the group starts at channel 0 of that layer's output and
``"layer@offset"`` otherwise (a conv whose output is split into independent pieces). Names depend only
on module names and execution order, so building twice or on a deep copy gives the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .channels import Chan, ChannelSolver, Solution
from .types import ChannelGraph, ChannelGroup, Layer, LayerShape, Member, OtherOp, Slice


@dataclass
class LayerRecord:
    """A conv/linear met during the walk (``in_chan``/``out_chan`` None: channels that never change)."""

    name: str
    module: str
    shape: LayerShape
    in_chan: Chan | None
    out_chan: Chan | None
    in_features: int = 0
    out_features: int = 0


@dataclass
class OtherRecord:
    """A non-conv op met during the walk; ``out_shape`` is (N, C, spatial...) with C its channel axis."""

    name: str
    kind: str
    chan: Chan | None
    width: int
    out_shape: tuple[int, ...]


@dataclass
class WalkFacts:
    """Everything the walk recorded, in execution order."""

    solver: ChannelSolver
    layers: list[LayerRecord]
    others: list[OtherRecord]
    grouped: list[tuple[str, int, Chan | None, Chan]]
    unknown_ops: list[str]


def _hw(shape: tuple[int, ...], repeat: int) -> tuple[int, int]:
    if len(shape) >= 4:
        return (int(shape[2]), int(math.prod(shape[3:])))
    if len(shape) == 3:
        return (int(shape[2]), 1)
    return (repeat, 1)


class _Namer:
    def __init__(self, sol: Solution, names: dict[int, str]) -> None:
        self.sol = sol
        self.names = names

    def slices(self, chan: Chan | None, width: int, allow_repeat: bool) -> tuple[tuple[Slice, ...], int]:
        """(slices, repeat) of an axis.

        Only a linear layer's input (``Layer.in_repeat``) and 2-D feature tensors can express a
        repeat; elsewhere a repeated piece (channels spread by a reshape, always frozen) becomes a
        fixed slice of its raw width.
        """
        if chan is None:
            return ((None, width),), 1
        pieces = self.sol.pieces(chan)
        repeats = {p.repeat for p in pieces}
        if repeats <= {1} or (allow_repeat and len(repeats) == 1):
            r = repeats.pop() if repeats else 1
            return tuple((self.names.get(self.sol.root[p.atom]), p.length) for p in pieces), r
        return tuple((self.names.get(self.sol.root[p.atom]), p.length) if p.repeat == 1
                     else (None, p.length * p.repeat) for p in pieces), 1


def _grouped_constraints(walker: WalkFacts, sol: Solution) -> tuple[dict[int, int], dict[int, list[str]]]:
    """Per class: the lcm of conv-group counts it must stay balanced over, and blocking reasons."""
    blocks: dict[int, int] = {}
    reasons: dict[int, list[str]] = {}
    for name, g, in_chan, out_chan in walker.grouped:
        for side, chan in (("input", in_chan), ("output", out_chan)):
            if chan is None:
                continue
            pieces = sol.pieces(chan)
            if len(pieces) == 1 and pieces[0].repeat == 1:
                r = sol.root[pieces[0].atom]
                blocks[r] = math.lcm(blocks.get(r, 1), g)
                continue
            for p in pieces:
                reasons.setdefault(sol.root[p.atom], []).append(
                    f"grouped conv {name!r} (groups={g}) has its {side} made of several channel groups; "
                    "its conv groups could not stay balanced"
                )
    return blocks, reasons


def assemble(walker: WalkFacts, input_shapes: tuple[tuple[int, ...], ...]) -> ChannelGraph:
    sol = walker.solver.solve()
    records = sorted(walker.solver.members.values(), key=lambda r: r.order)

    # names: the first layer (in execution order) whose output holds the group, at its offset there
    names: dict[int, str] = {}
    order: dict[int, tuple[int, int]] = {}
    layer_sources: dict[int, list[str]] = {}
    for a, (src, start, _) in enumerate(sol.atoms):
        source = walker.solver.sources[src]
        if source.kind != "layer":
            continue
        r = sol.root[a]
        if r not in names:
            names[r] = source.label if start == 0 else f"{source.label}@{start}"
            order[r] = (src, start)
        if source.label not in layer_sources.setdefault(r, []):
            layer_sources[r].append(source.label)
    if len(set(names.values())) != len(names):
        raise RuntimeError("internal error: duplicate group names")

    members: dict[int, list[Member]] = {r: [] for r in names}
    producers: dict[int, list[str]] = {r: list(layer_sources[r]) for r in names}
    consumers: dict[int, list[str]] = {r: [] for r in names}
    for rec in records:
        for p in sol.pieces(rec.chan):
            r = sol.root[p.atom]
            if r not in names:
                continue
            m = Member(rec.module, rec.role, p.offset, p.repeat, rec.attr, rec.dim)
            if m not in members[r]:
                members[r].append(m)
            if rec.role in ("in", "depthwise") and rec.module not in consumers[r]:
                consumers[r].append(rec.module)

    blocks, block_reasons = _grouped_constraints(walker, sol)
    groups = []
    for r in sorted(names, key=lambda r: order[r]):
        width = sol.atoms[r][2]
        reasons = list(sol.reasons.get(r, [])) + block_reasons.get(r, [])
        b = blocks.get(r, 1)
        if b > 1 and b >= width:
            reasons.append(f"grouped convs keep one channel per conv group ({b} groups of {width} channels)")
        groups.append(ChannelGroup(
            name=names[r], channels=width, prunable=not reasons, members=tuple(members[r]),
            producers=tuple(producers[r]), consumers=tuple(consumers[r]), reason="; ".join(reasons),
            min_channels=max(1, b), multiple_of=b, blocks=b,
        ))

    namer = _Namer(sol, names)
    layers = []
    for lr in walker.layers:
        in_slices, in_repeat = namer.slices(lr.in_chan, lr.in_features, lr.shape.kind == "linear")
        out_slices, _ = namer.slices(lr.out_chan, lr.out_features, False)
        layers.append(Layer(lr.name, lr.shape, in_slices, out_slices, in_repeat))

    others = []
    for o in walker.others:
        slices, repeat = namer.slices(o.chan, o.width, len(o.out_shape) <= 2)
        others.append(OtherOp(o.name, o.kind, slices, _hw(o.out_shape, repeat),
                               int(o.out_shape[0]) if o.out_shape else 1))
    return ChannelGraph(groups=tuple(groups), layers=tuple(layers), others=tuple(others),
                        input_shapes=input_shapes, unknown_ops=tuple(walker.unknown_ops))
