import torch

from langseg.losses import bce_loss, boundary_map, boundary_weighted_dice_loss, dice_loss, focal_loss


def _square(size: int = 16) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., 4:12, 4:12] = 1
    return mask


def test_dice_loss_is_low_for_a_match_and_high_for_the_complement():
    mask = _square()
    good, bad = (mask * 2 - 1) * 20, (1 - mask * 2) * 20
    assert dice_loss(good, mask) < 0.01
    assert dice_loss(bad, mask) > 0.99


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
