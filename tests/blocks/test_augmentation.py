"""random_zoom: image and mask zoomed together about the centre; the padding and resampling options."""
from __future__ import annotations

import torch

from langseg.blocks.augmentation import random_zoom


def test_zoom_out_pads_with_the_edge_or_zeros_and_keeps_the_mask_binary():
    image = torch.rand(1, 1, 32, 32) * 0.5 + 0.5  # no zero pixel
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 12:20, 12:20] = 1
    border_image, border_mask = random_zoom(0.5, 0.5, prob=1.0, resample="bicubic", padding_mode="border")(image, mask)
    zeros_image, zeros_mask = random_zoom(0.5, 0.5, prob=1.0)(image, mask)
    assert zeros_image[..., :4, :4].abs().max() < 1e-6  # the outside is zero
    assert border_image[..., :4, :4].min() > 0.4  # the outside repeats the image's edge
    for m in (border_mask, zeros_mask):
        assert set(m.unique().tolist()) <= {0.0, 1.0} and abs(float(m.sum()) - 16) <= 4  # 8x8 lesion -> about 4x4
    assert torch.equal(random_zoom(0.5, 0.5, prob=0.0)(image, mask)[0], image)  # p = 0: unchanged
