"""Shared helpers of the detection tests."""

from __future__ import annotations

import torch

from halp.detection import DetectorCore


def lively(det, seed: int = 0):
    """Give a from-scratch detector batch-norm statistics of real activations.

    Freshly initialised, eval-mode SSDlite outputs ~1e-14 everywhere (BN running stats at their init),
    which would make every equality below trivially true; one train-mode pass with a cumulative average
    sets the statistics to that batch's, so the outputs are O(1) and the scores differ.
    """
    for m in det.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    core = DetectorCore(det).train()
    with torch.no_grad():
        core(torch.randn(4, 3, 320, 320, generator=torch.Generator().manual_seed(seed)))
    return det.eval()
