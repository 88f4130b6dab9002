"""langseg: language-guided medical image segmentation with PyTorch Lightning."""
from __future__ import annotations

import importlib
from typing import Any

from langseg.registry import create_model, get_model_class, list_models, register_model, register_variant

__version__ = "0.1.0"
__all__ = ["create_model", "get_model_class", "list_models", "load", "register_model", "register_variant",
           "__version__"]


def load(path: str, map_location: str = "cpu") -> Any:
    """The model of a langseg checkpoint, ready for ``model.segment_image(image, text)`` (see ``langseg.inference.load``)."""
    from langseg.inference import load as load_checkpoint

    return load_checkpoint(path, map_location)


def __getattr__(name: str) -> Any:
    """Subpackages load on first use (PEP 562), so ``langseg --help`` does not import torch."""
    if name in ("models", "blocks", "data", "losses", "metrics", "callbacks"):
        return importlib.import_module(f"langseg.{name}")
    raise AttributeError(f"module 'langseg' has no attribute {name!r}")
