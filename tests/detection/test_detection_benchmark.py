"""benchmarks/detection.py's own machinery: training cut into time slices resumes to the uninterrupted
result, and the uniform-width search steps toward a measured ratio of 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

import halp.data as data
from halp.detection import create_detector
from halp.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import detection as bench  # noqa: E402

CFG = TrainConfig(epochs=2, lr=0.01, weight_decay=4e-5, warmup_epochs=0.5, batch_size=2, log_every=0, seed=3)


def _detector(info):
    torch.manual_seed(0)
    return create_detector("ssdlite320_mobilenet_v3_large", info.num_classes, bn_momentum=0.1)


def test_sliced_training_resumes_to_the_uninterrupted_weights(tmp_path):
    tr, _, info = data.make_loaders("shapes-voc", 2, root=tmp_path / "voc", n_train=4, n_val=1, n_test=2, seed=1)
    whole = _detector(info)
    assert bench._train_sliced(argparse.Namespace(slice_minutes=0.0), whole, tr, CFG, tmp_path / "a.ckpt") is not None
    sliced, ckpt, rounds = _detector(info), tmp_path / "b.ckpt", 0
    tiny = argparse.Namespace(slice_minutes=1e-9)  # every step ends a slice
    while bench._train_sliced(tiny, sliced, tr, CFG, ckpt) is None:
        rounds += 1
        sliced = _detector(info)  # a fresh process: only the checkpoint carries over
        assert rounds < 10
    assert rounds == 3  # 4 steps: stopped after steps 1, 2 and 3, the 4th run finishes
    for (k, a), b in zip(whole.state_dict().items(), sliced.state_dict().values()):
        assert torch.equal(a, b), k


def test_next_multiplier_interpolates_inside_the_bracket():
    tries = [{"multiplier": 0.5, "ratio_to_halp": 0.9}]
    m = bench._next_multiplier(tries, 0.5, 1.0)
    assert m == pytest.approx(0.5 * 0.9 ** (-1 / 1.5))  # one side only: the power-law step
    tries.append({"multiplier": 0.6, "ratio_to_halp": 1.1})
    assert bench._next_multiplier(tries, 0.5, 0.6) == pytest.approx(0.55)  # regula falsi between the two
    assert bench._next_multiplier([{"multiplier": 0.9, "ratio_to_halp": 0.2}], 0.9, 1.0) == pytest.approx(0.95)


def test_matched_uniform_ends_at_exactly_the_matched_widths():
    """The uniform baseline's last step keeps the matched multiplier's widths, even where a bisection on the
    table's (non-monotone) prediction would stop at another multiplier; earlier steps are untouched."""
    import halp
    from fakes import FakeBackend, TinyNet

    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    table = halp.profile(TinyNet(width=32), x, backend=FakeBackend(), progress=False, grid_points=4, fine_span=0)
    model = TinyNet(width=32)
    cfg = halp.PruneConfig(target=0.5, steps=2, interval=1, protect_stem=False)
    pruner = bench._MatchedUniform(model, x, table, cfg, multiplier=0.37)
    matched = pruner.uniform_widths(0.37)
    g = torch.Generator().manual_seed(1)
    results = []
    for _ in range(2):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16, generator=g)),
                                          torch.randint(0, 5, (4,), generator=g)).backward()
        results.append(pruner.step())
    assert pruner.done and pruner.widths() == matched
    assert results[-1].predicted_ms == pytest.approx(pruner.predict(matched))
    assert results[0].widths != matched  # the first step is the plain uniform bisection to its own target
    plain = bench.UniformPruner(TinyNet(width=32), x, table, cfg)
    assert pruner.history[0]["widths"] == plain._allocate(None, {gr.name: torch.arange(gr.channels) for gr in plain.groups},
                                                          {gr.name: torch.ones(gr.channels) for gr in plain.groups},
                                                          pruner.history[0]["target_ms"]).widths
