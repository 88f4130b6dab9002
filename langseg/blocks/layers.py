"""Shared primitives of the blocks: conv-norm-activation and fixed sine position encodings."""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "instance": lambda channels: nn.GroupNorm(channels, channels),  # one group per channel: affine instance norm
}
INPLACE_RELU: Callable[[], nn.Module] = partial(nn.ReLU, inplace=True)


class ConvNormAct(nn.Sequential):
    """``Conv2d``, then an optional norm and activation, as one ``nn.Sequential`` (state-dict keys ``0.*``, ``1.*``).

    ``norm`` is a name from ``NORMS`` (``"batch"``, ``"instance"``), a callable ``channels -> module``, or None
    for no norm; ``act`` builds the activation (default an in-place ReLU), None for none. ``padding`` defaults
    to ``kernel_size // 2`` ("same" at stride 1); the conv has a bias only with ``bias=True``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, bias: bool = False,
                 norm: str | Callable[[int], nn.Module] | None = "batch",
                 act: Callable[[], nn.Module] | None = INPLACE_RELU) -> None:
        padding = kernel_size // 2 if padding is None else padding
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)]
        if isinstance(norm, str):
            if norm not in NORMS:
                raise ValueError(f"unknown norm {norm!r}: choose one of {sorted(NORMS)}, a callable or None")
            norm = NORMS[norm]
        if norm is not None:
            layers.append(norm(out_channels))
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


def sine_position_encoding_1d(length: int, dim: int, device: torch.device | None = None,
                              dtype: torch.dtype = torch.float32) -> Tensor:
    """Transformer sine/cosine encoding of ``length`` positions, ``(length, dim)`` (Vaswani et al., Eq. 5).

    Column ``2i`` is ``sin(p / 10000^(2i/dim))`` and column ``2i + 1`` the matching cosine; computed in fp32.
    """
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe.to(dtype)


def sine_position_encoding_2d(height: int, width: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2D sine-cosine position code of a ``height x width`` grid, ``(H*W, dim)`` in fp32, rows row-major.

    Columns are ``[sin(y f), cos(y f), sin(x f), cos(x f)]`` over ``dim // 4`` frequencies ``f``, zero-padded
    to ``dim``; no parameters, any grid size.
    """
    quarter = dim // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1))
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    parts = []
    for coord in (ys.reshape(-1, 1) * freq, xs.reshape(-1, 1) * freq):
        parts += [coord.sin(), coord.cos()]
    code = torch.cat(parts, 1)  # (H*W, 4 * quarter)
    return nn.functional.pad(code, (0, dim - code.shape[1]))
