"""A timm-style model registry: ``register_model``, ``create_model``, ``list_models``."""
from __future__ import annotations

import fnmatch
from functools import partial
from typing import Any, Callable, TypeVar

from langseg.errors import ConfigError

_MODELS: dict[str, Callable[..., Any]] = {}
T = TypeVar("T", bound=Callable[..., Any])


def _load_builtin_models() -> None:
    """Imports ``langseg.models``, whose modules register the built-in models (once; torch loads here)."""
    import langseg.models  # noqa: F401


def register_model(name: str) -> Callable[[T], T]:
    """Register a LightningModule class (or a factory function) under ``name``."""

    def wrap(obj: T) -> T:
        _load_builtin_models()
        if name in _MODELS and _MODELS[name] is not obj:
            raise ConfigError(f"model name {name!r} is already registered to {_MODELS[name]!r}")
        _MODELS[name] = obj
        return obj

    return wrap


def register_variant(name: str, model: Callable[..., Any], description: str, **defaults: Any) -> Callable[..., Any]:
    """Register ``name`` as ``model`` with other defaults (a timm-style variant):
    ``create_model(name, **kwargs)`` builds ``model(**{**defaults, **kwargs})``; the factory keeps them in
    ``.defaults`` and the class in ``.model``."""

    def build(**kwargs: Any) -> Any:
        return model(**{**defaults, **kwargs})

    build.__name__ = build.__qualname__ = name
    build.__module__ = model.__module__
    build.__doc__ = description
    build.defaults = dict(defaults)  # type: ignore[attr-defined]
    build.model = model  # type: ignore[attr-defined]
    return register_model(name)(build)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern``."""
    _load_builtin_models()
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def get_model_class(name: str) -> Callable[..., Any]:
    """The class or factory registered under ``name``."""
    _load_builtin_models()
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def create_model(name: str, **kwargs: Any) -> Any:
    """Build a registered model, e.g. ``create_model("unet", in_channels=3)``."""
    return get_model_class(name)(**kwargs)


def _config_value(name: str, key: str, value: Any) -> Any:
    if isinstance(value, partial) and isinstance(value.func, type) and not value.args:
        return {"class_path": f"{value.func.__module__}.{value.func.__qualname__}", "init_args": dict(value.keywords)}
    if isinstance(value, tuple):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    raise ConfigError(f"model {name!r}: its default {key}={value!r} cannot be written as a config value; "
                      f"use its class with --model.init_args")


def model_config(name: str) -> dict[str, Any]:
    """The CLI/YAML form (``{"class_path", "init_args"}``) of a registered name, e.g. for ``--model lsms_small``."""
    entry = get_model_class(name)
    cls = entry if isinstance(entry, type) else getattr(entry, "model", None)
    if cls is None:
        raise ConfigError(f"model {name!r} is a factory function; the CLI needs a registered class or variant")
    defaults = getattr(entry, "defaults", {})
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": {k: _config_value(name, k, v) for k, v in defaults.items()}}


def model_info(name: str) -> tuple[str, str]:
    """``(description, paper)`` of a registered name: the variant's description or the first line of the
    class docstring, and the class's ``paper``."""
    entry = get_model_class(name)
    cls = entry if isinstance(entry, type) else getattr(entry, "model", entry)
    doc = (entry.__doc__ if not isinstance(entry, type) else cls.__doc__) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    if isinstance(entry, type):  # a class docstring: its first sentence
        first = first.split("; ")[0].split(". ")[0]
    first = first.rstrip(".")
    return first, getattr(cls, "paper", "")
