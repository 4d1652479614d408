"""One heap state for every measurement: glibc's malloc thresholds fixed before halp times anything.

glibc returns large freed blocks to the kernel (``mmap`` / heap trimming) and adapts when it does to the
process's history. So a network whose forward pass allocates big activation buffers pays page faults on
*every* forward in a fresh process, and none in a process that once allocated more (training, a larger batch).
Measured on this project's CPU (docs/results.md, "The closed loop's readings in detection";
``benchmarks/heap_state.py``): SSDlite320's dense network at batch 1 took 3,200-4,000 minor page faults per
forward and ~40 ms in a fresh process, 0 faults and ~31 ms after a single training step or with the thresholds
fixed; its pruned network (smaller buffers) 17.5-18 ms either way. The ratio of the two, which a budget is,
read 0.45 or 0.57 by the process's past, and the closed loop (measuring inside the training process) and a
later timing (in a fresh one) disagreed by that much.

halp therefore fixes the thresholds once per process before it measures (``mallopt``), at the state the
training process was in: no page faults for buffers up to :data:`MMAP_THRESHOLD`, whatever ran before. A
deployment that runs default glibc in a fresh process reaches the same state with
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456`` in its environment.
Elsewhere (macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

#: blocks up to this size come from the heap, not from fresh ``mmap``s (32 MiB, glibc's largest allowed)
MMAP_THRESHOLD = 32 * 2**20
#: free memory kept at the heap's top before glibc trims it (256 MiB)
TRIM_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_state: dict[str, bool] = {}


def steady_heap() -> bool:
    """Fix glibc's heap thresholds for this process (once; later calls return the first answer).

    Set ``HALP_KEEP_MALLOC=1`` to leave the allocator as the process found it (measurements then depend on
    what the process allocated before).

    Returns:
        True when the thresholds are fixed (glibc), False where there is no glibc or it was left alone.
    """
    if "done" in _state:
        return _state["done"]
    done = False
    if os.environ.get("HALP_KEEP_MALLOC", "") not in ("", "0"):
        log.info("HALP_KEEP_MALLOC is set: glibc's heap thresholds left as they are")
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = getattr(libc, "mallopt", None)
        except OSError:
            mallopt = None
        if mallopt is not None:
            done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            log.debug("glibc heap thresholds fixed: mmap %d B, trim %d B (%s)", MMAP_THRESHOLD, TRIM_THRESHOLD, done)
    _state["done"] = done
    return done
