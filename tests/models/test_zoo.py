"""Every model of halp's own zoo: shapes, parameter and key counts, torchvision names, init, determinism;
and the aliases of the zoo's former copies, now built by torchvision and timm.

The expected numbers are torchvision's and timm's published parameter counts and key layouts, or derived by
hand in the comments — never read back from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from halp import models

ALL = models.list_models(zoo_only=True)

# Parameters at the default num_classes (1000 ImageNet, 10 CIFAR/digits).
# The aliases, built by the libraries: torchvision's published counts, and for timm's mobilenetv1_100 the
# HALP paper's MobileNet-V1: stem 864+64; 13 blocks Σ(9·in + 2·in + in·out + 2·out) = 3,206,048;
# fc 1024·1000+1000.
ALIAS_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "mobilenet_v2": 3_504_872,
    "vgg16_bn": 138_365_992,
    "mobilenet_v1": 4_231_976,
}
ALIAS_CLASSES = {
    "resnet18": "torchvision.models.resnet.ResNet",
    "resnet34": "torchvision.models.resnet.ResNet",
    "resnet50": "torchvision.models.resnet.ResNet",
    "resnet101": "torchvision.models.resnet.ResNet",
    "mobilenet_v2": "torchvision.models.mobilenetv2.MobileNetV2",
    "vgg16_bn": "torchvision.models.vgg.VGG",
    "mobilenet_v1": "timm.models.efficientnet.EfficientNet",
}

PARAMS = {
    # option A counts 269,722 / 853,018 plus the two 1×1 shortcuts: 16·32+64 + 32·64+128 = 2,752
    "resnet20": 272_474,
    "resnet56": 855_770,
    # torchvision's mobilenet_v2 (3,504,872) with a 10-way head: − 1,281,000 + 12,810 (strides change no
    # shapes)
    "mobilenet_v2_cifar": 2_236_682,
    # convs 9,220,480 (with biases) + BN 2·2,752 + fc 5,130
    "vgg11_cifar": 9_231_114,
    # stem 432+96; layer1 2·(48·48·9+96); layer2 48·96·9+96·96·9+48·96 + 3·192; layer3 likewise ×2;
    # fc 1,930 — see test_digits_resnet_param_count for the arithmetic
    "digits_resnet": 690_970,
}

# state_dict keys, counted by hand: conv → 1 key (2 with bias), BatchNorm → 5 keys (weight, bias,
# running_mean, running_var, num_batches_tracked), Linear → 2 keys.
KEYS = {
    # stem 6; block 1 (no expansion) 12; 16 blocks of 3 conv+bn 18; last 1×1 6; classifier 2
    "mobilenet_v2_cifar": 6 + 12 + 16 * 18 + 6 + 2,  # 314, torchvision mobilenet_v2's count
    # 8 convs with bias 2 + BN 5; 1 linear
    "vgg11_cifar": 8 * 7 + 2,  # 58
    "resnet20": 6 + 9 * 12 + 2 * 6 + 2,  # 128
    "resnet56": 6 + 27 * 12 + 2 * 6 + 2,  # 344
    "digits_resnet": 6 + 3 * 12 + 2 * 6 + 2,  # 56
}

# A handful of (key, shape) per model; torchvision's names (mobilenet_v2_cifar's are torchvision
# mobilenet_v2's, vgg11_cifar's features torchvision vgg11_bn's).
SAMPLE_KEYS: dict[str, dict[str, tuple[int, ...]]] = {
    "mobilenet_v2_cifar": {
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.18.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (10, 1280),
    },
    "vgg11_cifar": {
        "features.0.weight": (64, 3, 3, 3),
        "features.4.weight": (128, 64, 3, 3),
        "features.25.weight": (512, 512, 3, 3),
        "features.26.running_mean": (512,),
        "classifier.weight": (10, 512),
    },
    "resnet20": {
        "conv1.weight": (16, 3, 3, 3),
        "layer1.2.conv2.weight": (16, 16, 3, 3),
        "layer2.0.conv1.weight": (32, 16, 3, 3),
        "layer2.0.downsample.0.weight": (32, 16, 1, 1),
        "layer3.2.bn2.weight": (64,),
        "fc.weight": (10, 64),
    },
    "resnet56": {
        "layer1.8.conv1.weight": (16, 16, 3, 3),
        "layer3.0.downsample.0.weight": (64, 32, 1, 1),
        "layer3.8.conv2.weight": (64, 64, 3, 3),
        "fc.weight": (10, 64),
    },
    "digits_resnet": {
        "conv1.weight": (48, 1, 3, 3),
        "layer1.0.conv1.weight": (48, 48, 3, 3),
        "layer2.0.downsample.0.weight": (96, 48, 1, 1),
        "layer3.0.conv2.weight": (192, 192, 3, 3),
        "fc.weight": (10, 192),
    },
}

INPUT_SIZES = {
    **{n: (3, 224, 224) for n in ALIAS_PARAMS},
    **{n: (3, 32, 32) for n in ("resnet20", "resnet56", "mobilenet_v2_cifar", "vgg11_cifar")},
    "digits_resnet": (1, 32, 32),
}

_CACHE: dict[str, nn.Module] = {}


def built(name: str) -> nn.Module:
    """The default model, built once under seed 0 (vgg16_bn alone takes a second or two)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = models.create(name).eval()
    return _CACHE[name]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model_we_check() -> None:
    assert set(ALL) == set(PARAMS) == set(KEYS) == set(SAMPLE_KEYS) == set(INPUT_SIZES) - set(ALIAS_PARAMS)
    assert ALL == sorted(ALL)
    assert set(models.ALIASES) == set(ALIAS_PARAMS)


@pytest.mark.parametrize("alias", sorted(ALIAS_PARAMS))
def test_alias_builds_the_library_model(alias: str) -> None:
    """The zoo's former copies are the libraries' models now, with the same sizes and parameter counts."""
    model = built(alias)
    cls = type(model)
    assert f"{cls.__module__}.{cls.__qualname__}" == ALIAS_CLASSES[alias]
    assert n_params(model) == ALIAS_PARAMS[alias]
    assert model.halp_arch == {"name": models.ALIASES[alias], "kwargs": {}}
    assert models.input_size(alias) == model.default_input_size == INPUT_SIZES[alias]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_input_size(name: str) -> None:
    assert models.input_size(name) == INPUT_SIZES[name]
    assert built(name).default_input_size == INPUT_SIZES[name]


@pytest.mark.parametrize("name", ALL)
def test_forward_shape_and_finite(name: str) -> None:
    model = built(name)
    num_classes = 10
    with torch.no_grad():
        out = model(torch.randn(2, *model.default_input_size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    assert out.std() > 0  # the two samples and the classes are not all equal


@pytest.mark.parametrize("name", ALL)
def test_param_count(name: str) -> None:
    assert n_params(built(name)) == PARAMS[name]


@pytest.mark.parametrize("name", ALL)
def test_state_dict_keys_and_shapes(name: str) -> None:
    state = built(name).state_dict()
    assert len(state) == KEYS[name]
    for key, shape in SAMPLE_KEYS[name].items():
        assert key in state, f"{name}: missing {key}"
        assert tuple(state[key].shape) == shape, key


@pytest.mark.parametrize("name", ALL)
def test_create_is_deterministic_and_state_dict_round_trips(name: str) -> None:
    reference = built(name)
    torch.manual_seed(0)
    same = models.create(name)
    for (k1, v1), (k2, v2) in zip(reference.state_dict().items(), same.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1

    torch.manual_seed(1)
    other = models.create(name).eval()
    assert not all(
        torch.equal(a, b) for a, b in zip(other.parameters(), reference.parameters())
    ), "a different seed must give different weights, else the round trip below proves nothing"
    result = other.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in reference.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    if n_params(reference) < 5_000_000:
        x = torch.randn(1, *reference.default_input_size)
        with torch.no_grad():
            torch.testing.assert_close(other(x), reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_fx_traceable(name: str) -> None:
    """The channel graph is built with torch.fx: every zoo model must trace and compute the same thing."""
    model = built(name)
    traced = torch.fx.symbolic_trace(model)
    c, h, w = model.default_input_size
    x = torch.randn(1, c, min(h, 64), min(w, 64))  # adaptive pooling heads accept smaller maps
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("name", ALL)
def test_torchvision_init(name: str) -> None:
    model = built(name)
    for module_name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), module_name
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            assert torch.all(module.bias == 0), module_name
    # kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out · kh · kw)); check the biggest conv
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    conv = max(convs, key=lambda m: m.weight.numel())
    out_c, _, kh, kw = conv.weight.shape
    expected = math.sqrt(2.0 / (out_c * kh * kw))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if name.startswith(("mobilenet", "vgg")):  # N(0, 0.01), zero bias
        for lin in linears:
            assert torch.all(lin.bias == 0)
            # std over 5,130 or 12,810 weights is within a few % of 0.01
            assert lin.weight.std().item() == pytest.approx(0.01, rel=0.1)
    else:  # ResNets keep PyTorch's default Linear init: U(±1/sqrt(fan_in))
        (fc,) = linears
        bound = 1 / math.sqrt(fc.in_features)
        assert fc.weight.abs().max() <= bound and fc.weight.abs().max() > 0.9 * bound


@pytest.mark.parametrize(
    "name",
    ["resnet18", "mobilenet_v1", "mobilenet_v2_cifar", "resnet20", "vgg11_cifar", "digits_resnet"],
)
def test_num_classes_and_in_chans(name: str) -> None:
    """Also through the aliases: timm takes in_chans itself, torchvision's first conv is replaced."""
    model = models.create(name, num_classes=7, in_chans=2).eval()
    assert model.default_input_size == (2, *INPUT_SIZES[name][1:])
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 2
    size = (2, 64, 64) if INPUT_SIZES[name][1] > 64 else model.default_input_size
    with torch.no_grad():
        assert model(torch.randn(1, *size)).shape == (1, 7)


def test_resnet50_is_v1_5_and_zero_init_residual() -> None:
    model = built("resnet50")
    assert model.layer2[0].conv1.stride == (1, 1)
    assert model.layer2[0].conv2.stride == (2, 2)  # v1.5: stride on the 3×3
    assert model.layer2[0].downsample[0].stride == (2, 2)
    assert torch.all(model.layer1[0].bn3.weight == 1)
    zeroed = models.create("resnet50", zero_init_residual=True)
    bn3 = [
        zeroed.get_submodule(f"layer{i}.{j}.bn3")
        for i, n in zip(range(1, 5), (3, 4, 6, 3))
        for j in range(n)
    ]
    assert len(bn3) == 16 and all(torch.all(bn.weight == 0) for bn in bn3)
    assert torch.all(zeroed.layer1[0].bn2.weight == 1)  # only the last BN of each block


@pytest.mark.parametrize("name", ["resnet20", "digits_resnet"])
def test_zero_init_residual_basic_block(name: str) -> None:
    model = models.create(name, zero_init_residual=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, models.cifar_resnet.BasicBlock)]
    assert blocks
    assert all(torch.all(b.bn2.weight == 0) and torch.all(b.bn1.weight == 1) for b in blocks)
    # Each block without a shortcut is now relu(x): check one on a non-negative input.
    block = next(b for b in blocks if b.downsample is None)
    x = torch.rand(1, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


def test_zero_init_residual_inverted_residual() -> None:
    name = "mobilenet_v2_cifar"
    model = models.create(name, zero_init_residual=True).eval()
    blocks = [m for m in model.modules() if isinstance(m, models.mobilenetv2.InvertedResidual)]
    residual = [b for b in blocks if b.use_res_connect]
    assert len(residual) == 10
    assert all(torch.all(b.conv[-1].weight == 0) for b in residual)
    assert all(torch.all(b.conv[-1].weight == 1) for b in blocks if not b.use_res_connect)  # no sum: untouched
    x = torch.randn(1, residual[0].conv[0][0].in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(residual[0](x), x)  # the block starts as the identity
    default = models.create(name)
    assert all(torch.all(b.conv[-1].weight == 1) for b in default.modules()
               if isinstance(b, models.mobilenetv2.InvertedResidual))


def test_mobilenet_v2_cifar_structure() -> None:
    cifar = built("mobilenet_v2_cifar")
    blocks = [m for m in cifar.features if isinstance(m, models.mobilenetv2.InvertedResidual)]
    assert len(blocks) == 17
    # residual sums where stride 1 and width unchanged: stages 24(1), 32(2), 64(3), 96(2), 160(2)
    assert sum(b.use_res_connect for b in blocks) == 10
    assert isinstance(cifar.classifier[0], nn.Dropout) and cifar.classifier[0].p == 0.2
    depthwise = [m for m in cifar.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    # it keeps 32×32 through the stem and the 24-channel stage
    strides = [
        m.stride[0]
        for m in cifar.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    # stem, block 1, the two 24-channel blocks stay at stride 1; the 32-channel stage halves first
    assert strides.count(2) == 3 and strides[:5] == [1, 1, 1, 1, 2]


def test_make_divisible() -> None:
    # torchvision's rule: nearest multiple of 8, at least 8, never below 90% of the value
    assert models.make_divisible(32 * 1.0) == 32
    assert models.make_divisible(32 * 1.4) == 48  # 44.8 → 48
    assert models.make_divisible(24 * 0.5) == 16  # 12 → 16 (rounds half up)
    assert models.make_divisible(24 * 0.75) == 24  # 18 → 16 < 16.2 → 24
    assert models.make_divisible(16 * 0.25) == 8  # 4 → floor of 8
    assert models.make_divisible(1280 * 1.4) == 1792


def _mnv2_params(width_mult: float, num_classes: int) -> int:
    """Parameter count of MobileNetV2 by arithmetic: conv k·k·in/groups·out, BN 2·out, Linear."""
    md = models.make_divisible
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2)]
    setting += [(6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    c = md(32 * width_mult)
    total = 27 * c + 2 * c
    for t, ch, n, _ in setting:
        out = md(ch * width_mult)
        for _ in range(n):
            hidden = c * t
            if t != 1:
                total += c * hidden + 2 * hidden
            total += 9 * hidden + 2 * hidden + hidden * out + 2 * out
            c = out
    last = md(1280 * max(1.0, width_mult))
    return total + c * last + 2 * last + last * num_classes + num_classes


@pytest.mark.parametrize("width_mult", [0.5, 0.75, 1.0, 1.4])
def test_mobilenet_v2_width_mult(width_mult: float) -> None:
    """torchvision's mobilenet_v2 through the alias: keyword arguments reach the library's constructor."""
    model = models.create("mobilenet_v2", num_classes=100, width_mult=width_mult)
    assert n_params(model) == _mnv2_params(width_mult, 100)
    assert model.features[0][0].out_channels == models.make_divisible(32 * width_mult)
    assert model.features[18][0].out_channels == (1280 if width_mult <= 1 else 1792)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 100)
    assert _mnv2_params(1.0, 1000) == ALIAS_PARAMS["mobilenet_v2"]  # the arithmetic itself is right
    assert model.halp_arch == {"name": "torchvision:mobilenet_v2",
                               "kwargs": {"num_classes": 100, "width_mult": width_mult}}


def test_mobilenet_v1_is_timms_with_the_papers_strides() -> None:
    model = built("mobilenet_v1")  # timm:mobilenetv1_100: a stem and 13 depthwise-separable blocks
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert [m.stride[0] for m in depthwise] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert model.get_classifier().in_features == 1024


def test_digits_resnet_param_count() -> None:
    def block(cin: int, cout: int) -> int:  # two 3×3 convs + BNs, 1×1 shortcut when widths differ
        shortcut = cin * cout + 2 * cout if cin != cout else 0
        return 9 * cin * cout + 9 * cout * cout + 4 * cout + shortcut

    expected = 9 * 48 + 2 * 48 + block(48, 48) + block(48, 96) + block(96, 192) + 192 * 10 + 10
    assert expected == PARAMS["digits_resnet"]
    wide = models.create("digits_resnet", widths=(32, 64), blocks=(2, 1))
    assert n_params(wide) == 9 * 32 + 64 + 2 * block(32, 32) + block(32, 64) + 64 * 10 + 10
