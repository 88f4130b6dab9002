"""HiMix blocks (Hwang et al., WACV 2026): layer-group text mixer (DLFM), FFT refinement (ASRM), decoder layer."""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from langseg.blocks.guide import (GUIDE_SCALE_INIT, PositionalCrossAttention, PositionalSelfAttention,
                                  TextTokenProjection, flatten_tokens)
from langseg.blocks.layers import sine_position_encoding_1d
from langseg.errors import ConfigError


class LayerGroupMixer(nn.Module):
    """DLFM: split the chosen hidden layers into ``groups`` consecutive groups, softmax-weighted sum in each.

    Returns the groups deepest first, so the deepest text guides the coarsest decoder stage.
    """

    def __init__(self, layers: Sequence[int], groups: int) -> None:
        super().__init__()
        self.layers = tuple(int(i) for i in layers)
        if groups < 1 or len(self.layers) < groups or len(self.layers) % groups:
            raise ConfigError(f"HiMix splits the text layers {list(self.layers)} into {groups} equal groups, one per "
                              f"decoder stage, but {len(self.layers)} layers cannot be split that way: choose "
                              f"text_layers with a multiple of {groups} entries")
        self.per_group = len(self.layers) // groups
        self.logits = nn.Parameter(torch.ones(groups, self.per_group))  # softmax over each row

    def forward(self, hidden_states: Sequence[Tensor]) -> list[Tensor]:
        if max(self.layers) >= len(hidden_states):
            raise ConfigError(f"text layer {max(self.layers)} requested, but the text encoder gives "
                              f"{len(hidden_states)} hidden states (embeddings first)")
        weights = self.logits.softmax(dim=-1)
        chosen = torch.stack([hidden_states[i] for i in self.layers])  # (G*k, B, T, C)
        grouped = chosen.unflatten(0, (weights.shape[0], self.per_group))  # (G, k, B, T, C)
        mixed = (weights[:, :, None, None, None] * grouped).sum(1)  # (G, B, T, C)
        return list(mixed.flip(0).unbind(0))


class FrequencyRefinement(nn.Module):
    """ASRM: ``x + IFFT(FFT(x) * (1 - Gaussian_sigma))``, a high-pass with learnable width sigma.

    ``centred=True`` shifts the spectrum so the Gaussian sits on the zero frequency (a true high-pass);
    ``centred=False`` is the official code, whose unshifted Gaussian at (H/2, W/2) removes the highest
    frequencies instead.
    """

    def __init__(self, sigma: float = 5.0, centred: bool = True) -> None:
        super().__init__()
        self.sigma = nn.Parameter(torch.tensor(float(sigma)))
        self.centred = centred

    def high_pass(self, h: int, w: int, device: torch.device) -> Tensor:
        """``1 - exp(-d^2 / 2 sigma^2)`` with ``d`` the distance to (H/2, W/2), shape ``(H, W)``."""
        u = torch.arange(h, device=device, dtype=torch.float32) - h // 2
        v = torch.arange(w, device=device, dtype=torch.float32) - w // 2
        dist2 = u[:, None] ** 2 + v[None, :] ** 2
        return 1.0 - torch.exp(-dist2 / (2.0 * self.sigma.float() ** 2))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        spec = torch.fft.fft2(x.float(), norm="ortho")
        if self.centred:
            spec = torch.fft.fftshift(spec, dim=(-2, -1))
        spec = spec * self.high_pass(h, w, x.device)
        if self.centred:
            spec = torch.fft.ifftshift(spec, dim=(-2, -1))
        return x + torch.fft.ifft2(spec, norm="ortho").real.to(x.dtype)


class HiMixLayer(nn.Module):
    """HiMix decoder layer: ASRM, cross-attention to the text, self-attention, FFN, each with a learnable scale.

    ``ffn="prenorm"``: LayerNorm, Linear C -> C/2, ReLU, Dropout, Linear C/2 -> C, Dropout (pre-norm like the two
    attentions); ``ffn="official"``: the official code's Linear, ReLU, Dropout, Linear (its ``norm`` is never called).
    ``text_norm``: a LayerNorm after the text projection (``TextTokenProjection``; not in the paper).
    """

    def __init__(self, channels: int, text_dim: int, text_tokens: tuple[int, int], heads: int = 8,
                 sigma: float = 5.0, centred_fft: bool = True, dropout: float = 0.1,
                 ffn: Literal["prenorm", "official"] = "prenorm", mask_padding: bool = True,
                 text_norm: bool = False) -> None:
        super().__init__()
        self.text_proj = TextTokenProjection(text_dim, channels, *text_tokens, mask_padding=mask_padding,
                                             norm=text_norm)
        self.refine = FrequencyRefinement(sigma, centred_fft)
        self.cross_attn = PositionalCrossAttention(channels, heads)
        self.self_attn = PositionalSelfAttention(channels, heads)
        mlp = [nn.Linear(channels, channels // 2), nn.ReLU(inplace=True), nn.Dropout(dropout),
               nn.Linear(channels // 2, channels)]
        if ffn == "prenorm":
            mlp = [nn.LayerNorm(channels), *mlp, nn.Dropout(dropout)]
        elif ffn != "official":
            raise ConfigError(f"ffn must be 'prenorm' or 'official', got {ffn!r}")
        self.ffn = nn.Sequential(*mlp)
        self.scales = nn.Parameter(torch.full((3,), GUIDE_SCALE_INIT))

    def forward(self, vis: Tensor, text: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = vis.shape
        txt = self.text_proj(text, mask)
        x, pos = flatten_tokens(self.refine(vis))
        txt_pos = sine_position_encoding_1d(txt.shape[1], c, vis.device, vis.dtype).unsqueeze(0)
        x = x + self.scales[0] * self.cross_attn(x, pos, txt, txt_pos)
        x = x + self.scales[1] * self.self_attn(x, pos)
        x = x + self.scales[2] * self.ffn(x)
        return x.transpose(1, 2).reshape(b, c, h, w)
