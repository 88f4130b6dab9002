"""Parameter and FLOP counting shared by the benchmark scripts.

FLOPs follow the papers' convention: one multiply-add counts as one FLOP, i.e. half of what
``torch.utils.flop_counter.FlopCounterMode`` reports (it counts a multiply-add as two).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: nn.Module, exclude: tuple[str, ...] = ("text_encoder.",), trainable_only: bool = False) -> int:
    """Number of parameters of ``module``, leaving out those whose name starts with an ``exclude`` prefix."""
    return sum(p.numel() for name, p in module.named_parameters()
               if not name.startswith(exclude) and (p.requires_grad or not trainable_only))


@torch.no_grad()
def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-adds (the papers' "FLOPs") of running ``fn()`` once, counted by ``FlopCounterMode``."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() // 2
