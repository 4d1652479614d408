"""One namespace for every model halp builds: its own zoo, aliases, and torchvision, timm and YOLO by name.

Commands and configs name models by string (``halp prune --model torchvision:resnet50``). Three kinds of
name resolve here:

* the zoo's own architectures, those no library provides (CIFAR ResNet-20/56, the digits demo's ResNet,
  MobileNet-V2 and VGG-11 for 32×32 inputs), registered with :func:`register_model`;
* library names ``torchvision:NAME`` (classification and detection), ``timm:NAME`` and ``yolo:NAME``
  (Ultralytics ``DetectionModel`` from its bundled YAML), see :mod:`halp.models.libraries`;
* the zoo's former short names kept as aliases of library models (``resnet50`` → ``torchvision:resnet50``,
  ``mobilenet_v1`` → ``timm:mobilenetv1_100``, see :data:`ALIASES`), because recipes and tables use them.

The registry also owns argument checking: a misspelt keyword (``width_mul=0.5``) is a ``ValueError`` that
says what the model accepts, instead of a ``TypeError`` deep inside a constructor — or worse, being
silently ignored — and every model records ``halp_arch`` (canonical name and arguments) so a saved slim
model is rebuilt from JSON alone.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from torch import nn

from halp.models import libraries
from halp.models.weights import load_weights

__all__ = ["ALIASES", "create", "input_size", "list_models", "register_model", "resolve"]

_Constructor = TypeVar("_Constructor", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Entry:
    name: str
    constructor: Callable[..., nn.Module]
    input_size: tuple[int, int, int]  # (C, H, W) with the constructor's default in_chans


_REGISTRY: dict[str, _Entry] = {}

# The zoo's former hand-written copies of library models, now built by the libraries themselves. The
# state_dict keys are the same (torchvision's; timm's mobilenetv1_100 has the HALP paper's MobileNet-V1
# widths and its 4,231,976 parameters), so checkpoints of the same architecture still load.
ALIASES: dict[str, str] = {
    "resnet18": "torchvision:resnet18",
    "resnet34": "torchvision:resnet34",
    "resnet50": "torchvision:resnet50",
    "resnet101": "torchvision:resnet101",
    "mobilenet_v2": "torchvision:mobilenet_v2",
    "vgg16_bn": "torchvision:vgg16_bn",
    "mobilenet_v1": "timm:mobilenetv1_100",
}


def _check_input_size(name: str, size: object) -> tuple[int, int, int]:
    if (
        not isinstance(size, tuple)
        or len(size) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)
    ):
        raise ValueError(
            f"register_model({name!r}): input_size must be a (C, H, W) tuple of positive ints, "
            f"got {size!r}"
        )
    return size


def register_model(
    name: str, input_size: tuple[int, int, int] = (3, 224, 224)
) -> Callable[[_Constructor], _Constructor]:
    """Register a model constructor under ``name``.

    The constructor must take keyword arguments ``num_classes`` and ``in_chans`` (with defaults). The
    decorated function is replaced by a wrapper that rejects unknown keywords with a ValueError and
    sets ``model.default_input_size`` to ``(in_chans, H, W)``, so calling it directly behaves like
    :func:`create`.

    Args:
        name: Registry name; must be new.
        input_size: ``(C, H, W)`` the model expects with its default ``in_chans``.

    Returns:
        A decorator.

    Example:
        >>> @register_model("tiny", input_size=(3, 32, 32))
        ... def tiny(*, num_classes: int = 10, in_chans: int = 3) -> nn.Module: ...
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model: name must be a non-empty string, got {name!r}")
    size = _check_input_size(name, input_size)

    def decorate(constructor: _Constructor) -> _Constructor:
        if name in _REGISTRY:
            raise ValueError(
                f"register_model: a model named {name!r} is already registered; pick another name"
            )
        params = inspect.signature(constructor).parameters
        accepted = [
            p
            for p in params.values()
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        accepted_names = [p.name for p in accepted]
        for required in ("num_classes", "in_chans"):
            if required not in accepted_names:
                raise ValueError(
                    f"register_model({name!r}): the constructor must accept a keyword argument "
                    f"{required!r}"
                )
        missing_defaults = [p.name for p in accepted if p.default is inspect.Parameter.empty]
        if missing_defaults:
            raise ValueError(
                f"register_model({name!r}): every argument needs a default; missing for "
                f"{missing_defaults}"
            )
        default_in_chans = params["in_chans"].default
        if default_in_chans != size[0]:
            raise ValueError(
                f"register_model({name!r}): input_size has {size[0]} channels but the constructor's "
                f"in_chans defaults to {default_in_chans}; make them agree"
            )

        @functools.wraps(constructor)
        def build(**kwargs: Any) -> nn.Module:
            unknown = sorted(set(kwargs) - set(accepted_names))
            if unknown:
                raise ValueError(
                    f"{name}: unknown keyword argument(s) {unknown}; it accepts "
                    f"{', '.join(accepted_names)}"
                )
            model = constructor(**kwargs)
            in_chans = kwargs.get("in_chans", default_in_chans)
            model.default_input_size = (in_chans, size[1], size[2])
            return model

        _REGISTRY[name] = _Entry(name=name, constructor=build, input_size=size)
        return build  # type: ignore[return-value]

    return decorate


def _available_aliases() -> list[str]:
    return [a for a, target in ALIASES.items() if libraries.LIBRARIES[target.partition(":")[0]].available()]


def list_models(pattern: str | None = None, *, zoo_only: bool = False) -> list[str]:
    """Sorted model names, optionally filtered by a glob such as ``"resnet*"`` or ``"timm:*mobilenet*"``.

    Args:
        pattern: an ``fnmatch`` glob over the full names (library names include their prefix).
        zoo_only: True lists only the zoo's own architectures (no aliases, no library names) and
            imports no library.

    Returns:
        The zoo's names, the aliases, and every model of each installed library: ``torchvision:NAME``
        (its classification and detection builders), ``timm:NAME`` (``timm.list_models()``) and
        ``yolo:NAME`` (the detection YAMLs Ultralytics bundles, one name per scale).
    """
    names = sorted(_REGISTRY)
    if not zoo_only:
        names += _available_aliases()
        prefix = pattern.partition(":")[0] if pattern and ":" in pattern else None
        for key, library in libraries.LIBRARIES.items():
            # a pattern naming one library (``"timm:*"``) imports only that one
            if library.available() and (prefix is None or fnmatch.fnmatchcase(key, prefix)):
                names += [f"{key}:{n}" for n in library.names()]
        names = sorted(set(names))
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


_HOW_TO_LIST = (
    "List models with halp.models.list_models(PATTERN) or `halp models PATTERN`, e.g. 'timm:*mobilenet*'."
)


def _unknown(prefix: str, name: str, candidates: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.7)
    hint = f" Did you mean {', '.join(f'{prefix}:{c}' for c in close)}?" if close else ""
    return ValueError(f"unknown model {name!r} in {prefix}.{hint} {_HOW_TO_LIST}")


def resolve(name: object) -> str:
    """The canonical name of ``name``: an alias's target, else ``name`` itself once checked to exist.

    Raises:
        ValueError: an unknown name (with close matches and how to list models), an unknown library
            prefix, or a library that is not installed.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"unknown model {name!r}: a model name is a non-empty string. {_HOW_TO_LIST}")
    name = ALIASES.get(name, name)
    if name in _REGISTRY:
        return name
    if ":" in name:
        library, model = libraries.library_of(name)
        if not library.is_model(model):
            raise _unknown(library.prefix, model, library.names())
        return name
    # a bare name: the zoo's own and aliases, or the same name in a library (``convnext_tiny``)
    zoo = sorted(_REGISTRY) + _available_aliases()
    close = difflib.get_close_matches(name, zoo, n=3, cutoff=0.7)
    for key, library in libraries.LIBRARIES.items():
        if library.available():
            close += [f"{key}:{n}" for n in difflib.get_close_matches(name, library.names(), n=2, cutoff=0.85)]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown model {name!r}.{hint} halp's own models and aliases: {', '.join(zoo)}; library models are "
        f"named {', '.join(k + ':NAME' for k in libraries.LIBRARIES)}. {_HOW_TO_LIST}"
    )


def input_size(name: str, **kwargs: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` that model ``name`` expects (with ``kwargs`` such as ``in_chans`` applied).

    Zoo models declare it; torchvision classifiers take 224 (``inception_v3`` 299), its detectors what
    their transform resizes to (320 / 300 for the SSDs, else 800), timm models their default
    ``pretrained_cfg['input_size']``, YOLO 640.

    Raises:
        ValueError: an unknown name (see :func:`resolve`).
    """
    name = resolve(name)
    if name in _REGISTRY:
        c, h, w = _REGISTRY[name].input_size
        return (int(kwargs.get("in_chans", c)), h, w)
    library, model = libraries.library_of(name)
    return library.input_size(model, dict(kwargs))


def _check_common(name: str, kwargs: dict[str, Any]) -> None:
    for arg in ("num_classes", "in_chans"):
        if arg in kwargs:
            value = kwargs[arg]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {arg} must be a positive integer, got {value!r}")


def create(
    name: str, num_classes: int | None = None, *, weights: str | os.PathLike[str] | None = None, **kwargs: Any
) -> nn.Module:
    """Build a model with freshly initialised weights, or with the weights of a local file.

    Args:
        name: a zoo name, an alias or a library name (``"torchvision:resnet50"``, ``"timm:resnet18"``,
            ``"yolo:yolov8n"``); see :func:`list_models`.
        num_classes: Classifier outputs (YOLO: ``nc``); ``None`` keeps the model's default (1000 for
            ImageNet models, 80 for detectors' COCO, 10 for the CIFAR and digits models).
        weights: a ``.safetensors`` or ``.pth``/``.pt`` state dict to load, strictly; nothing is ever
            downloaded.
        **kwargs: Model options passed to the constructor (``in_chans``, ``width_mult``, timm's
            ``drop_rate`` …). Unknown ones raise. ``in_chans`` works for every classifier: torchvision's
            get their first conv replaced.

    Returns:
        The model, with attributes ``default_input_size`` = ``(C, H, W)`` and ``halp_arch`` (its canonical
        name and arguments, which :func:`halp.save_pruned` records so :func:`halp.load_pruned` rebuilds it).

    Raises:
        ValueError: unknown name, unknown keyword, an invalid value, an argument that would download
            weights, or a weights file that does not fit (the message names the keys).
    """
    canonical = resolve(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    _check_common(canonical, kwargs)
    if canonical in _REGISTRY:
        model = _REGISTRY[canonical].constructor(**kwargs)
    else:
        libraries.check_offline(canonical, kwargs)
        library, arch = libraries.library_of(canonical)
        model = library.build(arch, dict(kwargs))
        model.default_input_size = library.input_size(arch, dict(kwargs))
    # What halp.save_pruned records so a saved (slim) model can be rebuilt without pickle.
    model.halp_arch = {"name": canonical, "kwargs": dict(kwargs)}
    if weights is not None:
        load_weights(model, weights)
    return model
