"""random_zoom: image and mask zoomed together about the centre; the padding and resampling options."""
from __future__ import annotations

import torch

from langseg.blocks.augmentation import PhotometricAugmentation, random_zoom


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


def test_photometric_brightness_shifts_each_image_within_its_range_and_keeps_mask_and_aligned():
    torch.manual_seed(0)
    ramp = torch.linspace(0.2, 0.8, 16).repeat(16, 1)
    image = torch.stack([ramp, ramp.T])[:, None]  # (2, 1, 16, 16), each image's own range 0.2-0.8
    image[:, :, 0, 0], image[:, :, -1, -1] = 0.0, 1.0
    mask, aligned = (image > 0.5).float(), torch.rand(2, 1, 16, 16)
    augment = PhotometricAugmentation(blur_sigma=(1e-3, 1e-3), contrast=0.0, brightness=0.25, p=1.0)
    out, out_mask, out_aligned = augment(image, mask, aligned)
    shift = (out - image)[:, :, 4:12, 4:12]  # away from the clamped corners
    assert torch.allclose(shift, shift.mean((2, 3), keepdim=True), atol=1e-4)  # one shift per image
    assert 0 < shift.abs().amax() <= 0.25 + 1e-4 and not torch.allclose(shift[0], shift[1])
    assert torch.equal(out_mask, mask) and torch.equal(out_aligned, aligned)
    unchanged, _ = PhotometricAugmentation(blur_sigma=(1e-3, 1e-3), contrast=0.0, p=1.0)(image, mask)
    assert torch.allclose(unchanged, image, atol=1e-4)  # brightness 0 (the default): no shift


def test_photometric_hue_and_saturation_apply_to_rgb_batches_only():
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 16, 16)
    augment = PhotometricAugmentation(blur_sigma=(1e-3, 1e-3), contrast=0.0, saturation=0.0, hue=0.2, p=1.0)
    out, _ = augment(rgb, torch.zeros(2, 1, 16, 16))
    assert not torch.allclose(out, rgb, atol=1e-3)  # the hue turned
    gray, _ = augment(rgb[:, :1], torch.zeros(2, 1, 16, 16))
    assert torch.allclose(gray, rgb[:, :1], atol=1e-3)  # no hue on one channel, and no error
