"""Under torch.distributed (2 CPU processes over gloo) every rank must hold identical masks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from distributed import torchrun

TESTS = Path(__file__).resolve().parent

_WORKER = textwrap.dedent(
    """
    import sys, torch, torch.nn.functional as F
    sys.path.insert(0, sys.argv[2])
    import halp
    from fakes import FakeBackend, TinyNet
    from halp.train import setup_distributed, cleanup_distributed
    torch.set_num_threads(1)
    info = setup_distributed("cpu")
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    table = halp.profile(TinyNet(width=32), x, backend=FakeBackend(), progress=False, grid_points=5, fine_span=16)
    cfg = halp.PruneConfig(target=0.5, steps=3, interval=2, protect_stem=False)
    torch.manual_seed(0)
    model = TinyNet(width=32)  # same weights on both ranks, no DDP: gradients differ per rank
    pruner = halp.Pruner(model, x, table, cfg)
    g = torch.Generator().manual_seed(100 + info.rank)  # each rank sees different data
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights stay equal, only scores differ
    unreduced = None
    for i in range(6):
        xb, yb = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)
        F.cross_entropy(model(xb), yb).backward()
        if i == 1:
            unreduced = {n: t.clone() for n, t in pruner.importance.total.items()}  # before this step's add
        pruner.step()
        opt.step(); opt.zero_grad(); pruner.apply_masks()
    torch.save({"keep": pruner.keep, "unreduced": unreduced, "steps": len(pruner.history)},
               sys.argv[1] + f"/rank{info.rank}.pt")
    cleanup_distributed()
    """
)


def test_two_gloo_ranks_hold_identical_masks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    proc = torchrun(script, str(tmp_path), str(TESTS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 3
    # the ranks really saw different gradients: local scores differ before the all-reduce ...
    assert any(not torch.equal(r0["unreduced"][n], r1["unreduced"][n]) for n in r0["unreduced"])
    # ... yet every rank chose the same channels at every group
    assert r0["keep"].keys() == r1["keep"].keys()
    for name in r0["keep"]:
        assert torch.equal(r0["keep"][name], r1["keep"][name]), name
    assert any(k.numel() < 32 for k in r0["keep"].values())
