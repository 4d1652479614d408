"""Fixtures of the latency tests; the tiny network and the fake backend live in ``tests/fakes.py``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from fakes import (  # noqa: E402  (re-exported for the tests of this folder)
    TRUE_A, TRUE_B, TRUE_C, FakeBackend, TinyNet, fake_layer_ms, fake_op_ms, true_e2e_ms,
)


@pytest.fixture
def tiny() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return TinyNet().eval(), torch.randn(1, 3, 8, 8)


@pytest.fixture
def fake_backend() -> type[FakeBackend]:
    return FakeBackend


@pytest.fixture
def true_e2e() -> Any:
    return true_e2e_ms
