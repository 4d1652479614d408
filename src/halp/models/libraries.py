"""Models from torchvision, timm and Ultralytics, named ``"torchvision:resnet50"``, ``"timm:…"``, ``"yolo:…"``.

Users prune the models they already have, and those come from these libraries, so halp builds them with
the libraries' own constructors instead of copying their code. Every build is offline by construction:
torchvision gets ``weights=None, weights_backbone=None``, timm ``pretrained=False`` and Ultralytics a
``DetectionModel`` from the YAML bundled with the package (``YOLO_OFFLINE=1``); a trained model's weights
come from a local file (``halp.models.create(..., weights="model.safetensors")``).

Each library is imported only when one of its names is used, so halp itself needs none of them (they are
the ``vision`` and ``yolo`` extras).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

__all__ = ["LIBRARIES", "Library", "check_offline", "library_of", "stem_for_in_chans"]

# Keyword arguments that would make a library fetch weights from the network; halp refuses them.
_DOWNLOADING = ("pretrained", "weights", "weights_backbone", "checkpoint_path", "pretrained_cfg_overlay")


@dataclass(frozen=True)
class Library:
    """How one library's models are listed, sized and built."""

    prefix: str
    package: str  # the import name
    extra: str  # the halp extra that installs it
    names: Callable[[], list[str]]
    is_model: Callable[[str], bool]
    input_size: Callable[[str, dict[str, Any]], tuple[int, int, int]]
    build: Callable[[str, dict[str, Any]], nn.Module]

    def available(self) -> bool:
        """Whether the library is installed (checked without importing it)."""
        return importlib.util.find_spec(self.package) is not None

    def require(self) -> None:
        if not self.available():
            raise ValueError(
                f"{self.prefix}: models need the {self.package} package: pip install 'halp[{self.extra}]' "
                f"(or pip install {self.package})"
            )


# --------------------------------------------------------------------------------------------- torchvision
def _tv() -> Any:
    import torchvision.models

    return torchvision.models


@functools.lru_cache(maxsize=1)
def _tv_detection() -> frozenset[str]:
    models = _tv()
    return frozenset(models.list_models(module=models.detection))


@functools.lru_cache(maxsize=1)
def _tv_names() -> tuple[str, ...]:
    models = _tv()
    return tuple(sorted(set(models.list_models(module=models)) | _tv_detection()))


def _tv_input_size(name: str, kwargs: dict[str, Any]) -> tuple[int, int, int]:
    if name in _tv_detection():
        # what the detector's own transform resizes a square image to (min_size), so a larger or smaller
        # example would be resized to this anyway
        match = re.search(r"(300|320)", name)
        side = int(match.group(1)) if match else 800
    else:
        side = 299 if name == "inception_v3" else int(kwargs.get("image_size", 224))
    return (int(kwargs.get("in_chans", 3)), side, side)


def stem_for_in_chans(model: nn.Module, in_chans: int) -> None:
    """Replaces the first convolution of ``model`` by one reading ``in_chans`` channels.

    torchvision's classifiers hard-code RGB input; the bundled data sets (grey-scale digits) and
    multi-spectral users need another count. The new conv keeps every other setting and gets the
    Kaiming-normal (fan_out) initialisation torchvision's CNNs use.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            break
    else:
        raise ValueError(f"{type(model).__name__} has no Conv2d whose input channels in_chans could set")
    if module.in_channels == in_chans:
        return
    if module.groups != 1:
        raise ValueError(f"{type(model).__name__}'s first conv {name!r} is grouped; in_chans cannot change it")
    conv = nn.Conv2d(in_chans, module.out_channels, module.kernel_size, stride=module.stride,
                     padding=module.padding, dilation=module.dilation, bias=module.bias is not None,
                     padding_mode=module.padding_mode)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, conv)


def _tv_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    models = _tv()
    kwargs = dict(kwargs)
    in_chans = kwargs.pop("in_chans", 3)
    if name in _tv_detection():
        if in_chans != 3:
            raise ValueError(f"torchvision:{name}: detectors normalise RGB images; in_chans must be 3")
        return _call(f"torchvision:{name}", models.get_model, name, weights=None, weights_backbone=None, **kwargs)
    model = _call(f"torchvision:{name}", models.get_model, name, weights=None, **kwargs)
    stem_for_in_chans(model, in_chans)
    return model


# -------------------------------------------------------------------------------------------------- timm
def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _timm_is_model(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


def _timm_input_size(name: str, kwargs: dict[str, Any]) -> tuple[int, int, int]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    side = kwargs.get("img_size")
    h, w = (side, side) if isinstance(side, int) else (size[1], size[2])
    return (int(kwargs.get("in_chans", size[0])), int(h), int(w))


def _timm_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    return _call(f"timm:{name}", timm.create_model, name, pretrained=False, **kwargs)


# ---------------------------------------------------------------------------------------------- Ultralytics
_YOLO_TASK_SUFFIXES = ("-cls", "-seg", "-pose", "-obb", "-world", "-rtdetr", "-sem", "-depth")


@functools.lru_cache(maxsize=1)
def _yolo_names() -> tuple[str, ...]:
    """Detection model names from the YAMLs bundled with Ultralytics, each scale spelled out (yolov8n …).

    Read from the package's files without importing it (importing Ultralytics takes seconds).
    """
    import yaml

    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return ()
    root = Path(list(spec.submodule_search_locations)[0]) / "cfg" / "models"
    names: set[str] = set()
    for path in root.rglob("*.yaml"):
        stem = path.stem
        if not stem.startswith("yolo") or stem.startswith("yoloe") or any(s in stem for s in _YOLO_TASK_SUFFIXES):
            continue
        base = re.match(r"yolo(v)?\d+", stem)
        scales = (yaml.safe_load(path.read_text()) or {}).get("scales") or {}
        if base and base.end() == len(stem.split("-")[0]) and scales:  # yolov8.yaml, yolov8-p2.yaml
            names.update(stem[: base.end()] + scale + stem[base.end():] for scale in scales)
        else:  # the file is one model (yolov10n.yaml, yolov3-tiny.yaml)
            names.add(stem)
    return tuple(sorted(names))


_YOLO_KWARGS = ("num_classes", "in_chans", "verbose")


def _yolo_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    unknown = sorted(set(kwargs) - set(_YOLO_KWARGS))
    if unknown:
        raise ValueError(f"yolo:{name}: unknown keyword argument(s) {unknown}; it accepts {', '.join(_YOLO_KWARGS)}")
    # Ultralytics reads this when imported; it builds from the bundled YAML and downloads nothing either way.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.nn.tasks import DetectionModel

    return _call(f"yolo:{name}", DetectionModel, f"{name}.yaml", ch=kwargs.get("in_chans", 3),
                 nc=kwargs.get("num_classes", 80), verbose=kwargs.get("verbose", False))


# ------------------------------------------------------------------------------------------------- shared
def _call(label: str, constructor: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """Calls a library constructor, turning its complaints about arguments into ValueErrors that say so."""
    try:
        return constructor(*args, **kwargs)
    except TypeError as exc:
        raise ValueError(f"{label}: the library refused the arguments {_shown(kwargs)}: {exc}") from exc
    except (ValueError, AssertionError, RuntimeError, KeyError) as exc:
        raise ValueError(f"{label}: cannot build it with {_shown(kwargs)}: {type(exc).__name__}: {exc}") from exc


def _shown(kwargs: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + "}"


LIBRARIES: dict[str, Library] = {
    "torchvision": Library("torchvision", "torchvision", "vision", lambda: list(_tv_names()),
                           lambda n: n in _tv_names(), _tv_input_size, _tv_build),
    "timm": Library("timm", "timm", "vision", _timm_names, _timm_is_model, _timm_input_size, _timm_build),
    "yolo": Library("yolo", "ultralytics", "yolo", lambda: list(_yolo_names()), lambda n: n in _yolo_names(),
                    lambda n, kw: (int(kw.get("in_chans", 3)), 640, 640), _yolo_build),
}


def library_of(name: str) -> tuple[Library, str]:
    """``"timm:resnet18"`` → (timm's Library, ``"resnet18"``); refuses unknown prefixes and libraries missing."""
    prefix, _, model = name.partition(":")
    if prefix not in LIBRARIES:
        raise ValueError(
            f"unknown model library {prefix!r} in {name!r}; library names start with "
            f"{', '.join(p + ':' for p in LIBRARIES)}"
        )
    library = LIBRARIES[prefix]
    library.require()
    return library, model


def check_offline(name: str, kwargs: dict[str, Any]) -> None:
    """Refuses arguments that would make a library download weights."""
    asked = [k for k in _DOWNLOADING if k in kwargs]
    if asked:
        raise ValueError(
            f"{name}: {asked} would download weights; halp never downloads. Build the architecture and load a "
            "local state dict instead: halp.models.create(name, weights='model.safetensors' or '.pth')"
        )

