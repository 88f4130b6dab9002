"""langseg: language-guided medical image segmentation with PyTorch Lightning."""
from langseg.registry import create_model, get_model_class, list_models, register_model, register_variant

from langseg import models  # noqa: E402,F401  (registers the built-in models)

__version__ = "0.1.0"
__all__ = ["create_model", "get_model_class", "list_models", "register_model", "register_variant", "__version__"]
