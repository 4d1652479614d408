"""A name → constructor registry for the model zoo (timm-style).

Commands and configs name models by string (``halp prune --model resnet50``), so every architecture is
registered under a name together with the input size it expects. The registry also owns argument
checking: a misspelt keyword (``width_mul=0.5``) is a ``ValueError`` that lists what the model accepts,
instead of a ``TypeError`` deep inside a constructor — or worse, being silently ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from torch import nn

__all__ = ["create", "input_size", "list_models", "register_model"]

_Constructor = TypeVar("_Constructor", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Entry:
    name: str
    constructor: Callable[..., nn.Module]
    input_size: tuple[int, int, int]  # (C, H, W) with the constructor's default in_chans


_REGISTRY: dict[str, _Entry] = {}


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


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob such as ``"resnet*"``."""
    names = sorted(_REGISTRY)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _entry(name: object) -> _Entry:
    if not isinstance(name, str) or name not in _REGISTRY:
        known = list_models()
        close = difflib.get_close_matches(str(name), known, n=3) if isinstance(name, str) else []
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(known)}")
    return _REGISTRY[name]


def input_size(name: str) -> tuple[int, int, int]:
    """``(C, H, W)`` that model ``name`` expects with its default ``in_chans``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names).
    """
    return _entry(name).input_size


def create(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model with freshly initialised weights.

    Args:
        name: A name from :func:`list_models`.
        num_classes: Classifier outputs; ``None`` keeps the model's default (1000 for ImageNet models,
            10 for the CIFAR and digits models).
        **kwargs: Model-specific options (``in_chans``, ``width_mult``, ``zero_init_residual``,
            ``dropout`` …); unknown ones raise.

    Returns:
        The model, with attributes ``default_input_size`` = ``(C, H, W)`` and ``halp_arch`` (its name
        and arguments, which :func:`halp.save_pruned` records).

    Raises:
        ValueError: unknown name, unknown keyword, or an invalid value.
    """
    entry = _entry(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = entry.constructor(**kwargs)
    # What halp.save_pruned records so a saved (slim) model can be rebuilt without pickle.
    model.halp_arch = {"name": name, "kwargs": dict(kwargs)}
    return model
