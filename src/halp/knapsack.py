"""The prefix-constrained ("augmented") knapsack HALP solves at every pruning step.

Each group's items are its channel blocks in rank order, most important first. A group's latency
contribution is only right when it keeps a *prefix* of its ranking, so the decision per group is one
prefix length ``m``: a multiple-choice knapsack. We solve it exactly by dynamic programming over groups
on a discretised cost axis (``f_g(w) = max_m f_{g-1}(w - cells_g(m)) + value_g(m)``), vectorised over
the axis with numpy. Pure numpy on purpose: the solver is used by the pruner, the benchmarks and tests
without torch.

Exactness and safety, in one place:

* Costs may be zero or negative (latency staircases). Each group is shifted by its cheapest allowed
  prefix cost, so the axis starts at zero and nothing is approximated by the shift.
* Every prefix cost is rounded *up* to the grid and the capacity *down*, so the returned solution's true
  cost never exceeds ``capacity`` (up to float round-off: 1e-9 cell per group). The price is at most one cell
  per group: the result's value is at least the true optimum at ``capacity - slack`` with
  ``slack = groups_with_a_choice * resolution`` (and equals the optimum when all costs lie on the grid).
* Prefixes that can never be chosen (another prefix is no more expensive and worth more, or worth the
  same with fewer items) are dropped before the DP; on staircases that removes most items, which is
  where the speed comes from. The dropping is exact, including for ties. Each DP layer is also only
  computed over the cells it can matter for (at most what the groups so far can use; at least what
  the remaining groups could leave), which halves the work on ResNet-sized problems.
* Ties: among equal-value optima, the last group keeps the fewest items, then the one before, and so
  on (lexicographic, deterministic). Fewer items = less latency for the same importance.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_LOSS = 1e-3
"""Default bound on the discretisation loss, as a fraction of the capacity (0.1 %)."""
MAX_DEFAULT_CELLS = 1 << 18
"""Cap on the default grid: beyond it the loss bound is relaxed (logged) to keep a solve under ~0.2 s."""
MAX_TABLE_ELEMENTS = 1 << 27
"""Cap on the back-tracking table (groups x cells); an explicit resolution past it is refused."""
_REL_TOL = 1e-9
_CELL_TOL = 1e-9  # float round-off forgiven when costs are put on the grid, in cells

ArrayLike = Sequence[float] | np.ndarray
KeepArg = int | Sequence[int] | np.ndarray | None


@dataclass(frozen=True)
class KnapsackResult:
    """A solved instance, with what the pruner needs to report and refine it.

    ``group_cost``/``group_value`` are the true (undiscretised) prefix sums of each group's choice, so a
    caller can re-predict latency per group and re-solve with updated costs.
    """

    keep: np.ndarray  # (G,) int64: items kept per group (a prefix length)
    total_cost: float  # true cost of the solution, <= capacity
    total_value: float
    capacity: float
    resolution: float  # cost per grid cell
    solve_seconds: float
    slack: float  # value >= optimum at capacity - slack
    cells: int  # grid cells of the free budget (above every group's cheapest choice)
    group_cost: np.ndarray  # (G,) float64
    group_value: np.ndarray  # (G,) float64


@dataclass(frozen=True)
class _Problem:
    prefix_cost: list[np.ndarray]  # per group (n_g + 1,): cost of keeping m items, m = 0..n_g
    prefix_value: list[np.ndarray]
    lo: np.ndarray  # (G,) min items
    hi: np.ndarray  # (G,) max items
    capacity: float
    tol: float  # absolute float tolerance used for rounding and feasibility


def _keep_bounds(arg: KeepArg, name: str, sizes: np.ndarray, default: np.ndarray) -> np.ndarray:
    if arg is None:
        return default.copy()
    raw = np.asarray(arg)
    if raw.ndim == 0:
        raw = np.full(len(sizes), raw)
    if raw.shape != (len(sizes),):
        raise ValueError(f"{name} must be an int or have one entry per group ({len(sizes)}), got shape {raw.shape}")
    if not np.all(np.isfinite(raw.astype(np.float64))) or not np.all(raw == np.round(raw)):
        raise ValueError(f"{name} must hold whole numbers of items, got {raw.tolist()}")
    out = raw.astype(np.int64)
    bad = np.flatnonzero((out < 0) | (out > sizes))
    if bad.size:
        g = int(bad[0])
        raise ValueError(f"{name}[{g}] = {out[g]} is outside 0..{sizes[g]} (group {g} has {sizes[g]} items)")
    return out


def _prepare(
    costs: Sequence[ArrayLike], values: Sequence[ArrayLike], capacity: float, min_keep: KeepArg, max_keep: KeepArg
) -> _Problem:
    if len(costs) != len(values):
        raise ValueError(f"costs has {len(costs)} groups but values has {len(values)}; give one array per group")
    pc: list[np.ndarray] = []
    pv: list[np.ndarray] = []
    for g, (c, v) in enumerate(zip(costs, values)):
        c = np.asarray(c, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        if c.ndim != 1 or v.ndim != 1 or c.shape != v.shape:
            raise ValueError(
                f"group {g}: costs and values must be 1-D arrays of equal length, got shapes {c.shape} and {v.shape}"
            )
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(v))):
            raise ValueError(f"group {g}: costs and values must be finite (found NaN or inf)")
        pc.append(np.concatenate(([0.0], np.cumsum(c))))
        pv.append(np.concatenate(([0.0], np.cumsum(v))))
    try:
        capacity = float(capacity)
    except (TypeError, ValueError):
        raise ValueError(f"capacity must be a number, got {capacity!r}") from None
    if not math.isfinite(capacity):
        raise ValueError(f"capacity must be finite, got {capacity}")
    sizes = np.array([len(p) - 1 for p in pc], dtype=np.int64)
    lo = _keep_bounds(min_keep, "min_keep", sizes, np.zeros_like(sizes))
    hi = _keep_bounds(max_keep, "max_keep", sizes, sizes)
    if np.any(lo > hi):
        g = int(np.flatnonzero(lo > hi)[0])
        raise ValueError(f"group {g}: min_keep = {lo[g]} exceeds max_keep = {hi[g]}")
    scale = abs(capacity) + sum(float(np.abs(np.diff(p)).sum()) for p in pc)
    return _Problem(pc, pv, lo, hi, capacity, _REL_TOL * max(scale, 1e-300))


def _cheapest(p: _Problem) -> tuple[np.ndarray, float]:
    """Each group's cheapest allowed prefix cost, and how much capacity is left above all of them."""
    base = np.array([float(c[l : h + 1].min()) for c, l, h in zip(p.prefix_cost, p.lo, p.hi)])
    need = float(base.sum())
    if need > p.capacity + p.tol:
        excess = need - p.capacity
        rel = f" ({100 * excess / abs(p.capacity):.3g}% of it)" if p.capacity else ""
        raise ValueError(
            f"infeasible: even the cheapest choice allowed by min_keep/max_keep costs {need:.6g}, which "
            f"exceeds the capacity {p.capacity:.6g} by {excess:.6g}{rel}; lower min_keep or raise the capacity"
        )
    return base, max(p.capacity - need, 0.0)


def default_resolution(capacity: float, free: float, groups: int) -> float:
    """Grid step so that rounding loses at most 0.1 % of the capacity (the budget actually allocated).

    Each group loses less than one cell, so ``loss <= groups * resolution``; we take
    ``resolution = 0.001 * ref / groups`` with ``ref = min(capacity, free)`` (``free`` = capacity above
    every group's cheapest choice), i.e. about ``1000 * groups`` cells. Past ``MAX_DEFAULT_CELLS`` cells
    the resolution is coarsened to keep the solve fast, and the looser bound is logged.
    """
    if groups == 0 or free <= 0:
        return 1.0  # nothing to discretise: every group is fixed or there is no free budget
    ref = min(capacity, free) if capacity > 0 else free
    res = DEFAULT_LOSS * ref / groups
    if not res > 0:  # a free budget so small (subnormal) that 0.1% of it underflows: as good as none
        return 1.0
    if free / res > MAX_DEFAULT_CELLS:
        res = free / MAX_DEFAULT_CELLS
        log.info(
            "knapsack: grid capped at %d cells; discretisation loss bound is %.3g (%.3g%% of capacity)",
            MAX_DEFAULT_CELLS, groups * res, 100 * groups * res / max(abs(capacity), 1e-300),
        )
    return res


def _frontier(cells: np.ndarray, value: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """Indices of choices the DP could ever pick, in ascending item count.

    A choice is never picked when another one needs no more cells and is worth more, or is worth the
    same with fewer items (the tie rule); dropping those leaves the DP's result unchanged.
    """
    order = np.lexsort((ms, -value, cells))  # by cells, then value desc, then fewer items
    keep: list[int] = []
    best_v = -math.inf
    best_m = math.inf  # fewest items among the choices seen worth exactly best_v
    for i in order:
        v, m = value[i], ms[i]
        if v > best_v:
            best_v, best_m = v, m
            keep.append(int(i))
        elif v == best_v and m < best_m:
            best_m = m
            keep.append(int(i))
    return np.sort(np.array(keep, dtype=np.int64))


def solve_detailed(
    costs: Sequence[ArrayLike],
    values: Sequence[ArrayLike],
    capacity: float,
    min_keep: KeepArg = None,
    max_keep: KeepArg = None,
    resolution: float | None = None,
) -> KnapsackResult:
    """Solve the prefix knapsack exactly on a grid; see the module docstring for the guarantees.

    Args:
        costs: one 1-D array per group: item costs in rank order (may be zero or negative).
        values: one 1-D array per group, same shapes: item values (importance) in rank order.
        capacity: budget for the total cost of all kept items.
        min_keep: least items kept per group (int for all groups, or one per group); default 0.
        max_keep: most items kept per group; default all.
        resolution: cost per grid cell; default from :func:`default_resolution` (loss <= 0.1 %).

    Returns:
        A :class:`KnapsackResult`; ``keep[g]`` is the prefix length kept in group ``g``.

    Raises:
        ValueError: malformed input, or when the minimums alone exceed the capacity (says by how much).
    """
    t0 = time.perf_counter()
    p = _prepare(costs, values, capacity, min_keep, max_keep)
    base, free = _cheapest(p)
    G = len(p.prefix_cost)
    # Per group: allowed prefix lengths and their extra cost above the group's cheapest choice.
    ms = [np.arange(l, h + 1) for l, h in zip(p.lo, p.hi)]
    extra = [np.maximum(c[m] - b, 0.0) for c, m, b in zip(p.prefix_cost, ms, base)]
    # groups whose choice can lose to rounding: those with a costlier choice that fits the free budget
    # (a choice that does not fit is out at any resolution)
    active = sum(1 for e in extra if np.any((e > 0) & (e <= free * (1 + 1e-12))))
    if resolution is None:
        res = default_resolution(p.capacity, free, active)
    else:
        res = float(resolution)
        if not (math.isfinite(res) and res > 0):
            raise ValueError(f"resolution must be a positive number, got {resolution!r}")
    # Round costs up and the budget down, forgiving float round-off of 1e-9 cell; anything beyond
    # the budget is clipped to one cell past it (infeasible either way) before the integer cast.
    budget = min(math.floor(free / res * (1 + 1e-12) + _CELL_TOL), float(1 << 62))
    with np.errstate(over="ignore"):  # a tiny resolution: such costs are clipped just below
        cells_of = [
            np.minimum(np.ceil(np.maximum(e / res - _CELL_TOL, 0.0)), budget + 1).astype(np.int64) for e in extra
        ]
    W = int(min(budget, sum(int(k.max()) for k in cells_of)))
    if G * (W + 1) > MAX_TABLE_ELEMENTS:
        raise ValueError(
            f"resolution {res:.3g} gives {W + 1} cells x {G} groups, too large a table; use a coarser "
            f"resolution (at least {free * G / MAX_TABLE_ELEMENTS:.3g})"
        )

    frontiers = []
    for g in range(G):
        fits = cells_of[g] <= W  # never empty: the cheapest choice needs 0 cells
        m_fit, k_fit = ms[g][fits], cells_of[g][fits]
        v_fit = p.prefix_value[g][m_fit]
        idx = _frontier(k_fit, v_fit, m_fit)
        frontiers.append((m_fit[idx], k_fit[idx], v_fit[idx]))
    # Cells each layer needs: up to what its groups can use at most (f is flat beyond), and down to
    # what the later groups could still take from W (nothing below is ever read).
    most = np.array([int(fk.max()) for _, fk, _ in frontiers], dtype=np.int64)
    W = min(W, int(most.sum()))  # beyond what all groups together can use, f is flat
    hi = np.minimum(np.cumsum(most), W)
    lo = np.maximum(W - (most.sum() - np.cumsum(most)), 0)

    f = np.zeros(W + 1)  # f[w]: best value of the groups so far within w free cells (non-decreasing)
    tables: list[np.ndarray | None] = []  # per group: argmax choice for cells lo[g]..hi[g]
    for g, (fm, fk, fv) in enumerate(frontiers):
        if len(fm) == 1:  # one choice, needing 0 cells: shift the values only
            f = f + fv[0]
            tables.append(None)
            continue
        f, arg = _merge(f, fk, fv, int(lo[g]), int(hi[g]))
        tables.append(arg)

    keep = np.zeros(G, dtype=np.int64)
    w = W
    for g in range(G - 1, -1, -1):
        fm, fk, _ = frontiers[g]
        arg = tables[g]
        i = 0 if arg is None else int(arg[min(w, int(hi[g])) - int(lo[g])])  # flat above hi: same choice
        keep[g] = fm[i]
        w -= int(fk[i])
    gc = np.array([c[k] for c, k in zip(p.prefix_cost, keep)])
    gv = np.array([v[k] for v, k in zip(p.prefix_value, keep)])
    return KnapsackResult(
        keep=keep,
        total_cost=float(gc.sum()),
        total_value=float(gv.sum()),
        capacity=p.capacity,
        resolution=res,
        solve_seconds=time.perf_counter() - t0,
        slack=min(active * res, free),  # beyond the free budget the bound says nothing
        cells=W + 1,
        group_cost=gc,
        group_value=gv,
    )


def _merge(f: np.ndarray, cells: np.ndarray, vals: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """One DP layer on cells ``lo..hi``: ``new[w] = max_i f[w - cells[i]] + vals[i]``, first ``i`` on ties.

    Returns the new layer (flat above ``hi``, unused below ``lo``) and the argmax for ``lo..hi``.
    Choices are folded in one at a time with branch-free, contiguous numpy passes (a strict ``>``
    keeps the earlier, fewer-item choice on ties; masked copies are slow on irregular masks).
    """
    n = hi - lo + 1
    dtype = np.int16 if len(cells) < np.iinfo(np.int16).max else np.int32
    best = np.full(n, -np.inf)
    arg = np.zeros(n, dtype=dtype)
    seg, better, step = np.empty(n), np.empty(n, dtype=bool), np.empty(n, dtype=dtype)
    for i, (k, v) in enumerate(zip(cells.tolist(), vals.tolist())):
        first = max(lo - k, 0)  # f index read for cell max(lo, k)
        skip = first + k - lo  # cells below k cannot take this choice
        m = n - skip
        s, b, up, a, d = seg[:m], best[skip:], better[:m], arg[skip:], step[:m]
        np.add(f[first : first + m], v, out=s)
        np.greater(s, b, out=up)
        np.maximum(b, s, out=b)
        np.subtract(i, a, out=d)  # arg = i where improved: arg += (i - arg) * up
        np.multiply(d, up, out=d)
        np.add(a, d, out=a)
    new = np.empty_like(f)
    new[lo : hi + 1] = best
    new[hi + 1 :] = best[-1]
    new[:lo] = -np.inf
    return new, arg


def solve(
    costs: Sequence[ArrayLike],
    values: Sequence[ArrayLike],
    capacity: float,
    min_keep: KeepArg = None,
    max_keep: KeepArg = None,
    resolution: float | None = None,
) -> np.ndarray:
    """Items kept per group (prefix lengths); :func:`solve_detailed` documents the arguments."""
    return solve_detailed(costs, values, capacity, min_keep, max_keep, resolution).keep


def solve_greedy_reference(
    costs: Sequence[ArrayLike],
    values: Sequence[ArrayLike],
    capacity: float,
    min_keep: KeepArg = None,
    max_keep: KeepArg = None,
    resolution: float | None = None,
) -> np.ndarray:
    """The paper's Algorithm 1 (item-by-item DP with a prefix condition), for comparison only.

    Items are visited group by group in rank order over an integer capacity axis; an item may be added
    at cell ``c`` only if it is its group's first free item or its predecessor was kept in the solution
    of cell ``c - cost``. Each *item* cost is rounded to the nearest cell, as the paper's integer
    scaling does, so the true cost can exceed ``capacity`` by up to half a cell per kept item; and
    because each cell remembers one solution only, the result can be suboptimal. The first
    ``min_keep[g]`` items are taken up front. As in the paper the axis is ``0..capacity``: a negative
    item at cell ``c`` can only use solutions up to the capacity, so negative costs are handled only
    partly. ``resolution`` defaults as in :func:`solve_detailed`. Vectorised over cells; memory is one
    boolean per item and cell.
    """
    p = _prepare(costs, values, capacity, min_keep, max_keep)
    _, free_exact = _cheapest(p)  # same infeasibility error as the exact solver
    if resolution is None:
        active = sum(1 for l, h in zip(p.lo, p.hi) if h > l)
        resolution = default_resolution(p.capacity, free_exact, active)
    res = float(resolution)
    if not (math.isfinite(res) and res > 0):
        raise ValueError(f"resolution must be a positive number, got {resolution!r}")
    forced = float(sum(c[l] for c, l in zip(p.prefix_cost, p.lo)))
    W = math.floor((p.capacity - forced + p.tol) / res)
    keep = p.lo.copy()
    if W < 0:
        raise ValueError(
            f"the greedy reference's axis starts at zero, but the first min_keep items already cost "
            f"{forced:.6g} > capacity {p.capacity:.6g}; only the exact solver (solve) handles budgets "
            f"reachable through negative costs"
        )
    items = [
        (g, int(np.rint((c[j + 1] - c[j]) / res)), v[j + 1] - v[j], j == l)
        for g, (c, v, l, h) in enumerate(zip(p.prefix_cost, p.prefix_value, p.lo, p.hi))
        for j in range(l, h)
    ]
    V = np.zeros(W + 1)  # V[c]: best value within c cells over the items visited so far
    taken = np.zeros((len(items), W + 1), dtype=bool)
    for i, (_, k, v, first) in enumerate(items):
        lo_c, hi_c = max(0, k), W + min(0, k)  # cells c with c - k inside 0..W
        if lo_c > hi_c:
            continue
        src = slice(lo_c - k, hi_c - k + 1)
        cand = V[src] + v
        ok = cand > V[lo_c : hi_c + 1]
        if not first:
            ok &= taken[i - 1, src]
        new = V.copy()
        new[lo_c : hi_c + 1][ok] = cand[ok]
        taken[i, lo_c : hi_c + 1] = ok
        V = new
    c = W
    for i in range(len(items) - 1, -1, -1):
        if taken[i, c]:
            keep[items[i][0]] += 1
            c -= items[i][1]
    return keep
