"""LViT (Li et al., IEEE TMI 2023): a U-Net whose skip features are refined by a parallel, text-fed ViT branch.

The CNN branch is LViT's U-Net with pixel-level attention (PLAM) on the skips (``blocks/unet_plam.py``,
shared with RecLMIS). The ViT branch tokenises each of the four finer CNN stages into the same 14x14 grid
(patch 16/8/4/2 at 224), runs one transformer layer per stage down and one up, and adds each result, brought
back to its stage's resolution, to that stage's skip. The text enters the ViT branch through an embedding
layer: word features go through a chain of 3-tap Conv1d layers down to the first stage's width, and a
conv over the word axis maps the words onto the patches, where they are added to the patch embeddings.
"""
from __future__ import annotations

from functools import partial
from itertools import pairwise
from typing import Any, Literal, Mapping, Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from langseg.blocks.augmentation import JointAugmentation
from langseg.blocks.layers import ConvNormAct
from langseg.blocks.text_encoder import TextFeatures
from langseg.blocks.unet_plam import UNetDecoder, UNetEncoder
from langseg.errors import ConfigError
from langseg.losses import balanced_bce_loss, dice_loss
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import register_model, register_variant


def conv_bn_relu_1d(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv1d (kernel 3, same padding) -> BatchNorm1d -> ReLU on ``(B, C, L)``: LViT's ``ConvTransBN``."""
    return nn.Sequential(nn.Conv1d(in_channels, out_channels, 3, padding=1), nn.BatchNorm1d(out_channels), nn.ReLU())


def resample_tokens(tokens: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """``(B, h*w, C)`` tokens of a ``grid`` (h, w) map bilinearly resized to ``size``; unchanged if equal."""
    if grid == size:
        return tokens
    maps = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
    maps = nn.functional.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps.flatten(2).transpose(1, 2)


class PatchEmbedding(nn.Module):
    """Tokens of a feature map: a stride-``patch`` ``patch x patch`` conv (C -> C), a learned position code of a
    ``grid x grid`` token map (resampled bilinearly for another grid, as timm does), then dropout."""

    def __init__(self, channels: int, patch: int, grid: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, patch, stride=patch)
        self.grid = grid
        self.position = nn.Parameter(torch.zeros(1, grid * grid, channels))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.proj(x)  # (B, C, h, w)
        size = (x.shape[-2], x.shape[-1])
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return self.dropout(tokens + resample_tokens(self.position, (self.grid, self.grid), size)), size


class TextToPatches(nn.Module):
    """LViT's text embedding onto the patches: the ``num_words`` words are the channels of a Conv1d (over the
    feature axis) that outputs one channel per patch of a ``grid x grid`` map, then BatchNorm1d and ReLU.

    ``(B, L, C) -> (B, h*w, C)``; a grid other than the built one gets the map resampled bilinearly.
    """

    def __init__(self, num_words: int, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.embed = conv_bn_relu_1d(num_words, grid * grid)

    def forward(self, words: Tensor, size: tuple[int, int]) -> Tensor:
        return resample_tokens(self.embed(words), (self.grid, self.grid), size)


class LViTBlock(nn.Module):
    """One pre-norm transformer layer of LViT's ViT branch: ``x + MHSA(LN x)``, then ``x + MLP(LN x)``.

    As in LViT's code the MLP is ``fc1 -> GELU -> dropout -> fc2 -> GELU -> dropout`` (a GELU after ``fc2``
    too), its weights Xavier-uniform and its biases ~N(0, 1e-6); attention has biased q/k/v projections.
    """

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"LViT's ViT width {dim} is not divisible by num_heads={num_heads}")
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.GELU(), nn.Dropout(dropout))
        for linear in (self.mlp[0], self.mlp[3]):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class LViTNet(nn.Module):
    """LViT: U-Net + PLAM, with a ViT branch (text added at its first stage) refining the four finer skips.

    ``widths`` are the five U-Net stage widths; the ViT branch runs at the first four, each tokenised to
    ``image_size / 16`` tokens per side. Text: ``max_text_length`` word features of width ``text_dim``
    (zero at padding) -> Conv1d chain ``text_dim -> widths[3] -> ... -> widths[0]`` (kernel 3, no activation)
    -> ``TextToPatches`` -> added to the first stage's patch embeddings. ``text_every_scale`` also adds each
    chain output to the patch embeddings of the stage of its width (the spec's reading of the paper);
    LViT's code (the default, False) computes those widths but uses only the last.
    """

    def __init__(self, in_channels: int = 3, text_dim: int = 768, widths: Sequence[int] = (64, 128, 256, 512, 512),
                 num_heads: int = 8, mlp_ratio: float = 4.0, image_size: int = 224, max_text_length: int = 12,
                 dropout: float = 0.1, text_every_scale: bool = False) -> None:
        super().__init__()
        self.encoder = UNetEncoder(in_channels, widths)
        self.decoder = UNetDecoder(widths)
        stride = self.encoder.output_stride
        if image_size % stride:
            raise ConfigError(f"LViT's image_size={image_size} is not a multiple of its total stride {stride}")
        vit = tuple(widths[:-1])
        if any(wide <= narrow for narrow, wide in pairwise(vit)):
            raise ConfigError(f"LViT's ViT branch needs increasing widths for its first four stages, got {vit}")
        grid = image_size // stride
        self.max_text_length = max_text_length
        # Text: text_dim -> widths[3] -> widths[2] -> widths[1] -> widths[0], coarsest stage's width first.
        self.text_chain = nn.ModuleList(nn.Conv1d(c_in, c_out, 3, padding=1)
                                        for c_in, c_out in pairwise((text_dim, *reversed(vit))))
        self.text_to_patches = nn.ModuleList(TextToPatches(max_text_length, grid)
                                             for _ in range(len(vit) if text_every_scale else 1))
        self.embeddings = nn.ModuleList(PatchEmbedding(c, stride >> i, grid, dropout) for i, c in enumerate(vit))
        self.down_blocks = nn.ModuleList(LViTBlock(c, num_heads, mlp_ratio, dropout) for c in vit)
        # Down stage i > 0: its tokens narrowed to widths[i] - widths[i-1], then concatenated with stage i-1's.
        self.down_merges = nn.ModuleList(conv_bn_relu_1d(wide, wide - narrow) for narrow, wide in pairwise(vit))
        self.up_blocks = nn.ModuleList(LViTBlock(c, num_heads, mlp_ratio, dropout) for c in vit)
        # Up stage i < 3: the up output of stage i+1 narrowed to widths[i] and added.
        self.up_merges = nn.ModuleList(conv_bn_relu_1d(wide, narrow) for narrow, wide in pairwise(vit))
        self.reconstructs = nn.ModuleList(ConvNormAct(c, c, kernel_size=1, bias=True) for c in vit)

    @property
    def output_stride(self) -> int:
        return self.encoder.output_stride

    def stage_texts(self, words: Tensor) -> list[Tensor]:
        """The text chain's outputs, finest stage's width first: ``(B, L, widths[i])`` for stage i."""
        x = words.transpose(1, 2)  # (B, C, L): the convs run over the word axis
        outs = []
        for conv in self.text_chain:
            x = conv(x)
            outs.append(x.transpose(1, 2))
        return outs[::-1]

    def forward(self, image: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        if text is None:
            raise ConfigError("LViT needs text: pass texts to segment() or use a text-labelled dataset")
        side = self.output_stride
        if image.shape[-1] % side or image.shape[-2] % side:
            raise ConfigError(f"LViT needs image sides that are multiples of {side}, got {tuple(image.shape[-2:])}")
        if text.tokens.shape[1] != self.max_text_length:
            raise ConfigError(f"LViT was built for {self.max_text_length} text tokens but got "
                              f"{text.tokens.shape[1]}; pad the text to max_length (text_padding='max_length')")
        feats = self.encoder(image)
        texts = self.stage_texts(text.tokens)
        down: list[Tensor] = []
        sizes = []
        for i, (embed, block) in enumerate(zip(self.embeddings, self.down_blocks)):
            tokens, size = embed(feats[i])
            sizes.append(size)
            if i < len(self.text_to_patches):
                tokens = tokens + self.text_to_patches[i](texts[i], size)
            tokens = block(tokens)
            if i:
                narrowed = self.down_merges[i - 1](tokens.transpose(1, 2)).transpose(1, 2)
                tokens = torch.cat([narrowed, down[-1]], -1)
            down.append(tokens)
        up = [self.up_blocks[-1](down[-1])]
        for i in range(len(down) - 2, -1, -1):
            coarser = self.up_merges[i](up[0].transpose(1, 2)).transpose(1, 2)
            up.insert(0, self.up_blocks[i](down[i]) + coarser)
        skips = []
        for feat, tokens, size, reconstruct in zip(feats, up, sizes, self.reconstructs):
            maps = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *size)
            maps = nn.functional.interpolate(maps, size=feat.shape[-2:], mode="nearest")
            skips.append(feat + reconstruct(maps))
        return {"logits": self.decoder(feats[-1], skips)}


@register_model("lvit")
class LViT(LanguageGuidedSegmenter):
    """LViT-T: an ``LViTNet`` trained with LViT's loss ``0.5 * Dice + 0.5 * BCE`` (squared-denominator Dice,
    class-balanced BCE) and its QaTa-COV19 recipe: Adam at 3e-4 (1e-3 for MoNuSeg), cosine annealing with warm
    restarts every 10 epochs down to 1e-4. Text is padded to ``max_text_length`` tokens (12: LViT's 10 words
    plus ``[CLS]``/``[SEP]``). ``image_size`` fixes the ViT branch's learned grid; other sizes are resampled.
    """

    paper = "Li et al., LViT: Language meets Vision Transformer in Medical Image Segmentation (IEEE TMI 2023)"

    text_padding: Literal["longest", "max_length"] = "max_length"
    requires_text = True

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        image_size: int = 224,
        dropout: float = 0.1,
        text_every_scale: bool = False,
        max_text_length: int = 12,
        dice_weight: float = 0.5,
        bce_weight: float = 0.5,
        optimizer: OptimizerCallable = lambda params: torch.optim.Adam(params, lr=3e-4),
        **kwargs: Any,
    ) -> None:
        super().__init__(max_text_length=max_text_length, dice_weight=dice_weight, bce_weight=bce_weight,
                         optimizer=optimizer, **kwargs)
        self.net = LViTNet(self.in_channels, self.text_dim, widths, num_heads, mlp_ratio, image_size,
                           max_text_length, dropout, text_every_scale)

    def default_lr_scheduler(self) -> LRSchedulerCallable:
        """LViT's schedule: cosine annealing restarted every 10 epochs, between the lr and 1e-4."""
        return partial(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, T_0=10, T_mult=1, eta_min=1e-4)

    def default_augmentation(self) -> nn.Module:
        """LViT's random rotation (±20 degrees, a quarter of the samples); its flips and 90-degree turns are
        left out because they contradict the side ("left lung") that the text names."""
        return JointAugmentation(hflip_prob=0.0, rotation_degrees=20.0, scale=(1.0, 1.0), translate=0.0,
                                 affine_prob=0.25)

    def compute_loss(self, outputs: Mapping[str, Tensor], mask: Tensor, text: TextFeatures | None) -> dict[str, Tensor]:
        """LViT's ``WeightedDiceBCE``: ``dice_weight * Dice(p^2 denominator) + bce_weight * balanced BCE``."""
        logits = outputs["logits"]
        dice = dice_loss(logits, mask, smooth=1e-5, squared=True)
        bce = balanced_bce_loss(logits, mask)
        return {"loss": self.hparams.dice_weight * dice + self.hparams.bce_weight * bce, "dice": dice, "bce": bce}


register_variant("lvit_small", LViT, "LViT with narrow stages (16 .. 128), 4 heads, 64x64 inputs, 16 text tokens "
                 "added at every ViT scale, Adam at 3e-4, no schedule, no augmentation: configs/lvit.yaml.",
                 widths=(16, 32, 64, 128, 128), num_heads=4, image_size=64, max_text_length=16, text_every_scale=True,
                 optimizer=partial(torch.optim.Adam, lr=3e-4), lr_scheduler=None, augmentation=False)
