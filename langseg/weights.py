"""Weights in other formats: Hugging Face ConvNeXt checkpoints onto langseg's timm ConvNeXt encoders."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from langseg.errors import ConfigError

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Hugging Face ConvNextModel name -> timm feature-encoder name (``features_only``: ``stem_0``, ``stages_1``, ...)
HF_CONVNEXT_RULES = (
    (r"embeddings\.patch_embeddings\.", "stem_0."),
    (r"embeddings\.layernorm\.", "stem_1."),
    (r"encoder\.stages\.(\d+)\.downsampling_layer\.", r"stages_\1.downsample."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.", r"stages_\1.blocks.\2.conv_dw."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"stages_\1.blocks.\2.norm."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1\.", r"stages_\1.blocks.\2.mlp.fc1."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2\.", r"stages_\1.blocks.\2.mlp.fc2."),
    (r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$", r"stages_\1.blocks.\2.gamma"),
)
# the classifier's pooled-feature norm and head: no part of a feature encoder
HF_CONVNEXT_UNUSED = (r"layernorm\.(weight|bias)$", r"classifier\.", r"pooler\.")


def hf_convnext_key(name: str) -> str | None:
    """The timm feature-encoder name of one Hugging Face ``ConvNextModel`` tensor; None for the classifier's
    final norm and head, which a feature encoder has not. Raises on a name that is neither."""
    for pattern, target in HF_CONVNEXT_RULES:
        if re.match(pattern, name):
            return re.sub(pattern, target, name, count=1)
    if any(re.match(pattern, name) for pattern in HF_CONVNEXT_UNUSED):
        return None
    raise KeyError(name)


def convert_hf_convnext(state: Mapping[str, Tensor], target: Mapping[str, Tensor], source: str = "the checkpoint"
                        ) -> dict[str, Tensor]:
    """A Hugging Face ConvNeXt state dict (``convnext.``-prefixed or not) as ``target``'s (a timm ConvNeXt
    feature encoder's state dict) keys and shapes. A 1x1-conv MLP (timm's ``conv_mlp`` models) takes the Linear
    weights reshaped. Raises ``ConfigError`` naming ``source`` on an unknown, missing or mis-shaped tensor."""
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        try:
            key = hf_convnext_key(name.removeprefix("convnext."))
        except KeyError:
            raise ConfigError(f"{source}: '{name}' is not a Hugging Face ConvNeXt tensor") from None
        if key is None:
            continue
        if key not in target:
            raise ConfigError(f"{source}: '{name}' (timm '{key}') has no place in the encoder: its depths differ")
        if value.shape != target[key].shape:
            if value.numel() != target[key].numel():
                raise ConfigError(f"{source}: '{name}' has shape {tuple(value.shape)}, the encoder's '{key}' "
                                  f"{tuple(target[key].shape)}: the checkpoint is of another ConvNeXt size")
            value = value.reshape(target[key].shape)  # Linear (out, in) <-> 1x1 conv (out, in, 1, 1)
        out[key] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise ConfigError(f"{source}: no weights for the encoder's {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                          f"({len(missing)} tensors): not a checkpoint of this ConvNeXt")
    return out


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, a torch file, or a Hugging Face folder holding one of
    ``model.safetensors`` / ``pytorch_model.bin``."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / name for name in HF_WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise ConfigError(f"weights folder '{path}' holds none of {list(HF_WEIGHT_FILES)}")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: say which
        raise ConfigError(f"weights file '{path}' cannot be read: {err}") from err
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_hf_convnext(encoder: nn.Module, path: str | Path) -> None:
    """Initialise a timm ConvNeXt feature encoder (``features_only``) from a Hugging Face ConvNeXt folder
    (e.g. ``facebook/convnext-tiny-224``) or its ``model.safetensors`` / ``pytorch_model.bin``."""
    target = encoder.state_dict()
    encoder.load_state_dict(convert_hf_convnext(read_state_dict(path), target, source=str(path)))
