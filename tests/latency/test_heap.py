"""One heap state for every measurement (halp.latency.heap).

In a fresh process, glibc hands a network's big activation buffers back to the kernel after every forward
and page-faults them in again on the next; after the process once allocated more (training) it does not.
The test counts minor page faults per forward in fresh interpreters (no clock involved).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc's mallopt only")

PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from torch import nn
    torch.set_num_threads(1)
    # a forward pass whose buffers are 4.5-9 MiB each: above glibc's starting mmap threshold (128 KiB),
    # below halp's fixed one (32 MiB)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(64, 8, 1)).eval()
    x = torch.randn(1, 3, 192, 192)
    if sys.argv[1] == "measure":  # what halp's measurement does first
        import halp
        halp.measure_latency(nn.Identity(), torch.zeros(1), warmup=1, repeats=1, rounds=1)
    def faults():
        with torch.inference_mode():
            for _ in range(3):
                net(x)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                net(x)
            return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
    print(json.dumps({"faults_per_forward": faults()}))
""")


def _faults(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "HALP_KEEP"))}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["faults_per_forward"]


@glibc
def test_a_halp_measurement_stops_the_page_faults_of_big_buffers():
    default = _faults("default")
    steady = _faults("measure")
    # 2 of the buffers are 4.5-9 MiB (1100-2300 pages each): glibc faults them in on every forward by default
    assert default > 1000, default
    assert steady < 50, steady


def test_steady_heap_answers_once_and_can_be_turned_off(monkeypatch):
    from halp.latency import heap

    monkeypatch.setattr(heap, "_state", {})
    monkeypatch.setenv("HALP_KEEP_MALLOC", "1")
    assert heap.steady_heap() is False
    monkeypatch.delenv("HALP_KEEP_MALLOC")
    assert heap.steady_heap() is False  # the first answer stands for the process
