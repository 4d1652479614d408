"""Models export cannot capture give errors that say what to do; unknown ops freeze the channels they
touch instead of refusing the model; the handler registry, ignore= and leaf_modules= are the ways to
say more."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from toy_models import check_prune_matches_mask, random_keep, randomize
from torch import nn

import halp
from halp.graph import HandlerRegistry, OpContext, TensorVal, build_graph, register_handler


class DataDependentGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # python control flow on a tensor value: export cannot capture this
            return x * 2
        return x


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gate, self.c2 = nn.Conv2d(3, 8, 3), DataDependentGate(), nn.Conv2d(8, 4, 1)
        self.c0 = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        return self.c2(self.gate(y) + self.c0(y))


class CumsumNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.cumsum(self.c1(x), dim=1))


class Swish2(nn.Module):
    """A user activation kept as a leaf (e.g. a fused kernel in real life)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(2 * x)


class LeafNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.act, self.c2 = nn.Conv2d(3, 8, 3), Swish2(), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(self.act(self.c1(x))).mean((2, 3)))


class TransposedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.up, self.c2 = nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 8, 2, 2), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(F.relu(self.up(self.c1(x))))


X = torch.randn(2, 3, 10, 10)


def test_untraceable_model_names_the_failure_and_the_fixes() -> None:
    with pytest.raises(ValueError) as e:
        build_graph(Untraceable(), X)
    msg = str(e.value)
    assert "'gate'" in msg and "leaf_modules" in msg and "ignore=" in msg and "torch.cond" in msg


def test_ignore_gets_past_untraceable_code_and_freezes_its_channels() -> None:
    model = Untraceable()
    g = build_graph(model, X, ignore=["gate"])
    group = g.group("c1")
    assert not group.prunable and "ignore" in group.reason
    # the same module kept as a leaf with a handler instead: its channels stay prunable
    g2 = build_graph(model, X, leaf_modules=["gate"], handlers={DataDependentGate: "passthrough"})
    assert g2.group("c1").prunable and {"c1", "c0"} <= set(g2.group("c1").producers)
    check_prune_matches_mask(model, g2, {"c1": torch.tensor([1, 4, 6])}, X)


def test_unknown_op_freezes_its_channels_and_is_listed() -> None:
    g = build_graph(CumsumNet(), X, handlers={})
    assert not g.group("c1").prunable and "cumsum" in g.group("c1").reason
    assert g.group("c2").channels == 4
    # an ATen op without any handler: frozen, and named in unknown_ops
    reg_free = {torch.ops.aten.cumsum: lambda ctx: ctx.opaque("custom reason")}
    g2 = build_graph(CumsumNet(), X, handlers=reg_free)
    assert "custom reason" in g2.group("c1").reason


class ErfcNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.special.erfcx(self.c1(x)))


def test_op_without_handler_is_frozen_not_guessed() -> None:
    g = build_graph(ErfcNet(), X)
    assert not g.group("c1").prunable and "special_erfcx" in g.group("c1").reason
    assert any("special_erfcx" in op for op in g.unknown_ops)
    g2 = build_graph(ErfcNet(), X, handlers={torch.ops.aten.special_erfcx: "passthrough"})
    assert g2.group("c1").prunable and not g2.unknown_ops
    check_prune_matches_mask(ErfcNet(), g2, {"c1": torch.tensor([0, 3, 5])}, X)


def test_leaf_module_without_handler_is_frozen_naming_it() -> None:
    g = build_graph(LeafNet(), X, leaf_modules=[Swish2])
    assert not g.group("c1").prunable
    assert "'act'" in g.group("c1").reason and "no handler" in g.group("c1").reason
    g2 = build_graph(TransposedNet(), X)
    assert not g2.group("c1").prunable and "conv_transpose2d" in g2.group("c1").reason
    # traced through (the default for user modules), it needs no handler at all
    assert build_graph(LeafNet(), X).group("c1").prunable


def test_handlers_argument_is_local_to_the_call() -> None:
    g = build_graph(LeafNet(), X, leaf_modules=[Swish2], handlers={Swish2: "passthrough"})
    assert g.group("c1").prunable
    assert not build_graph(LeafNet(), X, leaf_modules=[Swish2]).group("c1").prunable  # registry unchanged


def test_register_handler_decorator_with_a_custom_function() -> None:
    class Gate(nn.Module):  # a leaf that multiplies two same-shaped inputs
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a * torch.sigmoid(b)

    calls = []

    @register_handler(Gate)
    def _gate(ctx: OpContext) -> TensorVal:
        a, b = ctx.tensors()
        ctx.equate(a, b)
        calls.append(ctx.name)
        out = ctx.passthrough(a)
        ctx.other("gate", a, out)
        return out

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.gate, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), Gate(), nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.gate(self.a(x), self.b(x)))

    model = Net()
    g = build_graph(model, X, leaf_modules=[Gate])
    assert calls == ["gate"] and set(g.group("a").producers) == {"a", "b"}
    assert any(o.kind == "gate" for o in g.others)
    check_prune_matches_mask(model, g, random_keep(g, torch.Generator().manual_seed(0)), X)


def test_handler_returning_garbage_is_reported() -> None:
    with pytest.raises(ValueError, match="must return the op's output"):
        build_graph(LeafNet(), X, leaf_modules=[Swish2], handlers={Swish2: lambda ctx: None})


def test_registry_rejects_bad_targets_and_kinds() -> None:
    reg = HandlerRegistry()
    with pytest.raises(ValueError, match="unknown handler kind"):
        reg.register(Swish2, "elementwsie")
    with pytest.raises(ValueError, match="nn.Module subclass"):
        reg.register(int, "passthrough")
    with pytest.raises(ValueError, match="cannot register"):
        reg.register(42, "passthrough")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"example_inputs": [1, 2]}, "example_inputs must be a tensor"),
        ({"example_inputs": torch.randn(2, 5, 10, 10)}, "failed"),
        ({"handlers": {42: "passthrough"}}, "cannot register"),
        ({"ignore": ["no.such.module"]}, "no submodule named 'no.such.module'"),
        ({"leaf_modules": [3]}, "qualified module names or nn.Module classes"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"example_inputs": X, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_graph(LeafNet(), **args)


def test_unbatched_conv_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="batched"):
        build_graph(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(3, 8, 8))


class HardCoded(nn.Module):
    """Channel counts and positions written into forward: pruning must not touch what they pin."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 1), nn.Conv2d(8, 12, 1)
        self.bn = nn.BatchNorm2d(12)
        self.c4 = nn.Conv2d(13, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        a = self.c1(x).view(n, 8, -1).view(n, 8, 10, 10)  # literal channel count
        lo, hi = self.bn(self.c3(a)).chunk(2, dim=1)  # equal halves: coupled, still prunable
        gated = lo * hi.sigmoid()
        d = self.c2(a)
        e, e2 = d[:, 2:], d.narrow(1, 0, 3)  # pin channels 0..1, then 0..2
        return self.fc(self.c4(torch.cat([gated, e, e2], 1)).mean((2, 3)))


def test_hard_coded_channel_counts_pin_channels() -> None:
    model = randomize(HardCoded()).eval()
    raw = build_graph(model, X)  # the capture alone sees concrete sizes: the literal 8 looks adaptive
    assert raw.group("c1").prunable
    g = halp.build_graph(model, X)  # the checked graph prunes once and freezes what is not exact
    assert not g.group("c1").prunable and "changes the model's outputs" in g.group("c1").reason
    c3 = g.group("c3")
    assert c3.prunable and c3.channels == 6
    assert {(m.module, m.offset) for m in c3.members if m.role == "out"} == {("c3", 0), ("c3", 6)}
    assert ("bn", "norm", 6) in {(m.module, m.role, m.offset) for m in c3.members}
    assert [(gr.name, gr.channels, gr.prunable) for gr in g.groups if gr.name.startswith("c2")] == [
        ("c2", 2, False), ("c2@2", 1, False), ("c2@3", 3, True)
    ]
    assert "fixed positions" in g.group("c2").reason
    c4 = next(l for l in g.layers if l.name == "c4")
    assert c4.in_slices == (("c3", 6), ("c2@2", 1), ("c2@3", 3), ("c2", 2), ("c2@2", 1))
    for seed in range(3):
        check_prune_matches_mask(model, g, random_keep(g, torch.Generator().manual_seed(seed)), X)
