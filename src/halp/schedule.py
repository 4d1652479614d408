"""Exponential latency targets for the k pruning steps (HALP-SPEC section 5).

Pruning is spread over ``k`` steps so the network can recover between them. The targets fall
geometrically, ``L_t = L_0^(1 - t/k) * L_k^(t/k)``: early steps remove a larger *fraction* of
the remaining latency while there is redundancy to spare, and the final step lands exactly on the budget.
"""

from __future__ import annotations

import math


def exponential_targets(dense_ms: float, final_ms: float, steps: int) -> list[float]:
    """Latency target after each of ``steps`` pruning steps, ending exactly at ``final_ms``.

    Args:
        dense_ms: latency of the unpruned network, ``L_0``.
        final_ms: the budget, ``L_k``.
        steps: the number of pruning steps ``k``.

    Returns:
        ``[L_1, ..., L_k]``, non-increasing, ``L_k == final_ms``.

    Raises:
        ValueError: on non-positive latencies or step counts.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (dense_ms > 0 and final_ms > 0 and math.isfinite(dense_ms) and math.isfinite(final_ms)):
        raise ValueError(f"latencies must be positive and finite, got dense={dense_ms}, final={final_ms}")
    if final_ms > dense_ms:
        raise ValueError(
            f"the budget {final_ms:.4g} ms is above the dense latency {dense_ms:.4g} ms: nothing to prune; "
            "lower the target"
        )
    targets = [dense_ms ** (1 - t / steps) * final_ms ** (t / steps) for t in range(1, steps + 1)]
    targets[-1] = final_ms  # no rounding drift on the last step
    return targets


def pruning_iterations(start: int, interval: int, steps: int) -> list[int]:
    """The training iterations (1-based counts of ``Pruner.step`` calls) after which a pruning step runs.

    Importance is accumulated over ``interval`` minibatches before each step, so the first step runs after
    ``start + interval`` calls.
    """
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    return [start + interval * t for t in range(1, steps + 1)]
