"""RecLMIS blocks: conditioned interaction (Eq. 1-3), weighted masking and conditioned reconstruction (Eq. 7, 9)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langseg.blocks.layers import sine_position_encoding_2d
from langseg.errors import ConfigError


class ConditionedAttention(nn.Module):
    """Multi-head cross-attention ``softmax(Q K^T / sqrt(d) ⊙ W) V`` (Eq. 1, 7, 9), softmax in fp32.

    The condition ``W`` (one weight per key, Eq. 7/9) multiplies the attention probabilities, which are
    renormalised: ``softmax(QK^T/sqrt(d) + log W)``. Keys with ``key_mask`` False (padding words) get
    weight zero. Without a condition this is plain masked cross-attention.
    """

    def __init__(self, dim: int, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: Tensor, context: Tensor, key_mask: Tensor | None = None,
                condition: Tensor | None = None) -> Tensor:
        """``query (B, Nq, C)``, ``context (B, Nk, C)``, ``key_mask (B, Nk)`` bool, ``condition (B, Nk)`` -> ``(B, Nq, C)``."""
        b, nq, c = query.shape
        h = self.num_heads
        q = self.q(query).view(b, nq, h, c // h).transpose(1, 2)  # (B, h, Nq, d)
        k = self.k(context).view(b, -1, h, c // h).transpose(1, 2)
        v = self.v(context).view(b, -1, h, c // h).transpose(1, 2)
        with torch.autocast(query.device.type, enabled=False):
            logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(c // h)  # (B, h, Nq, Nk)
            if condition is not None:
                logits = logits + torch.log(condition.float().clamp_min(1e-12))[:, None, None, :]
            if key_mask is not None:
                logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
            attn = logits.softmax(-1)
        attn = attn.to(v.dtype)
        return self.out((attn @ v).transpose(1, 2).reshape(b, nq, c))


class CrossAttentionLayer(nn.Module):
    """Pre-norm transformer layer: (conditioned) cross-attention to a context, then an MLP, both residual."""

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = ConditionedAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None,
                condition: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(context), key_mask, condition)
        return x + self.mlp(self.norm_mlp(x))


class TextToVisionEncoder(nn.Module):
    """Text-to-vision half of the conditioned interaction: ``V' = CA(query V, key/value E)`` (Eq. 1, roles swapped).

    Projects the coarsest visual map (1x1 conv) and the words (width ``text_dim`` -> ``dim``, a 3-tap conv
    over the word axis) to one width C, adds a fixed 2D position code to the patches, and attends from the
    patches to the real words. This is the only part of the interaction kept at inference.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int = 8, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.dim = dim
        self.vision_proj = nn.Conv2d(dim, dim, 1)
        self.text_proj = nn.Conv1d(text_dim, dim, 3, padding=1)
        self.layer = CrossAttentionLayer(dim, num_heads, mlp_ratio)

    def project(self, vision: Tensor, words: Tensor, word_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Patch tokens ``(B, N, C)``, their position code ``(N, C)`` and word tokens ``(B, L, C)`` (zero at padding)."""
        _, _, hgt, wid = vision.shape
        v = self.vision_proj(vision).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        pos = sine_position_encoding_2d(hgt, wid, self.dim, vision.device).to(v.dtype)
        words = words * word_mask.unsqueeze(-1).to(words.dtype)
        e = self.text_proj(words.transpose(1, 2)).transpose(1, 2) * word_mask.unsqueeze(-1).to(words.dtype)
        return v, pos, e

    def attend(self, v: Tensor, pos: Tensor, e: Tensor, word_mask: Tensor) -> Tensor:
        """``V' (B, N, C)`` from projected patches and words."""
        return self.layer(v + pos, e, word_mask)

    def forward(self, vision: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """``vision (B, C, H, W)``, ``words (B, L, text_dim)``, ``word_mask (B, L)`` -> ``V'`` as ``(B, C, H, W)``."""
        v, pos, e = self.project(vision, words, word_mask)
        out = self.attend(v, pos, e, word_mask)
        return out.transpose(1, 2).reshape(vision.shape)


@dataclass
class InteractionOutput:
    """Everything the training losses need from the conditioned interaction; tokens are ``(B, N|L, C)``."""

    vision_out: Tensor  # V' as (B, C, H, W), fed to the decoder
    v: Tensor  # patches V (B, N, C): projected (paper) or the encoder's own (official)
    pos: Tensor | None  # patch position code (N, C) the reconstructor queries add (paper); None (official)
    e: Tensor  # projected words E (B, L, C)
    word_mask: Tensor  # (B, L) bool
    w_poi: Tensor | None = None  # (B, N), sums to 1 (Eq. 2)
    w_woi: Tensor | None = None  # (B, L), sums to 1 over real words, 0 at padding (Eq. 3)


class ConditionedInteraction(nn.Module):
    """Conditioned interaction (Eq. 1-3): text-to-vision and vision-to-text cross-attention, then the weights.

    ``W_poi = softmax_N(MLP(V'))`` over patches and ``W_woi = softmax_L(MLP(E'))`` over real words (padding
    words get zero weight), both in fp32; ``head_dropout`` drops V' and E' on their way into the two MLPs
    (training only). With ``conditions=False`` (inference) only the text-to-vision half runs.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int = 8, mlp_ratio: float = 4.0,
                 head_dropout: float = 0.0) -> None:
        super().__init__()
        self.text_to_vision = TextToVisionEncoder(dim, text_dim, num_heads, mlp_ratio)
        self.vision_to_text = CrossAttentionLayer(dim, num_heads, mlp_ratio)
        self.head_dropout = nn.Dropout(head_dropout)
        self.poi_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 1))
        self.woi_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 1))

    def forward(self, vision: Tensor, words: Tensor, word_mask: Tensor, conditions: bool = True) -> InteractionOutput:
        v, pos, e = self.text_to_vision.project(vision, words, word_mask)
        v_prime = self.text_to_vision.attend(v, pos, e, word_mask)  # (B, N, C)
        out = InteractionOutput(v_prime.transpose(1, 2).reshape(vision.shape), v, pos, e, word_mask)
        if conditions:
            e_prime = self.vision_to_text(e, v + pos)  # Eq. 1: query E, key/value V -> (B, L, C)
            out.w_poi = self.poi_head(self.head_dropout(v_prime)).squeeze(-1).float().softmax(-1)  # Eq. 2
            woi_logits = self.woi_head(self.head_dropout(e_prime)).squeeze(-1).float()
            woi_logits = woi_logits.masked_fill(~word_mask, float("-inf"))
            out.w_woi = woi_logits.softmax(-1)  # Eq. 3
        return out


class OfficialInteractionFusion(nn.Module):
    """The official code's fusion: ``E' = MHA(query E, key/value V)``, then ``V' = MHA(query V, key/value E')``.

    Bare ``nn.MultiheadAttention`` (attention dropout 0.1; no residual, norm or MLP; padding words not masked).
    V: the coarsest map through a 1x1 conv plus a learned position table (``grid x grid``, zero-initialised,
    resized bicubically for other grids), dropout 0.1. E: the words through a 3-tap conv over the word axis
    (``text_dim -> C``), padding included. Everything here runs at inference: V' needs E'.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int = 4, grid: int = 14, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.grid = grid
        self.text_proj = nn.Conv1d(text_dim, dim, 3, padding=1)
        self.patch_embed = nn.Conv2d(dim, dim, 1)
        self.position = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.dropout = nn.Dropout(dropout)
        self.text_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.vision_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)

    def position_table(self, height: int, width: int) -> Tensor:
        """The learned ``(1, H*W, C)`` position table at an ``H x W`` grid."""
        if (height, width) == (self.grid, self.grid):
            return self.position
        table = self.position.transpose(1, 2).reshape(1, -1, self.grid, self.grid)
        table = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False)
        return table.flatten(2).transpose(1, 2)

    def forward(self, vision: Tensor, words: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``vision (B, C, H, W)``, ``words (B, L, text_dim)`` -> ``V' (B, N, C)``, ``E' (B, L, C)``, ``E (B, L, C)``."""
        e = self.text_proj(words.transpose(1, 2)).transpose(1, 2)
        v = self.patch_embed(vision).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        v = self.dropout(v + self.position_table(*vision.shape[-2:]))
        e_prime = self.text_attn(e, v, v, need_weights=False)[0]
        v_prime = self.vision_attn(v, e_prime, e_prime, need_weights=False)[0]
        return v_prime, e_prime, e


class OfficialConditionedInteraction(nn.Module):
    """Conditioned interaction as the official RecLMIS code computes it (``interaction: official``).

    ``fusion`` (``OfficialInteractionFusion``) gives V' and E'; for the training heads the words go on through
    ``E'' = ReLU(BN(Conv1d_3(E')))``, then ``W_poi = softmax_N(MLP(V'))`` and ``W_woi = softmax_L(MLP(E''))``
    over real words (Eq. 2-3); ``head_dropout`` drops V' and E'' on their way into the two MLPs (training only;
    the official MosMedData+ config: 0.5). ``v`` in the output is the encoder's own coarsest map as tokens: the
    official contrastive loss and reconstructors read it, not the embedded patches.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int = 4, grid: int = 14, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.fusion = OfficialInteractionFusion(dim, text_dim, num_heads, grid)
        self.text_out = nn.Sequential(nn.Conv1d(dim, dim, 3, padding=1), nn.BatchNorm1d(dim), nn.ReLU())
        self.head_dropout = nn.Dropout(head_dropout)
        self.poi_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 1))
        self.woi_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 1))

    def forward(self, vision: Tensor, words: Tensor, word_mask: Tensor, conditions: bool = True) -> InteractionOutput:
        v_prime, e_prime, e = self.fusion(vision, words)
        v = vision.flatten(2).transpose(1, 2)
        out = InteractionOutput(v_prime.transpose(1, 2).reshape(vision.shape), v, None, e, word_mask)
        if conditions:
            e_out = self.text_out(e_prime.transpose(1, 2)).transpose(1, 2)  # (B, L, C)
            out.w_poi = self.poi_head(self.head_dropout(v_prime)).squeeze(-1).float().softmax(-1)
            woi_logits = self.woi_head(self.head_dropout(e_out)).squeeze(-1).float()
            woi_logits = woi_logits.masked_fill(~word_mask, float("-inf"))
            out.w_woi = woi_logits.softmax(-1)
        return out


@torch.no_grad()
def sample_weighted_mask(weights: Tensor, ratio: float, valid: Tensor | None = None, top_up: bool = False) -> Tensor:
    """Pick ``max(1, floor(ratio * n_valid))`` positions per row without replacement, with probability ``weights``.

    ``weights (B, N)`` >= 0; ``valid (B, N)`` bool (default all). Uses the Gumbel-top-k trick, which draws
    exactly like sequential sampling without replacement. A row with fewer positive weights than it needs
    picks only those (``top_up=False``), or picks them all and draws the rest uniformly from its valid
    zero-weight positions (``top_up=True``, the official ``mask_mode_dist_random``). Invalid positions are
    never picked. Returns a ``(B, N)`` bool mask, True = masked.
    """
    if valid is None:
        valid = torch.ones_like(weights, dtype=torch.bool)
    w = weights.float().masked_fill(~valid, 0.0)
    count = (valid.sum(1).float() * ratio).floor().clamp_min(1).long()
    positive = w > 0
    count = torch.minimum(count, valid.sum(1) if top_up else positive.sum(1))
    gumbel = -torch.log(-torch.log(torch.rand_like(w).clamp(1e-20, 1.0 - 1e-7)))
    scores = torch.log(w).masked_fill(~positive, float("-inf")) + gumbel
    rank = scores.argsort(1, descending=True).argsort(1)  # rank of every position within its row
    if top_up:  # valid zero-weight positions rank after the positive ones, in uniformly random order
        spare = gumbel.masked_fill(positive | ~valid, float("-inf"))
        spare_rank = spare.argsort(1, descending=True).argsort(1)
        rank = torch.where(positive, rank, positive.sum(1, keepdim=True) + spare_rank)
    return rank < count.unsqueeze(1)


class ConditionedReconstructor(nn.Module):
    """Conditioned reconstructor Ψ (Eq. 7, 9): masked tokens query the other modality under its condition weights.

    ``depth`` conditioned transformer layers (cross-attention weighted by the condition, then an MLP), a
    final LayerNorm and a linear head back to the feature space of the target (width ``out_dim``, default
    ``dim``).
    """

    def __init__(self, dim: int, depth: int = 3, num_heads: int = 8, mlp_ratio: float = 4.0,
                 out_dim: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim or dim)

    def forward(self, masked: Tensor, context: Tensor, condition: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """``masked (B, Nq, C)`` (zeroed rows), ``context (B, Nk, C)``, ``condition (B, Nk)`` -> reconstruction ``(B, Nq, C)``."""
        x = masked
        for layer in self.layers:
            x = layer(x, context, context_mask, condition)
        return self.head(self.norm(x))


def official_attention_mask(condition: Tensor | None, num_heads: int, queries: int, keys: int, causal: bool,
                            device: torch.device) -> Tensor | None:
    """Additive mask of the official reconstructor's attention: ``(B*h, Nq, Nk)`` with a condition, else ``(Nq, Nk)``.

    ``softmax(logits + log(W + 1e-10))`` equals the official ``softmax(logits) * (W + 1e-10)``, renormalised, for a
    condition ``W (B, Nk)``; ``causal`` adds -inf above the diagonal (query i sees keys <= i). None if neither.
    """
    if condition is None and not causal:
        return None
    mask = torch.zeros(queries, keys, device=device)
    if causal:
        mask = mask.fill_(float("-inf")).triu(1)
    if condition is None:
        return mask
    weighted = torch.log(condition.float() + 1e-10)[:, None, :] + mask  # (B, Nq, Nk)
    return weighted.repeat_interleave(num_heads, 0)  # batch-major, as nn.MultiheadAttention splits heads


class OfficialReconstructorLayer(nn.Module):
    """Post-norm transformer-decoder layer of the official RecLMIS reconstructor (``nets/transformer/decoder.py``).

    ``x = LN(x + Drop(SelfAttn(x)))`` with a causal mask (token i sees tokens <= i), then, in a layer with
    ``cross_attention``, ``x = LN(x + Drop(CrossAttn(x, context)))``, then ``x = LN(x + Drop(W2 ReLU(W1 x)))``.
    A condition (one weight per key) multiplies the attention probabilities, renormalised
    (``official_attention_mask``). Hidden width ``mlp_ratio * dim`` (2 officially), dropout 0.1.
    """

    def __init__(self, dim: int, num_heads: int = 4, mlp_ratio: float = 2.0, cross_attention: bool = True,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.self_attn_norm = nn.LayerNorm(dim)
        if cross_attention:
            self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
            self.cross_attn_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.final_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, self_condition: Tensor | None = None, context: Tensor | None = None,
                context_condition: Tensor | None = None) -> Tensor:
        """``x (B, N, C)``; ``self_condition (B, N)`` weighs the self-attention keys, ``context_condition (B, Nk)``
        the keys of ``context (B, Nk, C)`` -> ``(B, N, C)``."""
        n = x.shape[1]
        mask = official_attention_mask(self_condition, self.num_heads, n, n, True, x.device)
        attended = self.self_attn(x, x, x, attn_mask=_like(mask, x), need_weights=False)[0]
        x = self.self_attn_norm(x + self.dropout(attended))
        if context is not None:
            mask = official_attention_mask(context_condition, self.num_heads, n, context.shape[1], False, x.device)
            attended = self.cross_attn(x, context, context, attn_mask=_like(mask, x), need_weights=False)[0]
            x = self.cross_attn_norm(x + self.dropout(attended))
        return self.final_norm(x + self.dropout(self.fc2(F.relu(self.fc1(x)))))


def _like(mask: Tensor | None, x: Tensor) -> Tensor | None:
    """``mask`` in the dtype attention computes in (the autocast dtype under autocast)."""
    if mask is None:
        return None
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    return mask.to(dtype)


class OfficialConditionedReconstructor(nn.Module):
    """Conditioned reconstructor Ψ as the official RecLMIS code computes it (``DualTransformer``, ``decoding=2``).

    The context first passes ``depth`` layers of causal self-attention conditioned by ``W`` (``context_layers``,
    the official ``decoder1``); the masked tokens then pass ``depth`` layers of causal self-attention,
    cross-attention to the encoded context conditioned by ``W``, and FFN (``query_layers``, ``decoder2``).
    The output is the last layer's tokens; a linear head maps them to ``out_dim`` only where it differs from
    ``dim`` (the official code has none: its text target, CLIP's 512-d words, has its tokens' width).
    """

    def __init__(self, dim: int, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 2.0,
                 out_dim: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        self.context_layers = nn.ModuleList(OfficialReconstructorLayer(dim, num_heads, mlp_ratio, False, dropout)
                                            for _ in range(depth))
        self.query_layers = nn.ModuleList(OfficialReconstructorLayer(dim, num_heads, mlp_ratio, True, dropout)
                                          for _ in range(depth))
        self.head = nn.Linear(dim, out_dim) if out_dim not in (None, dim) else nn.Identity()

    def forward(self, masked: Tensor, context: Tensor, condition: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """``masked (B, Nq, C)`` (zeroed rows), ``context (B, Nk, C)``, ``condition (B, Nk)`` -> ``(B, Nq, out_dim)``.

        Keys where ``context_mask`` is False get condition weight 0 (the official code passes no mask: its
        condition is already 0 at padding words)."""
        if context_mask is not None:
            condition = condition.masked_fill(~context_mask, 0.0)
        for layer in self.context_layers:
            context = layer(context, self_condition=condition)
        x = masked
        for layer in self.query_layers:
            x = layer(x, context=context, context_condition=condition)
        return self.head(x)
