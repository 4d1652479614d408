"""The frozen description of a network's prunable channels.

Everything downstream (latency tables, grouping, the knapsack, surgery) reads these types and never the
captured ATen graph itself, so the capture can change without touching them. A graph is built once from a model
and example inputs and is never mutated; pruning produces *widths* (kept channels per group) that are
applied to this description with :meth:`ChannelGraph.layer_widths`.

Channel dimensions are described as *slices*: an ordered tuple of ``(group name or None, channels)``
pieces along a tensor's channel axis. ``None`` marks channels that no pruning can change (the network
input, a classifier output). A conv reading a concatenation of three groups has three input slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

Slice = tuple["str | None", int]
"""One piece of a channel axis: the group that owns it (None = fixed) and its full width."""


@dataclass(frozen=True)
class LayerShape:
    """Everything a latency table needs to time a layer, except its channel counts.

    Two layers with equal ``LayerShape`` (ResNet-50 repeats most of its shapes) share one table entry.
    ``groups`` is the conv's group count as a *kind* for the table: ``1`` for a dense conv, ``0`` for
    depthwise (groups == in == out channels, so latency depends on one width), ``g > 1`` for a grouped
    conv with a fixed number of groups.
    """

    kind: str  # "conv2d" | "linear"
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)  # input spatial size; (1, 1) for linear
    batch: int = 1
    dtype: str = "float32"
    bias: bool = False

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv2d" and self.groups == 0

    def key(self) -> str:
        """A stable, human-readable key used in table files."""
        if self.kind == "linear":
            return f"linear|b{self.batch}|{self.dtype}|bias{int(self.bias)}"
        kh, kw = self.kernel
        return (
            f"conv2d|k{kh}x{kw}|s{self.stride[0]}x{self.stride[1]}|p{self.padding[0]}x{self.padding[1]}"
            f"|d{self.dilation[0]}x{self.dilation[1]}|g{self.groups}|{self.in_hw[0]}x{self.in_hw[1]}"
            f"|b{self.batch}|{self.dtype}|bias{int(self.bias)}"
        )


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer whose cost depends on prunable widths."""

    name: str  # qualified module name, e.g. "layer1.0.conv1"
    shape: LayerShape
    in_slices: tuple[Slice, ...]  # channel pieces of its input, in order
    out_slices: tuple[Slice, ...]  # channel pieces of its output, in order
    in_repeat: int = 1  # linear after flatten(C,H,W): each channel is H*W input features

    @property
    def in_channels(self) -> int:
        return sum(n for _, n in self.in_slices)

    @property
    def out_channels(self) -> int:
        return sum(n for _, n in self.out_slices)


@dataclass(frozen=True)
class OtherOp:
    """A non-conv op (BatchNorm, activation, add, pool, ...) whose cost scales with channel widths.

    The latency predictor models these from the profiling run instead of ignoring them.
    """

    name: str  # fx node name or module name
    kind: str  # "batchnorm", "relu", "add", "maxpool", "avgpool", "cat", "mul", ...
    slices: tuple[Slice, ...]  # channel pieces of its (first) input
    hw: tuple[int, int]  # spatial size of its output
    batch: int = 1


@dataclass(frozen=True)
class Member:
    """One place where a group's channels live in a module's parameters.

    ``role``:
      * ``"out"``   — dim 0 of a conv/linear weight (and its bias)
      * ``"in"``    — dim 1 of a conv/linear weight (``repeat`` consecutive features per channel after
                      a flatten)
      * ``"depthwise"`` — a depthwise conv: dim 0 of its weight, and its ``groups``/in/out counts
      * ``"norm"``  — a BatchNorm/GroupNorm-free per-channel norm: weight, bias, running stats
      * ``"param"`` — any other per-channel parameter or buffer (``attr`` names it), e.g. a layer scale
    ``offset`` is where the group's channels start in that dimension (in that dimension's index units:
    channel ``c`` of the group occupies indices ``offset + c*repeat ... offset + c*repeat + repeat - 1``).
    ``dim`` (role ``"param"`` only) is the dimension of the parameter that holds the channels.
    """

    module: str
    role: str
    offset: int = 0
    repeat: int = 1
    attr: str = ""
    dim: int = 0


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be pruned together (same indices removed from every member)."""

    name: str
    channels: int
    prunable: bool
    members: tuple[Member, ...]
    producers: tuple[str, ...] = ()  # layers whose output channels are this group
    consumers: tuple[str, ...] = ()  # layers that read this group as input
    reason: str = ""  # why not prunable, when it is not
    min_channels: int = 1  # the least it may keep (a structural minimum, e.g. grouped-conv groups)
    multiple_of: int = 1  # widths must stay a multiple of this (grouped convs)
    # Grouped convs: the group's channels split into ``blocks`` equal contiguous blocks (the conv groups)
    # and every block must keep the same number of channels. 1 = no such constraint.
    blocks: int = 1


@dataclass(frozen=True)
class ChannelGraph:
    """A frozen description of a model's channel couplings and layer shapes."""

    groups: tuple[ChannelGroup, ...]
    layers: tuple[Layer, ...]  # conv/linear, in execution order
    others: tuple[OtherOp, ...] = ()
    input_shapes: tuple[tuple[int, ...], ...] = ()
    #: ops whose channel semantics the graph does not know (their channels are frozen), "op (where)"
    unknown_ops: tuple[str, ...] = field(default=(), compare=False)
    _by_name: Mapping[str, ChannelGroup] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {g.name: g for g in self.groups})

    def group(self, name: str) -> ChannelGroup:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(
                f"no channel group named {name!r}; known groups: {sorted(self._by_name)[:20]}"
            ) from None

    @property
    def prunable_groups(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def full_widths(self) -> dict[str, int]:
        """The dense width of every group."""
        return {g.name: g.channels for g in self.groups}

    def slice_width(self, slices: tuple[Slice, ...], widths: Mapping[str, int]) -> int:
        """Width of a channel axis made of ``slices`` when groups keep ``widths`` channels."""
        return sum(n if g is None else int(widths.get(g, n)) for g, n in slices)

    def layer_widths(self, widths: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """(in, out) channels of every layer when each group keeps ``widths[name]`` channels.

        Groups missing from ``widths`` stay dense.
        """
        return {
            l.name: (self.slice_width(l.in_slices, widths), self.slice_width(l.out_slices, widths))
            for l in self.layers
        }
