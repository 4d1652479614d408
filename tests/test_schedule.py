import math

import pytest

from halp.schedule import exponential_targets, pruning_iterations


def test_targets_first_last_and_monotone():
    t = exponential_targets(100.0, 30.0, 30)
    assert len(t) == 30
    assert t[-1] == 30.0
    assert t[0] == pytest.approx(100.0 * (0.3 ** (1 / 30)))
    assert all(a >= b for a, b in zip(t, t[1:]))
    # geometric: constant ratio between consecutive targets
    ratios = [b / a for a, b in zip(t, t[1:])]
    assert max(ratios) - min(ratios) < 1e-9


def test_single_step_is_the_budget():
    assert exponential_targets(10.0, 4.0, 1) == [4.0]


@pytest.mark.parametrize("args", [(10.0, 20.0, 3), (10.0, 5.0, 0), (0.0, 1.0, 3), (10.0, math.nan, 3)])
def test_bad_targets_raise(args):
    with pytest.raises(ValueError):
        exponential_targets(*args)


def test_pruning_iterations():
    assert pruning_iterations(0, 40, 3) == [40, 80, 120]
    assert pruning_iterations(10, 5, 2) == [15, 20]
    with pytest.raises(ValueError):
        pruning_iterations(0, 0, 3)
