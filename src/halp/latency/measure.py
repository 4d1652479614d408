"""``halp.measure_latency``: the end-to-end measurement behind every figure.

It runs the network as users would (eager torch on CPU or CUDA, or the ONNX export in ONNX Runtime),
under inference mode, after generous warm-up, in rounds, and reports the median of all timed forwards as
the latency (``float(stats)``, ``stats.latency_ms``; see :mod:`halp.latency.timing` for why that statistic).
The model is left exactly as it was (train/eval flags restored; copies made when the backend needs
another device or dtype).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from halp.latency.backends import Backend, as_inputs, get_backend
from halp.latency.timing import LatencyStats, TimingSettings


def measure_latency(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    backend: str | Backend = "torch-cpu",
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 40,
    *,
    dtype: str = "float32",
    rounds: int = 8,
    clock: str = "wall",
    calibration_data: Any = None,
) -> LatencyStats:
    """Measure the latency of one forward pass of ``model``.

    Args:
        model: the network (dense or slim).
        example_inputs: a tensor or tuple of tensors; their batch is the measured batch.
        backend: a name from :data:`halp.latency.BACKENDS` or a :class:`Backend`.
        threads: intra-op threads while measuring (None: torch's current), restored afterwards.
        warmup: warm-up forwards (at least; warm-up also lasts at least 0.2 s).
        repeats: timed forwards.
        dtype: precision to run in (torch backends).
        rounds: split the repeats into this many rounds (interleaved with the other models measured).
        clock: ``"wall"`` (latency) or ``"thread"`` (CPU time of the calling thread, threads=1 only: a
            diagnostic on shared machines, see :class:`TimingSettings`).
        calibration_data: INT8 backends: example batches to quantize the network with (None: the
            example inputs, which suffice for latency).

    Returns:
        the latency (``latency_ms``, also ``float(stats)``), median, interquartile range, mean, all samples
        and each round's median, in ms.
    """
    return measure_many([model], example_inputs, backend, threads, warmup, repeats, dtype=dtype, rounds=rounds,
                        clock=clock, calibration_data=calibration_data)[0]


def measure_many(
    models: list[nn.Module],
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    backend: str | Backend = "torch-cpu",
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 40,
    *,
    dtype: str = "float32",
    rounds: int = 8,
    clock: str = "wall",
    calibration_data: Any = None,
) -> list[LatencyStats]:
    """Measure several models interleaved (round-robin), so drift of a shared machine hits all alike.

    Use this whenever latencies are compared (dense vs pruned, predicted vs measured). Each model's latency
    is the median of its forwards; the rounds alternate the models, so a ratio of two latencies compares
    them at the same speed of the machine.
    """
    if not models:
        raise ValueError("measure_many needs at least one model")
    for name, v in (("warmup", warmup), ("repeats", repeats), ("rounds", rounds)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "warmup" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'warmup' else 'positive'} integer, got {v!r}")
    settings = TimingSettings(warmup=warmup, warmup_ms=200.0, repeats=repeats, min_time_ms=0.0, max_repeats=repeats,
                              clock=clock)
    be = get_backend(backend, dtype=dtype, threads=threads, settings=settings, calibration_data=calibration_data)
    if isinstance(backend, Backend):
        be.settings = settings
    with be:
        return be.time_models(models, as_inputs(example_inputs), rounds=min(rounds, repeats))
