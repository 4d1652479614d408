"""The registry's contract: names, errors that say what to do, argument checking, registration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from halp import models
from halp.models import registry


def test_list_models_and_pattern() -> None:
    names = models.list_models()
    expected = {"resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v1", "mobilenet_v2"}
    expected |= {"vgg16_bn", "resnet20", "resnet56", "mobilenet_v2_cifar", "digits_resnet"}
    assert expected <= set(names)
    resnets = ["resnet101", "resnet18", "resnet20", "resnet34", "resnet50", "resnet56"]
    assert models.list_models("resnet*") == resnets
    assert models.list_models("nothing*") == []


def test_public_name_on_halp() -> None:
    import halp

    assert halp.models.create is models.create


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet5'") as info:
        models.create("resnet5")
    message = str(info.value)
    assert "Did you mean" in message and "resnet50" in message
    assert all(name in message for name in models.list_models())
    with pytest.raises(ValueError, match="Known models"):
        models.input_size("nope")
    with pytest.raises(ValueError, match="unknown model"):
        models.create(50)  # type: ignore[arg-type]


def test_unknown_kwarg_lists_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['width_mul'\]") as info:
        models.create("mobilenet_v2", width_mul=0.5)
    assert "width_mult" in str(info.value) and "in_chans" in str(info.value)
    with pytest.raises(ValueError, match="zero_init_residual"):
        models.create("resnet18", width_mult=0.5)  # no width_mult; the message lists the options
    with pytest.raises(ValueError, match="unknown keyword"):
        models.resnet20(foo=1)  # the registered function itself validates too


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet18", {"num_classes": 0}, "num_classes must be a positive integer"),
        ("resnet20", {"num_classes": 2.5}, "num_classes must be a positive integer"),
        ("resnet20", {"num_classes": True}, "num_classes must be a positive integer"),
        ("mobilenet_v1", {"in_chans": -1}, "in_chans must be a positive integer"),
        ("mobilenet_v2", {"width_mult": 0}, "width_mult must be a number > 0"),
        ("mobilenet_v1", {"width_mult": "1"}, "width_mult must be a number > 0"),
        ("mobilenet_v2", {"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ("vgg16_bn", {"dropout": -0.1}, r"dropout must be a number in \[0, 1\)"),
        ("resnet50", {"zero_init_residual": "yes"}, "zero_init_residual must be True or False"),
        ("digits_resnet", {"widths": 64}, "widths must be a tuple"),
        ("digits_resnet", {"widths": (32, 64), "blocks": (1,)}, "equal length"),
        ("digits_resnet", {"blocks": (1, 0, 1)}, "blocks must be a positive integer"),
    ],
)
def test_bad_values_raise_value_error(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        models.create(name, **kwargs)


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def test_register_custom_model(scratch_registry: None) -> None:
    @models.register_model("tiny_test_net", input_size=(2, 8, 8))
    def tiny(*, num_classes: int = 4, in_chans: int = 2, hidden: int = 3) -> nn.Module:
        conv = nn.Conv2d(in_chans, hidden, 3)
        return nn.Sequential(conv, nn.Flatten(), nn.Linear(hidden * 36, num_classes))

    assert "tiny_test_net" in models.list_models()
    assert models.input_size("tiny_test_net") == (2, 8, 8)
    model = models.create("tiny_test_net", num_classes=5, hidden=6)
    assert model.default_input_size == (2, 8, 8)
    assert model[0].out_channels == 6
    assert model(torch.randn(3, 2, 8, 8)).shape == (3, 5)
    assert models.create("tiny_test_net", in_chans=1).default_input_size == (1, 8, 8)
    with pytest.raises(ValueError, match="already registered"):
        models.register_model("tiny_test_net", input_size=(2, 8, 8))(tiny)


def test_register_model_rejects_bad_constructors(scratch_registry: None) -> None:
    with pytest.raises(ValueError, match="must accept a keyword argument 'in_chans'"):

        @models.register_model("no_in_chans", input_size=(3, 8, 8))
        def a(*, num_classes: int = 10) -> nn.Module:
            return nn.Identity()

    with pytest.raises(ValueError, match="needs a default"):

        @models.register_model("no_default", input_size=(3, 8, 8))
        def b(*, num_classes: int, in_chans: int = 3) -> nn.Module:
            return nn.Identity()

    with pytest.raises(ValueError, match="make them agree"):

        @models.register_model("mismatch", input_size=(3, 8, 8))
        def c(*, num_classes: int = 10, in_chans: int = 1) -> nn.Module:
            return nn.Identity()

    for bad in [(3, 8), (3, 0, 8), [3, 8, 8], (3.0, 8, 8)]:
        with pytest.raises(ValueError, match=r"input_size must be a \(C, H, W\) tuple"):
            models.register_model("bad_size", input_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        models.register_model("")
    assert not {"no_in_chans", "no_default", "mismatch", "bad_size"} & set(models.list_models())
