"""Hamburger head: global context by non-negative matrix factorisation (Geng et al., ICLR 2021).

LSMS (Eq. 12) uses it as the InterScale block of its Full-Scale Decoder, as SegNeXt's decode head does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from langseg.blocks.layers import ConvNormAct
from langseg.errors import ConfigError


class NMF2D(nn.Module):
    """Low-rank reconstruction ``X ~ D C^T`` of non-negative features by multiplicative NMF updates, in fp32.

    ``X`` is the ``(C/S, H*W)`` matrix of each of ``S`` channel groups. The bases start from a fixed
    random non-negative buffer (so inference is deterministic); ``train_steps``/``eval_steps`` updates
    run without gradients and the last coefficient update carries the gradient (one-step gradient).
    """

    def __init__(self, channels: int, rank: int = 16, groups: int = 1, train_steps: int = 6, eval_steps: int = 7,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if channels % groups:
            raise ConfigError(f"channels={channels} is not divisible by groups={groups}")
        self.groups, self.rank, self.eps = groups, rank, eps
        self.train_steps, self.eval_steps = train_steps, eval_steps
        generator = torch.Generator().manual_seed(0)
        bases = torch.rand(groups, channels // groups, rank, generator=generator)
        self.register_buffer("bases", F.normalize(bases, dim=1), persistent=False)

    def _update(self, x: Tensor, bases: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
        """One multiplicative update of coef (B,N,R) then bases (B,D,R) for x (B,D,N)."""
        numer = x.transpose(1, 2) @ bases
        coef = coef * numer / (coef @ (bases.transpose(1, 2) @ bases) + self.eps)
        numer = x @ coef
        bases = bases * numer / (bases @ (coef.transpose(1, 2) @ coef) + self.eps)
        return bases, coef

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = x.float().reshape(b * self.groups, c // self.groups, h * w)  # (B*S, D, N)
            bases = self.bases.float().repeat(b, 1, 1)  # (B*S, D, R)
            coef = torch.softmax(x.transpose(1, 2) @ bases, dim=-1)  # (B*S, N, R)
            steps = self.train_steps if self.training else self.eval_steps
            with torch.no_grad():
                for _ in range(steps):
                    bases, coef = self._update(x, bases, coef)
            numer = x.transpose(1, 2) @ bases
            coef = coef * numer / (coef @ (bases.transpose(1, 2) @ bases) + self.eps)
            out = bases @ coef.transpose(1, 2)  # (B*S, D, N)
        return out.reshape(b, c, h, w).to(dtype)


class Hamburger(nn.Module):
    """Hamburger: ``ReLU(x + Norm(Conv(NMF(ReLU(Conv(x))))))`` (the "lower bread", "ham", "upper bread")."""

    def __init__(self, channels: int, rank: int = 16, groups: int = 1, train_steps: int = 6,
                 eval_steps: int = 7) -> None:
        super().__init__()
        self.ham_in = nn.Conv2d(channels, channels, 1)
        self.ham = NMF2D(channels, rank, groups, train_steps, eval_steps)
        self.ham_out = ConvNormAct(channels, channels, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        enjoy = self.ham_out(self.ham(F.relu(self.ham_in(x))))
        return F.relu(x + enjoy)


class HamburgerHead(nn.Module):
    """SegNeXt-style light Hamburger head: squeeze (1x1 conv), Hamburger, align (1x1 conv), all BN + ReLU."""

    def __init__(self, in_channels: int, ham_channels: int = 256, channels: int = 256, rank: int = 16) -> None:
        super().__init__()
        self.squeeze = ConvNormAct(in_channels, ham_channels, 1)
        self.hamburger = Hamburger(ham_channels, rank=rank)
        self.align = ConvNormAct(ham_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.align(self.hamburger(self.squeeze(x)))
