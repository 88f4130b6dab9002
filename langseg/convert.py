"""Official GuideDecoder, HiMix and RecLMIS checkpoints as langseg checkpoints (``langseg convert``).

Each official tensor is renamed onto the network langseg builds from a config; every langseg tensor must get one
and every official tensor must land or be one the official forward pass never reads (listed in ``DROPPED``).
Key names and shapes come from the official module definitions:

- GuideDecoder, Junelin2333/LanGuideMedSeg-MICCAI2023: ``utils/model.py`` (``LanGuideMedSeg``: ``encoder``,
  ``text_encoder``, ``decoder16/8/4``, ``decoder1``, ``out``), ``utils/layers.py`` (``GuideDecoderLayer``,
  ``GuideDecoder``), ``engine/wrapper.py`` (the Lightning wrapper's ``model.`` prefix);
- HiMix, JaeyoonSSim/HiMix: ``utils/model_himix.py`` (``HiMix``, ``attention_weights``), ``utils/layers_himix.py``
  (``DecoderLayer``, ``Decoder``), ``engine/wrapper.py``;
- RecLMIS, ShawnHuang497/RecLMIS: ``nets/RecLMIS.py`` (``RecLMIS``: ``inc``, ``down1-4``, ``up4-1``, ``outc``,
  ``text_module4``, ``mlp_visual``, ``mlp_woi``, ``rec_img_trans1``, ``rec_text_trans1``, ``clip``),
  ``nets/Interactor.py`` (``Interactor``: ``embeddings``, ``attn_text``, ``attn_img``, ``CTBN``),
  ``nets/transformer/`` (``DualTransformer``: ``decoder1/2.decoder_layers``; ``TransformerDecoderLayer``), LViT's
  ``nets/pixlevel.py`` (``PixLevelModule``), ``train_model.py`` (``best_model-RecLMIS.pth.tar``: ``state_dict``,
  ``module.`` under ``nn.DataParallel``);
- MONAI's ``UnetrUpBlock``, ``SubpixelUpsample`` and ``UnetOutBlock`` (their ``state_dict`` names) and Hugging
  Face's ``ConvNextModel`` (``langseg.weights``).
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import lightning
import torch
from torch import Tensor, nn

from langseg.blocks.layers import sine_position_encoding_1d
from langseg.errors import ConfigError
from langseg.files import atomic_torch_save
from langseg.weights import hf_convnext_key

METHODS = ("guidedecoder", "himix", "reclmis")
MODEL_CLASSES = {"guidedecoder": "GuideDecoder", "himix": "HiMix", "reclmis": "RecLMIS"}
POSITION_TABLE = r"decoder\d+\.guide_layer\.(vis_pos|txt_pos)\.pe$"
STAGES = {"decoder16": 0, "decoder8": 1, "decoder4": 2}  # official decoder stage -> langseg stage (coarse first)
# tensors the official forward pass never reads into the mask, or that langseg does not keep in the network
DROPPED = {
    r"text_encoder\.": "the frozen text encoder (langseg loads it from --model.text_encoder)",
    r"encoder\.project_head\.": "the image projection head, not used for the mask",
    r"encoder\.model\.layernorm\.": "ConvNeXt's pooled-feature norm, after the last stage the decoder reads",
    POSITION_TABLE: "fixed sine position tables (langseg computes the same; checked)",
    r"decoder\d+\.guide_layer\.norm\.": "HiMix's DecoderLayer.norm, defined but never called",
}
UP_BLOCK = {"transp_conv.conv": "up", "conv_block.conv1.conv": "convs.0.0", "conv_block.norm1": "convs.0.1",
            "conv_block.conv2.conv": "convs.1.0", "conv_block.norm2": "convs.1.1"}
GUIDE_LAYER = {"text_project.0": "text_proj.tokens.0", "text_project.2": "text_proj.channels.0",
               "norm1": "self_attn.norm_in", "self_attn": "self_attn.attn", "self_attn_norm": "self_attn.norm_out",
               "norm2": "cross_attn.norm_in", "cross_attn": "cross_attn.attn", "cross_attn_norm": "cross_attn.norm_out"}
GUIDEDECODER_ONLY = {"scale": "scale"}
HIMIX_ONLY = {"sig": "refine.sigma", "lin1": "ffn.0", "lin2": "ffn.3"}  # ffn="official": Linear, ReLU, Dropout, Linear
HIMIX_SCALES = {"scale1": 0, "scale2": 1, "scale3": 2}  # three scalars -> one (3,) parameter
RECLMIS_DROPPED = {
    r"clip\.": "the frozen CLIP model (langseg loads its text tower from --model.text_encoder; its logit scale, "
                "100, is ccl_temperature 0.01)",
    r"up\d\.pixModule\.conv_sig\.": "PixLevelModule.conv_sig, defined but never called",
    r"rec_(img|text)_trans1\.decoder1\.decoder_layers\.\d+\.encoder_attn": "the context stack's cross-attention, "
        "defined but never called (DualTransformer's decoding=2 runs decoder1 without a context)",
}
PAPER_RECONSTRUCTORS_DROPPED = {
    r"rec_(img|text)_trans1\.": "the training-only official reconstructors, which reconstructor: paper does not "
                                "build (--model.reconstructor official maps them); they never run at inference",
}
RECLMIS_UNFILLED = ("vision_reconstructor.", "text_reconstructor.")  # reconstructor: paper keeps its initial values
RECLMIS_RECONSTRUCTORS = {"rec_img_trans1": "vision_reconstructor", "rec_text_trans1": "text_reconstructor"}
RECLMIS_RECONSTRUCTOR_STACKS = {"decoder1": "context_layers", "decoder2": "query_layers"}
RECLMIS_RECONSTRUCTOR_LAYER = {"self_attn": "self_attn", "self_attn_layer_norm": "self_attn_norm",
                               "encoder_attn": "cross_attn", "encoder_attn_layer_norm": "cross_attn_norm",
                               "fc1": "fc1", "fc2": "fc2", "final_layer_norm": "final_norm"}
RECLMIS_INTERACTION = {"text_module4": "fusion.text_proj", "interact.embeddings.patch_embeddings": "fusion.patch_embed",
                       "interact.embeddings.position_embeddings": "fusion.position",
                       "interact.attn_text": "fusion.text_attn", "interact.attn_img": "fusion.vision_attn",
                       "interact.CTBN.conv": "text_out.0", "interact.CTBN.norm": "text_out.1",
                       "mlp_visual": "poi_head", "mlp_woi": "woi_head"}
PLAM = {"pixModule.conv_avg": "plam.avg_proj", "pixModule.conv_max": "plam.max_proj",
        "pixModule.bottleneck.0": "plam.mlp.0", "pixModule.bottleneck.2": "plam.mlp.2"}
CONV_BN = {"conv": "0", "norm": "1"}  # ConvBatchNorm -> ConvNormAct


def _by_longest_prefix(table: Mapping[str, str], name: str) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in table:
            return ".".join([table[prefix], *parts[i:]])
    return None


def reclmis_key(name: str, official_reconstructors: bool = False) -> str | None:
    """The langseg ``RecLMISNet`` key (``interaction: official``) of one official RecLMIS tensor; None for a tensor
    in ``RECLMIS_DROPPED`` (and, unless ``official_reconstructors``, for the reconstructors'). Raises ``KeyError``
    on an unknown name."""
    dropped = RECLMIS_DROPPED if official_reconstructors else {**RECLMIS_DROPPED, **PAPER_RECONSTRUCTORS_DROPPED}
    if any(re.match(pattern, name) for pattern in dropped):
        return None
    match = re.match(r"(rec_img_trans1|rec_text_trans1)\.(decoder[12])\.decoder_layers\.(\d+)\.(.+)$", name)
    if match is not None:
        key = _by_longest_prefix(RECLMIS_RECONSTRUCTOR_LAYER, match[4])
        if key is None:
            raise KeyError(name)
        return f"{RECLMIS_RECONSTRUCTORS[match[1]]}.{RECLMIS_RECONSTRUCTOR_STACKS[match[2]]}.{match[3]}.{key}"
    if name.startswith(("inc.conv.", "inc.norm.")):
        part, rest = name.split(".", 2)[1:]
        return f"encoder.stem.{CONV_BN[part]}.{rest}"
    if name.startswith("outc."):
        return name.replace("outc.", "decoder.head.", 1)
    match = re.match(r"(down|up)([1-4])\.(.+)$", name)
    if match is None:
        key = _by_longest_prefix(RECLMIS_INTERACTION, name)
        if key is None:
            raise KeyError(name)
        return f"interaction.{key}"
    kind, index, rest = match[1], int(match[2]), match[3]
    block = f"encoder.stages.{index - 1}.1" if kind == "down" else f"decoder.blocks.{4 - index}.convs"
    convs = re.match(r"nConvs\.(\d+)\.(conv|norm)\.(.+)$", rest)
    if convs is not None:
        return f"{block}.{convs[1]}.{CONV_BN[convs[2]]}.{convs[3]}"
    key = _by_longest_prefix(PLAM, rest) if kind == "up" else None
    if key is None:
        raise KeyError(name)
    return f"decoder.blocks.{4 - index}.{key}"


def official_key(method: str, name: str, official_reconstructors: bool = False) -> tuple[str, int | None] | None:
    """The langseg network key (and element index, for HiMix's three residual scales) of one official tensor
    (``model.`` prefix removed); None for a tensor in ``DROPPED``. ``official_reconstructors``: RecLMIS's
    reconstructors map (``reconstructor: official``) instead of being dropped. Raises ``KeyError`` on an unknown
    name."""
    if method == "reclmis":
        key = reclmis_key(name, official_reconstructors)
        return None if key is None else (key, None)
    if any(re.match(pattern, name) for pattern in DROPPED):
        return None
    if name.startswith("encoder.model."):
        key = hf_convnext_key(name.removeprefix("encoder.model."))
        return None if key is None else (f"encoder.{key}", None)
    if method == "himix" and name == "attention_weights":
        return "mixer.logits", None  # rows: layers 1-4, 5-8, 9-12, as langseg's groups before the flip
    if name.startswith("decoder1.conv_block."):
        return name.replace("decoder1.conv_block.", "head.shuffle.0."), None
    if name.startswith("out.conv.conv."):
        return name.replace("out.conv.conv.", "head.out."), None
    match = re.match(r"(decoder16|decoder8|decoder4)\.(guide_layer|decoder)\.(.+)$", name)
    if match is None:
        raise KeyError(name)
    stage, part, rest = STAGES[match[1]], match[2], match[3]
    if part == "decoder":
        key = _by_longest_prefix(UP_BLOCK, rest)
        if key is None:
            raise KeyError(name)
        return f"ups.{stage}.{key}", None
    if method == "himix" and rest in HIMIX_SCALES:
        return f"guides.{stage}.scales", HIMIX_SCALES[rest]
    table = {**GUIDE_LAYER, **(HIMIX_ONLY if method == "himix" else GUIDEDECODER_ONLY)}
    key = _by_longest_prefix(table, rest)
    if key is None:
        raise KeyError(name)
    return f"guides.{stage}.{key}", None


def convert_state_dict(method: str, official: Mapping[str, Tensor], target: Mapping[str, Tensor],
                       source: str = "the checkpoint") -> dict[str, Tensor]:
    """``official`` (an official network's state dict) as ``target``'s keys (a langseg network's state dict).

    Raises ``ConfigError`` naming the tensor when an official tensor is unknown, has no place or another shape,
    or when a langseg tensor gets no official value (RecLMIS with ``reconstructor: paper``: except its
    reconstructors, ``RECLMIS_UNFILLED``, which the result leaves out; with ``official`` they are mapped too)."""
    if method not in METHODS:
        raise ConfigError(f"cannot convert '{method}' checkpoints: choose one of {list(METHODS)}")
    official_reconstructors = method == "reclmis" and any(k.startswith("vision_reconstructor.context_layers.")
                                                          for k in target)
    out: dict[str, Tensor] = {}
    partial: dict[str, set[int]] = {}
    for name, value in official.items():
        try:
            mapped = official_key(method, name, official_reconstructors)
        except KeyError:
            raise ConfigError(f"{source}: '{name}' is not a tensor of the official {method} network") from None
        if mapped is None:
            if re.match(POSITION_TABLE, name):
                _check_position_table(name, value, source)
            continue
        key, index = mapped
        if key not in target:
            raise ConfigError(f"{source}: '{name}' maps to '{key}', which the configured network does not have "
                              f"(check the config's switches, e.g. --model.ffn official for HiMix, "
                              f"--model.interaction official, --model.recon_depth for RecLMIS)")
        if index is not None:
            out.setdefault(key, target[key].detach().clone())[index] = value
            partial.setdefault(key, set()).add(index)
            continue
        shape = target[key].shape
        if value.shape != shape and value.shape == shape[:value.dim()] and all(d == 1 for d in shape[value.dim():]):
            value = value.reshape(shape)  # a Linear's weight -> a 1x1 conv's (HF ConvNeXt MLP, LViT's PLAM)
        if value.shape != target[key].shape:
            raise ConfigError(f"{source}: '{name}' has shape {tuple(value.shape)}, langseg's '{key}' "
                              f"{tuple(target[key].shape)}: build the network of the same size (text encoder "
                              f"width, encoder_name, max_text_length, text_tokens; HiMix: --model.ffn official; "
                              f"RecLMIS: widths, position_grid, mlp_ratio)")
        out[key] = value
    incomplete = [k for k, seen in partial.items() if len(seen) != target[k].numel()]
    unfilled = RECLMIS_UNFILLED if method == "reclmis" and not official_reconstructors else ()
    missing = sorted(k for k in set(target) - set(out) if not k.startswith(unfilled)) + incomplete
    if missing:
        raise ConfigError(f"{source}: no official tensor for langseg's {missing[:4]}"
                          f"{' ...' if len(missing) > 4 else ''} ({len(missing)} in all): the config builds another "
                          f"network than the official one (e.g. --model.ffn official for HiMix)")
    return out


def _check_position_table(name: str, table: Tensor, source: str) -> None:
    """The official ``PositionalEncoding.pe`` must be the sine table langseg's layers compute, or it cannot be dropped."""
    length, dim = table.shape[-2:]
    if not torch.allclose(table.reshape(length, dim).float(), sine_position_encoding_1d(length, dim), atol=1e-4):
        raise ConfigError(f"{source}: '{name}' is not the fixed sine table langseg computes")


class _Inert:
    """Stands in for a class that an official checkpoint pickles but conversion never needs (its config object)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "range", "bytearray"}


class _CheckpointUnpickler(pickle.Unpickler):
    """Resolves tensors, containers and dtypes; any other class becomes an inert stand-in, so no code of the
    official repositories (or anything else) is imported or run."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("collections", "torch._utils", "torch.storage", "copyreg", "_codecs") or (
                module == "builtins" and name in SAFE_BUILTINS) or (
                module == "torch" and (name in ("Size", "device") or name.endswith("Storage")
                                       or isinstance(getattr(torch, name, None), torch.dtype))):
            return super().find_class(module, name)
        return _Inert


class _CheckpointPickle:
    Unpickler = _CheckpointUnpickler
    load = staticmethod(lambda file, **kw: _CheckpointUnpickler(file, **kw).load())


def read_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The network tensors of an official checkpoint: a Lightning ``.ckpt`` (``state_dict`` with the wrapper's
    ``model.`` prefix) or a bare ``state_dict``; other pickled objects (the official config) are not imported."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"official checkpoint '{path}' does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_CheckpointPickle)
        except Exception as err:
            raise ConfigError(f"official checkpoint '{path}' cannot be read: {err}") from err
    except Exception as err:
        raise ConfigError(f"official checkpoint '{path}' cannot be read: {err}") from err
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"official checkpoint '{path}' holds no state dict of tensors")
    for prefix in ("model.", "module."):  # the Lightning wrapper's, nn.DataParallel's
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def convert_checkpoint(method: str, official_path: str | Path, model: nn.Module, output: str | Path) -> Path:
    """Write ``output``: a langseg checkpoint of ``model`` (built from the config) holding the official weights,
    which ``langseg test --config ... --ckpt_path output`` loads. Written to a temporary file, then renamed."""
    if type(model).__name__ != MODEL_CLASSES.get(method, type(model).__name__):
        raise ConfigError(f"--from {method} needs a {MODEL_CLASSES[method]} config; the config builds "
                          f"{type(model).__name__}")
    net_state = convert_state_dict(method, read_official_checkpoint(official_path), model.net.state_dict(),
                                   source=str(official_path))
    frozen_text = model.text_encoder is not None and model.text_encoder.frozen  # reloaded from its folder
    skip = ("net.", "text_encoder.") if frozen_text else ("net.",)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    state.update({f"net.{k}": v for k, v in {**model.net.state_dict(), **net_state}.items()})
    checkpoint = {"state_dict": state, "langseg_model": type(model).__name__,
                  "pytorch-lightning_version": lightning.__version__,
                  "langseg_converted_from": {"method": method, "file": str(official_path)}}
    return atomic_torch_save(checkpoint, output)


def convert_command(method: str, official_path: str, config: str, output: str, overrides: Iterable[str] = ()) -> Path:
    """``langseg convert``: build the network from ``config`` (and CLI ``overrides``), convert, write."""
    from langseg.lightning_cli import build_cli

    model = build_cli(["--config", config, *overrides], run=False).model
    return convert_checkpoint(method, official_path, model, output)
