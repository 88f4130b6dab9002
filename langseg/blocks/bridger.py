"""MMI-UNet's Bridger (Bui et al., MICCAI 2024; the paper's ITM module): a two-way vision-text interaction."""
from __future__ import annotations

from torch import Tensor, nn


def interactor(width: int, heads: int = 8, ffn_dim: int = 128, dropout: float = 0.1) -> nn.TransformerDecoderLayer:
    """A DETR-style post-norm decoder layer: self-attention, cross-attention to the other modality, ReLU FFN.

    Each sub-layer is ``x = LayerNorm(x + Dropout(f(x)))``, without position codes: this is exactly
    ``nn.TransformerDecoderLayer`` with ``norm_first=False``.
    """
    return nn.TransformerDecoderLayer(width, heads, ffn_dim, dropout, activation="relu", batch_first=True,
                                      norm_first=False)


class Bridger(nn.Module):
    """Two-way interaction of a feature map and word features, each returned with a residual update.

    The map is turned into tokens by a stride-``s`` ``s x s`` conv (C -> ``width``) and the words by a
    Linear (text width -> ``width``); both are LayerNorm-ed. One interactor lets the visual tokens attend
    to the words, another lets the words attend to the visual tokens (both read the normalised inputs).
    A transposed conv back to the map's size and a Linear back to the text width give the updates:
    ``vis + up(v)`` and ``text + linear(t)``. With ``update_text=False`` the text branch is not built and
    ``text_out`` is None (the last Bridger's text output is never used by MMI-UNet).
    """

    def __init__(self, channels: int, text_dim: int, width: int | None = None, heads: int = 8, ffn_dim: int = 128,
                 dropout: float = 0.1, stride: int = 2, update_text: bool = True) -> None:
        super().__init__()
        width = channels if width is None else width
        self.stride = stride
        self.to_tokens = nn.Conv2d(channels, width, stride, stride=stride, bias=False)
        self.from_tokens = nn.ConvTranspose2d(width, channels, stride, stride=stride, bias=False)
        self.text_in = nn.Linear(text_dim, width)
        self.vision_norm = nn.LayerNorm(width)
        self.text_norm = nn.LayerNorm(width)
        self.vision_interactor = interactor(width, heads, ffn_dim, dropout)
        self.text_interactor = interactor(width, heads, ffn_dim, dropout) if update_text else None
        self.text_out = nn.Linear(width, text_dim) if update_text else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: Linear weights N(0, 0.02) with zero bias (attention output projections
        included), convolutions Kaiming-normal (fan-out, ReLU); attention input projections keep PyTorch's."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, vis: Tensor, text: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``vis (B, C, H, W)``, ``text (B, T, Ct)`` -> updated ``(B, C, H, W)`` and ``(B, T, Ct)`` (or None).

        ``text_mask`` (True for real words), when given, hides padded words from both attentions.
        """
        h, w = vis.shape[-2:]
        # maps smaller than the stride are replicate-padded to one token; odd sizes lose their last row/column
        # in the tokens and get it back from the transposed conv's output size
        pad_h, pad_w = max(self.stride - h, 0), max(self.stride - w, 0)
        x = nn.functional.pad(vis, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else vis
        v = self.to_tokens(x)
        b, c, th, tw = v.shape
        v = self.vision_norm(v.flatten(2).transpose(1, 2))  # (B, C, h, w) -> (B, h*w, C)
        t = self.text_norm(self.text_in(text))
        padding = None if text_mask is None else ~text_mask
        v_new = self.vision_interactor(v, t, memory_key_padding_mask=padding)
        v_new = v_new.transpose(1, 2).reshape(b, c, th, tw)
        vis = vis + self.from_tokens(v_new, output_size=x.shape[-2:])[..., :h, :w]
        if self.text_interactor is None or self.text_out is None:
            return vis, None
        t_new = self.text_interactor(t, v, tgt_key_padding_mask=padding)
        return vis, text + self.text_out(t_new)
