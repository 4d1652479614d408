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
    aliases = {"resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v1", "mobilenet_v2", "vgg16_bn"}
    own = {"resnet20", "resnet56", "mobilenet_v2_cifar", "vgg11_cifar", "digits_resnet"}
    assert aliases | own <= set(names)
    assert set(models.list_models(zoo_only=True)) == own
    resnets = ["resnet101", "resnet18", "resnet20", "resnet34", "resnet50", "resnet56"]
    assert models.list_models("resnet*") == resnets
    assert models.list_models("nothing*") == []
    # library models, under their prefix
    assert {"torchvision:resnet50", "torchvision:ssd300_vgg16", "timm:mobilenetv3_large_100",
            "yolo:yolov8n", "yolo:yolo11n"} <= set(names)
    tv = models.list_models("torchvision:*")
    assert len(tv) == 80 + 12  # torchvision 0.29's classification and detection builders
    assert all(n.startswith("torchvision:") for n in tv)
    assert "timm:resnet18" in models.list_models("timm:resnet1*")


def test_public_name_on_halp() -> None:
    import halp

    assert halp.models.create is models.create


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet5'") as info:
        models.create("resnet5")
    message = str(info.value)
    assert "Did you mean" in message and "resnet50" in message and "torchvision:resnet50" in message
    assert all(name in message for name in [*models.list_models(zoo_only=True), *models.ALIASES])
    assert "halp models" in message and "list_models" in message  # how to see the rest
    with pytest.raises(ValueError, match="own models and aliases"):
        models.input_size("nope")
    with pytest.raises(ValueError, match="unknown model"):
        models.create(50)  # type: ignore[arg-type]
    # a bare library name points at the libraries that have it
    with pytest.raises(ValueError, match="torchvision:convnext_tiny, timm:convnext_tiny"):
        models.create("convnext_tiny")


def test_unknown_library_name_suggests_close_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'mobilenetv3_larg_100' in timm\. Did you mean "
                                         r"timm:mobilenetv3_large_100"):
        models.create("timm:mobilenetv3_larg_100")
    with pytest.raises(ValueError, match="Did you mean torchvision:resnet50"):
        models.input_size("torchvision:resnet5O")
    with pytest.raises(ValueError, match="Did you mean .*yolo:yolov8n"):
        models.create("yolo:yolov8")
    with pytest.raises(ValueError, match=r"unknown model library 'tv'.*torchvision:, timm:, yolo:"):
        models.create("tv:resnet50")


def test_unknown_kwarg_lists_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['width_mul'\]") as info:
        models.create("mobilenet_v2_cifar", width_mul=0.5)
    assert "width_mult" in str(info.value) and "in_chans" in str(info.value)
    with pytest.raises(ValueError, match="zero_init_residual"):
        models.create("resnet20", width_mult=0.5)  # no width_mult; the message lists the options
    with pytest.raises(ValueError, match="unknown keyword"):
        models.resnet20(foo=1)  # the registered function itself validates too
    # library models: the library's complaint, as a ValueError that names the model
    with pytest.raises(ValueError, match=r"torchvision:mobilenet_v2: the library refused .*'width_mul'"):
        models.create("mobilenet_v2", width_mul=0.5)
    with pytest.raises(ValueError, match=r"timm:resnet18: the library refused .*'foo'"):
        models.create("timm:resnet18", foo=1)
    with pytest.raises(ValueError, match=r"yolo:yolov8n: unknown keyword argument\(s\) \['depth'\]"):
        models.create("yolo:yolov8n", depth=2)


@pytest.mark.parametrize("kwarg", ["pretrained", "weights_backbone", "checkpoint_path"])
def test_nothing_is_downloaded(kwarg: str) -> None:
    with pytest.raises(ValueError, match="never downloads"):
        models.create("torchvision:resnet18", **{kwarg: True})


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet18", {"num_classes": 0}, "num_classes must be a positive integer"),
        ("resnet20", {"num_classes": 2.5}, "num_classes must be a positive integer"),
        ("resnet20", {"num_classes": True}, "num_classes must be a positive integer"),
        ("mobilenet_v1", {"in_chans": -1}, "in_chans must be a positive integer"),
        ("timm:resnet18", {"num_classes": "10"}, "num_classes must be a positive integer"),
        ("yolo:yolov8n", {"in_chans": 0}, "in_chans must be a positive integer"),
        ("torchvision:ssd300_vgg16", {"in_chans": 1}, "detectors normalise RGB images"),
        ("mobilenet_v2_cifar", {"width_mult": 0}, "width_mult must be a number > 0"),
        ("mobilenet_v2_cifar", {"width_mult": "1"}, "width_mult must be a number > 0"),
        ("mobilenet_v2_cifar", {"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ("resnet56", {"zero_init_residual": "yes"}, "zero_init_residual must be True or False"),
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
