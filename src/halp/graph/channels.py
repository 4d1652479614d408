"""Channel bookkeeping while walking a traced network, and the solver that turns it into groups.

Every channel axis seen during the walk is described as a *chan*: a tuple of segments, each a run of
channels ``[start, start + length)`` of one *source* (the output of a conv/linear, the network input, a
constant, or the output of an op that scrambles channels). A segment may be ``repeat``-ed: after a
flatten of ``(N, C, H, W)`` each channel covers ``H*W`` consecutive features of the new axis.

Handlers never merge groups directly; they record facts:

* ``equate(a, b)`` — the two axes must lose the same channels (an element-wise op between them);
* ``fix(a, reason)`` — these channels may never be pruned;
* ``member(...)`` — a parameter dimension of a module holds these channels.

``solve()`` then cuts every source at every boundary any fact needs, propagating cuts across
equalities until nothing changes (so a conv whose output is chunked and gated against itself ends up
as two *atoms* of one group), and joins equated atoms with union-find. The cut-refinement is what makes
split/chunk/cat compose with residual sums without special cases.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Seg:
    """Channels ``[start, start + length)`` of source ``src``; each spans ``repeat`` axis positions."""

    src: int
    start: int
    length: int
    repeat: int = 1

    @property
    def positions(self) -> int:
        return self.length * self.repeat


Chan = tuple[Seg, ...]


def chan_positions(chan: Chan) -> int:
    """Length of the tensor axis described by ``chan`` (channels × repeats)."""
    return sum(s.positions for s in chan)


def slice_chan(chan: Chan, start: int, stop: int) -> Chan | None:
    """The part of ``chan`` at axis positions ``[start, stop)``; None if a cut splits a repeated channel."""
    out: list[Seg] = []
    pos = 0
    for s in chan:
        lo, hi = max(start, pos), min(stop, pos + s.positions)
        if lo < hi:
            a, b = lo - pos, hi - pos
            if a % s.repeat or b % s.repeat:
                return None
            out.append(Seg(s.src, s.start + a // s.repeat, (b - a) // s.repeat, s.repeat))
        pos += s.positions
    return tuple(out)


def scale_repeat(chan: Chan, num: int, den: int = 1) -> Chan | None:
    """Every segment's repeat multiplied by ``num / den``; None when that is not a whole number."""
    out = []
    for s in chan:
        r = s.repeat * num
        if r % den:
            return None
        out.append(Seg(s.src, s.start, s.length, r // den))
    return tuple(out)


@dataclass
class Source:
    """Where channels come from. Only ``kind == "layer"`` sources can ever be pruned."""

    kind: str  # "layer" | "input" | "const" | "opaque"
    label: str  # layer / node name
    width: int
    reason: str = ""  # why a non-layer source is fixed


@dataclass
class MemberRecord:
    module: str
    role: str
    attr: str
    dim: int
    chan: Chan
    order: int


@dataclass(frozen=True)
class Piece:
    """One atom as it appears on an axis: at ``offset`` (axis positions), each channel ``repeat`` wide."""

    atom: int
    offset: int
    repeat: int
    length: int


@dataclass
class Solution:
    """Atoms of every source and the union-find classes joining them."""

    atoms: list[tuple[int, int, int]]  # (src, start, length)
    root: list[int]  # class representative of each atom
    reasons: dict[int, list[str]]  # class root -> why it may not be pruned
    _starts: list[list[int]] = field(repr=False)
    _first_atom: list[int] = field(repr=False)

    def pieces(self, chan: Chan) -> list[Piece]:
        """Decompose an axis into atoms (every boundary is already a cut after ``solve``)."""
        out = []
        pos = 0
        for s in chan:
            starts = self._starts[s.src]
            i = bisect.bisect_right(starts, s.start) - 1
            c = s.start
            while c < s.start + s.length:
                a = self._first_atom[s.src] + i
                _, a_start, a_len = self.atoms[a]
                if a_start != c or c + a_len > s.start + s.length:
                    raise RuntimeError("internal error: chan not aligned to atoms")  # solver invariant
                out.append(Piece(a, pos + (c - s.start) * s.repeat, s.repeat, a_len))
                c += a_len
                i += 1
            pos += s.positions
        return out


class ChannelSolver:
    """Collects channel facts during the walk; ``solve`` turns them into atoms and classes."""

    def __init__(self) -> None:
        self.sources: list[Source] = []
        self._bounds: list[set[int]] = []
        self.equalities: list[tuple[Chan, Chan, str]] = []
        self.fixes: list[tuple[Chan, str]] = []
        self.members: dict[tuple[str, str, str, int], MemberRecord] = {}

    # -- recording -------------------------------------------------------------------------------
    def new_source(self, kind: str, label: str, width: int, reason: str = "") -> Chan:
        src = len(self.sources)
        self.sources.append(Source(kind, label, width, reason))
        self._bounds.append({0, width})
        return (Seg(src, 0, width),) if width > 0 else ()

    def touch(self, chan: Chan) -> None:
        """Make sure every segment edge of ``chan`` is an atom boundary."""
        for s in chan:
            b = self._bounds[s.src]
            b.add(s.start)
            b.add(s.start + s.length)

    def equate(self, a: Chan, b: Chan, context: str) -> None:
        if chan_positions(a) != chan_positions(b):
            raise RuntimeError(
                f"internal error: {context} equates axes of {chan_positions(a)} and "
                f"{chan_positions(b)} channels"
            )
        if a == b:
            return
        self.touch(a)
        self.touch(b)
        self.equalities.append((a, b, context))

    def fix(self, chan: Chan, reason: str) -> None:
        if chan:
            self.touch(chan)
            self.fixes.append((chan, reason))

    def member(self, module: str, role: str, chan: Chan, attr: str = "", dim: int = 0) -> None:
        """Record that a parameter dimension holds ``chan``; a second call (shared module) equates."""
        key = (module, role, attr, dim)
        old = self.members.get(key)
        if old is not None:
            self.equate(old.chan, chan, f"module {module!r} called more than once")
            return
        self.touch(chan)
        self.members[key] = MemberRecord(module, role, attr, dim, chan, len(self.members))

    # -- solving ---------------------------------------------------------------------------------
    def _cuts(self, chan: Chan) -> set[int]:
        """Axis positions where ``chan`` has a boundary (segment edges and known source cuts)."""
        cuts = set()
        pos = 0
        for s in chan:
            bounds = sorted(self._bounds[s.src])
            lo = bisect.bisect_left(bounds, s.start)
            hi = bisect.bisect_right(bounds, s.start + s.length)
            for b in bounds[lo:hi]:
                cuts.add(pos + (b - s.start) * s.repeat)
            pos += s.positions
        return cuts

    def _apply_cuts(self, chan: Chan, cuts: set[int]) -> tuple[bool, bool]:
        """Add ``cuts`` (axis positions) as source boundaries. Returns (changed, misaligned)."""
        changed = misaligned = False
        pos = 0
        for s in chan:
            for p in cuts:
                if pos < p < pos + s.positions:
                    if (p - pos) % s.repeat:
                        misaligned = True
                        continue
                    b = s.start + (p - pos) // s.repeat
                    if b not in self._bounds[s.src]:
                        self._bounds[s.src].add(b)
                        changed = True
            pos += s.positions
        return changed, misaligned

    def solve(self) -> Solution:
        misaligned: set[int] = set()
        changed = True
        while changed:
            changed = False
            for i, (a, b, _) in enumerate(self.equalities):
                cuts = self._cuts(a) | self._cuts(b)
                for c in (a, b):
                    ch, mis = self._apply_cuts(c, cuts)
                    changed |= ch
                    if mis:
                        misaligned.add(i)

        atoms: list[tuple[int, int, int]] = []
        starts: list[list[int]] = []
        first: list[int] = []
        for src, bounds in enumerate(self._bounds):
            cuts = sorted(bounds)
            first.append(len(atoms))
            starts.append(cuts[:-1])
            atoms.extend((src, lo, hi - lo) for lo, hi in zip(cuts[:-1], cuts[1:]))
        sol = Solution(atoms, list(range(len(atoms))), {}, starts, first)

        parent = list(range(len(atoms)))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        fixes = list(self.fixes)
        for i, (a, b, context) in enumerate(self.equalities):
            pa, pb = sol.pieces(a), sol.pieces(b)
            aligned = i not in misaligned and len(pa) == len(pb)
            if aligned:
                for x, y in zip(pa, pb):
                    if (x.offset, x.repeat, x.length) != (y.offset, y.repeat, y.length):
                        aligned = False
            if not aligned:
                reason = f"{context}: channels meet with different feature repeats"
                fixes += [(a, reason), (b, reason)]
                continue
            for x, y in zip(pa, pb):
                rx, ry = find(x.atom), find(y.atom)
                if rx != ry:
                    parent[max(rx, ry)] = min(rx, ry)

        root = [find(a) for a in range(len(atoms))]
        reasons: dict[int, list[str]] = {}

        def add_reason(r: int, text: str) -> None:
            lst = reasons.setdefault(r, [])
            if text not in lst:
                lst.append(text)

        for a, (src, _, _) in enumerate(atoms):
            source = self.sources[src]
            if source.kind != "layer":
                add_reason(root[a], source.reason or f"channels come from {source.label!r}")
        for chan, reason in fixes:
            for p in sol.pieces(chan):
                add_reason(root[p.atom], reason)
        sol.root = root
        sol.reasons = reasons
        return sol
