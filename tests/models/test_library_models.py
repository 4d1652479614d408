"""Library models by name: build, forward, ``halp_arch`` round trip, local weights, saved slim models, offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import halp
from halp import models
from halp.cli.main import main
from halp.surgery import keep_from_widths

# (name, kwargs, example input); small inputs keep every forward well under a second
CASES = [
    ("torchvision:resnet18", {"num_classes": 7, "in_chans": 1}, (1, 1, 64, 64)),
    ("torchvision:mobilenet_v3_small", {"num_classes": 7}, (1, 3, 64, 64)),
    ("timm:resnet18", {"num_classes": 7}, (1, 3, 64, 64)),
    ("timm:mobilenetv3_small_050", {"num_classes": 7, "in_chans": 2}, (1, 2, 64, 64)),
    ("yolo:yolov8n", {"num_classes": 3}, (1, 3, 64, 64)),
    ("torchvision:ssdlite320_mobilenet_v3_large", {"num_classes": 4}, (1, 3, 64, 64)),
]
IDS = [c[0] for c in CASES]


def _build(name: str, kwargs: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create(name, **kwargs).eval()


def _tensors(out: object) -> list[torch.Tensor]:
    """Every tensor of a model output (a tensor, YOLO's (y, features) or a detector's list of dicts)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _tensors(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _forward(model: torch.nn.Module, shape: tuple[int, ...]) -> list[torch.Tensor]:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return _tensors(model(x))


@pytest.mark.parametrize(("name", "kwargs", "shape"), CASES, ids=IDS)
def test_build_forward_shape(name: str, kwargs: dict, shape: tuple[int, ...]) -> None:
    model = _build(name, kwargs, 0)
    assert model.halp_arch == {"name": name, "kwargs": kwargs}
    assert model.default_input_size[0] == shape[1] == models.input_size(name, **kwargs)[0]
    x = torch.randn(*shape)
    with torch.no_grad():
        out = model(x)
    if name.startswith("yolo:"):
        # (1, 4 box + nc, anchors): strides 8/16/32 on 64×64 give 8² + 4² + 2² = 84 anchors
        assert out[0].shape == (1, 4 + 3, 84)
    elif "ssdlite" in name:
        (det,) = out  # one image in, one dict of detections out
        assert set(det) == {"boxes", "scores", "labels"} and det["boxes"].shape[1] == 4
        assert det["labels"].numel() == 0 or int(det["labels"].max()) < 4
    else:
        assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "kwargs", "shape"), CASES, ids=IDS)
def test_halp_arch_and_weights_round_trip(name: str, kwargs: dict, shape: tuple[int, ...], tmp_path: Path) -> None:
    """A model rebuilt from its halp_arch and given the saved weights computes what the original did."""
    reference = _build(name, kwargs, 0)
    state = {k: v.detach().clone().contiguous() for k, v in reference.state_dict().items()}
    suffix = ".safetensors" if IDS.index(name) % 2 else ".pth"
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(1)
    fresh = models.create(reference.halp_arch["name"], **reference.halp_arch["kwargs"]).eval()
    before = _forward(fresh, shape)
    expected = _forward(reference, shape)
    if "ssdlite" not in name:  # random detectors may output no boxes at all; the state check below holds
        assert any(not torch.equal(a, b) for a, b in zip(before, expected)), "seeds 0 and 1 built the same"
    torch.manual_seed(1)
    loaded = models.create(name, weights=str(path), **kwargs).eval()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for a, b in zip(_forward(loaded, shape), expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "kwargs", "shape"), CASES[:1] + CASES[2:3], ids=IDS[:1] + IDS[2:3])
def test_bad_weights_file_is_a_value_error(name: str, kwargs: dict, shape: tuple[int, ...], tmp_path: Path) -> None:
    model = _build(name, kwargs, 0)
    other_head = {**kwargs, "num_classes": 5}
    torch.save(models.create(name, **other_head).state_dict(), tmp_path / "head.pth")
    with pytest.raises(ValueError, match=r"shape mismatches \(2\): .*\(5, 512\) vs the model's \(7, 512\)"):
        models.create(name, weights=str(tmp_path / "head.pth"), **kwargs)
    torch.save(models.create("resnet20").state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): .*; unexpected keys \(\d+\)"):
        models.create(name, weights=str(tmp_path / "other.pth"), **kwargs)
    torch.save(model, tmp_path / "pickled.pth")  # a whole pickled module: refused, never unpickled
    with pytest.raises(ValueError, match="not a plain state dict loadable with weights_only=True"):
        models.create(name, weights=str(tmp_path / "pickled.pth"), **kwargs)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        models.create(name, weights=str(tmp_path / "junk.safetensors"), **kwargs)
    with pytest.raises(ValueError, match="unknown suffix '.npz'"):
        (tmp_path / "w.npz").write_bytes(b"")
        models.create(name, weights=str(tmp_path / "w.npz"), **kwargs)
    with pytest.raises(ValueError, match="does not exist"):
        models.create(name, weights=str(tmp_path / "missing.pth"), **kwargs)


# torch.fx (the graph until the torch.export capture lands) traces these two; timm's MobileNetV3 and most
# timm CNNs call F.batch_norm through BatchNormAct2d, which it has no handler for.
@pytest.mark.parametrize("name", ["torchvision:mobilenet_v3_small", "timm:resnet18"])
def test_saved_slim_library_model_rebuilds_from_its_name(name: str, tmp_path: Path) -> None:
    dense = _build(name, {"num_classes": 10}, 0)
    x = torch.randn(1, 3, 64, 64)
    graph = halp.build_graph(dense, x)
    widths = {g.name: max(1, g.channels // 2) for g in graph.prunable_groups}
    slim = halp.prune_channels(dense, graph, keep_from_widths(graph, None, widths))
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in dense.parameters())
    halp.save_pruned(slim, tmp_path / "slim", widths=widths, input_shape=tuple(x.shape))
    spec = (tmp_path / "slim" / "halp_model.json").read_text()
    assert f'"name": "{name}"' in spec
    loaded = halp.load_pruned(tmp_path / "slim").eval()
    assert type(loaded) is type(dense)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), slim.eval()(x), rtol=0, atol=0)


def test_no_network_access_while_building() -> None:
    """torchvision, timm and Ultralytics models build with every socket refused (a fresh interpreter)."""
    code = """
import socket
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args[1:2] or args[:1])
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.getaddrinfo = refuse
socket.create_connection = refuse
import halp
for name in ("torchvision:resnet18", "torchvision:retinanet_resnet50_fpn", "timm:mobilenetv3_large_100",
             "yolo:yolov8n", "yolo:yolo11n"):
    halp.models.create(name, num_classes=3)
print("attempts", attempts)
"""
    src = Path(halp.__file__).parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                                 "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "attempts []" in result.stdout


def test_halp_models_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "yolo:yolo11*"]) == 0
    assert capsys.readouterr().out.split() == [f"yolo:yolo11{s}" for s in "lmnsx"]
    assert main(["models", "--sizes", "torchvision:inception*"]) == 0
    assert capsys.readouterr().out.split() == ["torchvision:inception_v3", "3x299x299"]
    assert main(["models", "nothing:*"]) == 2


def test_cli_weights_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from halp.cli.profile import load_model

    torch.manual_seed(0)
    reference = models.create("timm:resnet18", num_classes=4).eval()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model, size = load_model("timm:resnet18", num_classes=4, weights=str(tmp_path / "r18.pth"))
    assert size == (3, 224, 224)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    # the wrong head: the command fails with the keys named, no traceback
    rc = main(["-q", "export", "timm:resnet18", "--weights", str(tmp_path / "r18.pth"), "--onnx",
               str(tmp_path / "m.onnx")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "halp export: error: weights in" in err and "shape mismatches" in err and "fc.weight" in err
