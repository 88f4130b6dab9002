import torch

from langseg.losses import (balanced_bce_loss, bce_loss, boundary_map, boundary_weighted_dice_loss, dice_loss,
                            focal_loss)


def _square(size: int = 16) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., 4:12, 4:12] = 1
    return mask


def test_dice_loss_is_low_for_a_match_and_high_for_the_complement():
    mask = _square()
    good, bad = (mask * 2 - 1) * 20, (1 - mask * 2) * 20
    assert dice_loss(good, mask) < 0.01
    assert dice_loss(bad, mask) > 0.99


def test_squared_dice_equals_dice_on_hard_predictions_and_is_lower_on_soft_ones():
    mask = _square()
    hard = (mask * 2 - 1) * 30
    assert torch.isclose(dice_loss(hard, mask, squared=True), dice_loss(hard, mask), atol=1e-6)
    soft = torch.zeros_like(mask)  # p = 0.5 everywhere: p^2 < p shrinks the denominator
    assert dice_loss(soft, mask, squared=True) < dice_loss(soft, mask)


def test_balanced_bce_averages_lesion_and_background_pixels_separately():
    mask = _square()
    logits = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    # four times the background, with the same logits: plain BCE drops, the balanced one does not move
    wide_mask = torch.nn.functional.pad(mask, (0, 16, 0, 16))
    wide_logits = torch.nn.functional.pad(logits, (0, 16, 0, 16), value=float(logits[0, 0, 0, 0]))
    pos = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask > 0], mask[mask > 0])
    neg_wide = torch.nn.functional.binary_cross_entropy_with_logits(wide_logits[wide_mask == 0], wide_mask[wide_mask == 0])
    assert torch.isclose(balanced_bce_loss(wide_logits, wide_mask), 0.5 * pos + 0.5 * neg_wide)
    assert bce_loss(wide_logits, wide_mask) < bce_loss(logits, mask)
    assert torch.isclose(balanced_bce_loss(logits, torch.zeros_like(mask)),  # no lesion: background half only
                         0.5 * bce_loss(logits, torch.zeros_like(mask)))


def test_boundary_map_is_the_band_between_dilation_and_erosion():
    edge = boundary_map(_square())
    assert edge[0, 0, 3, 3] == 1 and edge[0, 0, 4, 4] == 1  # just outside, just inside
    assert edge[0, 0, 8, 8] == 0 and edge[0, 0, 0, 0] == 0  # deep inside, far outside
    assert edge.sum() == 10 * 10 - 6 * 6


def test_boundary_weighted_dice_weighs_boundary_errors_more():
    mask = _square()
    logits = (mask * 2 - 1) * 5
    edge_error = logits.clone()
    edge_error[..., 4, 4:12] = -5  # miss the boundary row
    assert torch.isclose(boundary_weighted_dice_loss(logits, mask, boundary_weight=1.0), dice_loss(logits, mask))
    plain = dice_loss(edge_error, mask)
    weighted = boundary_weighted_dice_loss(edge_error, mask, boundary_weight=1.2)
    assert weighted > plain


def test_losses_are_fp32_and_differentiable_under_bf16_inputs():
    mask = _square()
    logits = torch.randn(1, 1, 16, 16, dtype=torch.bfloat16, requires_grad=True)
    total = dice_loss(logits, mask) + bce_loss(logits, mask) + focal_loss(logits, mask)
    assert total.dtype == torch.float32
    total.backward()
    assert torch.isfinite(logits.grad.float()).all() and logits.grad.abs().sum() > 0
