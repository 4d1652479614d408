"""The prefix knapsack: exact against brute force, safe on capacity, deterministic, clear errors."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from halp import knapsack
from halp.knapsack import solve, solve_detailed, solve_greedy_reference

TOL = 1e-9


def prefix(arrs, keep):
    return float(sum(np.sum(a[:k]) for a, k in zip(arrs, keep)))


def brute_force(costs, values, capacity, lo, hi):
    """Best value over all prefix combinations within capacity (None when nothing fits)."""
    best = None
    for keep in itertools.product(*[range(l, h + 1) for l, h in zip(lo, hi)]):
        if prefix(costs, keep) <= capacity + TOL:
            v = prefix(values, keep)
            if best is None or v > best:
                best = v
    return best


def cheapest(costs, lo, hi):
    return sum(min(np.concatenate(([0.0], np.cumsum(c)))[l : h + 1]) for c, l, h in zip(costs, lo, hi))


@st.composite
def instances(draw, on_grid: bool):
    groups = draw(st.integers(1, 4))
    costs, values, lo, hi = [], [], [], []
    for _ in range(groups):
        n = draw(st.integers(0, 5))
        if on_grid:
            c = draw(st.lists(st.integers(-3, 6), min_size=n, max_size=n))
        else:
            c = draw(st.lists(st.floats(-2, 5, allow_nan=False).map(lambda x: round(x, 3)), min_size=n, max_size=n))
        v = draw(st.lists(st.floats(-1, 10, allow_nan=False).map(lambda x: round(x, 3)), min_size=n, max_size=n))
        low = draw(st.integers(0, n))
        high = draw(st.integers(low, n)) if draw(st.booleans()) else n
        costs.append(np.array(c, dtype=float))
        values.append(np.array(v, dtype=float))
        lo.append(low)
        hi.append(high)
    base = cheapest(costs, lo, hi)
    extra = draw(st.integers(0, 14)) if on_grid else draw(st.floats(0, 14, allow_nan=False))
    return costs, values, base + extra, lo, hi


def check_feasible(costs, keep, capacity, lo, hi):
    assert np.all(keep >= np.asarray(lo)) and np.all(keep <= np.asarray(hi))
    assert prefix(costs, keep) <= capacity + 1e-7 * max(1.0, abs(capacity))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(on_grid=True))
def test_exact_on_grid_equals_brute_force(inst):
    costs, values, capacity, lo, hi = inst
    r = solve_detailed(costs, values, capacity, min_keep=lo, max_keep=hi, resolution=1.0)
    check_feasible(costs, r.keep, capacity, lo, hi)
    assert r.total_value == pytest.approx(brute_force(costs, values, capacity, lo, hi), abs=1e-9)
    assert r.total_value == pytest.approx(prefix(values, r.keep), abs=1e-9)
    assert r.total_cost == pytest.approx(prefix(costs, r.keep), abs=1e-9)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(on_grid=False))
def test_off_grid_within_slack_and_never_over(inst):
    costs, values, capacity, lo, hi = inst
    r = solve_detailed(costs, values, capacity, min_keep=lo, max_keep=hi)
    check_feasible(costs, r.keep, capacity, lo, hi)
    best = brute_force(costs, values, capacity, lo, hi)
    assert r.total_value <= best + 1e-9
    reduced = brute_force(costs, values, capacity - r.slack, lo, hi)
    if reduced is not None:
        assert r.total_value >= reduced - 1e-9
    if capacity > 0 and r.slack > 0:
        assert r.slack <= 1e-3 * capacity * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(instances(on_grid=False), st.floats(1e-6, 5))
def test_infeasible_minimums_raise_with_amount(inst, short):
    costs, values, _, lo, hi = inst
    base = cheapest(costs, lo, hi)
    with pytest.raises(ValueError, match="exceeds the capacity") as err:
        solve(costs, values, base - short, min_keep=lo, max_keep=hi)
    amount = float(re.search(r"by ([-+0-9.e]+)", str(err.value)).group(1))
    assert amount == pytest.approx(short, rel=1e-5, abs=1e-9 * (1 + abs(base)))


@settings(max_examples=100, deadline=None)
@given(instances(on_grid=False))
def test_deterministic(inst):
    costs, values, capacity, lo, hi = inst
    a = solve(costs, values, capacity, lo, hi)
    b = solve_detailed([c.copy() for c in costs], [v.copy() for v in values], capacity, lo, hi).keep
    assert a.dtype == np.int64 and np.array_equal(a, b)


@settings(max_examples=200, deadline=None)
@given(instances(on_grid=True))
def test_greedy_reference_feasible_and_never_beats_exact(inst):
    costs, values, capacity, lo, hi = inst
    costs = [np.abs(c) for c in costs]  # the paper's axis starts at zero: compare on nonnegative costs
    capacity = cheapest(costs, lo, hi) + abs(capacity - cheapest(costs, lo, hi))
    g = solve_greedy_reference(costs, values, capacity, lo, hi, resolution=1.0)
    check_feasible(costs, g, capacity, lo, hi)
    exact = solve_detailed(costs, values, capacity, lo, hi, resolution=1.0)
    assert prefix(values, g) <= exact.total_value + 1e-9


def test_exact_beats_greedy_where_one_cell_remembers_one_solution():
    # Group 1's first item is worth little, but keeping it unlocks its valuable second item. In the
    # item-by-item DP the cell for capacity 1 keeps group 0's item instead (worth more on its own), so
    # group 1's second item can never be added there: the greedy stops at 3, the optimum is 11.
    costs = [np.array([1.0]), np.array([1.0, 1.0])]
    values = [np.array([2.0]), np.array([1.0, 10.0])]
    exact = solve(costs, values, 2.0, resolution=1.0)
    greedy = solve_greedy_reference(costs, values, 2.0, resolution=1.0)
    assert exact.tolist() == [0, 2] and prefix(values, exact) == 11.0
    assert greedy.tolist() == [1, 1] and prefix(values, greedy) == 3.0


def test_ties_prefer_fewer_items():
    # zero-value items at zero or positive cost are never kept when they add nothing
    r = solve([np.array([1.0, 0.0, 1.0]), np.array([0.0, 0.0])], [np.array([3.0, 0.0, 0.0]), np.array([0.0, 0.0])], 10.0)
    assert r.tolist() == [1, 0]


def test_negative_costs_exact():
    # keeping both items is cheaper (-1) than keeping one (2): only the full prefix fits capacity 0
    r = solve_detailed([np.array([2.0, -3.0])], [np.array([1.0, 1.0])], 0.0, min_keep=1)
    assert r.keep.tolist() == [2] and r.total_cost == pytest.approx(-1.0)
    # and a budget below zero is reachable only through the negative item
    r = solve_detailed([np.array([2.0, -3.0]), np.array([1.0])], [np.array([1.0, 1.0]), np.array([5.0])], 0.0)
    assert r.keep.tolist() == [2, 1] and r.total_value == 7.0


def test_zero_costs_all_kept_when_valuable():
    r = solve([np.zeros(4)], [np.array([4.0, 3.0, 2.0, 1.0])], 0.0)
    assert r.tolist() == [4]


def test_empty_and_fixed_groups():
    assert solve([], [], 1.0).tolist() == []
    r = solve_detailed([np.array([]), np.array([1.0, 1.0])], [np.array([]), np.array([1.0, 1.0])], 1.5, min_keep=[0, 1])
    assert r.keep.tolist() == [0, 1]
    fixed = solve([np.array([5.0, 5.0])], [np.array([1.0, 1.0])], 10.0, min_keep=2, max_keep=2)
    assert fixed.tolist() == [2]


def test_default_resolution_bounds_the_loss():
    rng = np.random.default_rng(0)
    costs = [rng.uniform(0.1, 2.0, 15) for _ in range(37)]
    values = [np.sort(rng.uniform(0, 1, 15))[::-1] for _ in range(37)]
    cap = 0.5 * sum(c.sum() for c in costs)
    r = solve_detailed(costs, values, cap, min_keep=1)
    assert r.slack <= 1e-3 * cap * (1 + 1e-9)
    assert r.total_cost <= cap
    assert r.cells <= knapsack.MAX_DEFAULT_CELLS + 1
    assert r.group_cost.sum() == pytest.approx(r.total_cost)
    assert r.group_value.sum() == pytest.approx(r.total_value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(costs=[np.ones(2)], values=[np.ones(3)], capacity=1.0), "equal length"),
        (dict(costs=[np.ones(2)], values=[np.ones(2), np.ones(1)], capacity=1.0), "groups"),
        (dict(costs=[np.ones((2, 2))], values=[np.ones((2, 2))], capacity=1.0), "1-D"),
        (dict(costs=[np.array([1.0, np.nan])], values=[np.ones(2)], capacity=1.0), "finite"),
        (dict(costs=[np.ones(2)], values=[np.array([np.inf, 1.0])], capacity=1.0), "finite"),
        (dict(costs=[np.ones(2)], values=[np.ones(2)], capacity=float("nan")), "capacity"),
        (dict(costs=[np.ones(2)], values=[np.ones(2)], capacity=1.0, min_keep=3), "min_keep"),
        (dict(costs=[np.ones(2)], values=[np.ones(2)], capacity=1.0, min_keep=[1, 1]), "one entry per group"),
        (dict(costs=[np.ones(2)], values=[np.ones(2)], capacity=1.0, min_keep=1.5), "whole numbers"),
        (dict(costs=[np.ones(2)], values=[np.ones(2)], capacity=5.0, min_keep=2, max_keep=1), "exceeds max_keep"),
        (dict(costs=[np.ones(2)], values=[np.ones(2)], capacity=1.0, resolution=0.0), "resolution"),
        (dict(costs=[np.ones(2)], values=[np.ones(2)], capacity=1.0, resolution=1e-12), "coarser resolution"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        solve(**kwargs)


def test_infeasible_message_says_by_how_much():
    with pytest.raises(ValueError, match=r"costs 3, which exceeds the capacity 2 by 1 "):
        solve([np.array([1.0, 2.0])], [np.ones(2)], 2.0, min_keep=2)


def test_subnormal_capacity_is_no_free_budget():
    """Found by hypothesis: a capacity of 5e-324 made the grid step underflow to 0 (ZeroDivisionError)."""
    r = solve_detailed([np.array([1.0])], [np.array([0.0])], 5e-324, min_keep=[0], max_keep=[1])
    assert list(r.keep) == [0] and r.total_cost == 0.0 and r.slack == 0.0
