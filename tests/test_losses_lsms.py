"""Tests of the LSMS losses in ``langseg/losses.py`` (vision-language pixel contrastive loss, Eq. 14)."""
import torch

from langseg.losses import pixel_text_contrastive_loss


def _mask(size=8):
    mask = torch.zeros(2, 1, size, size)
    mask[:, :, 2:5, 2:5] = 1
    return mask


def _features(mask, aligned: bool, text):
    """Positive pixels carry ``text`` (or its opposite), negatives a direction orthogonal to it."""
    other = torch.tensor([0.0, 1.0, 0.0, 0.0])
    pos = text if aligned else -text
    m = mask[:, 0, :, :, None]  # (B, H, W, 1)
    return (m * pos[:, None, None, :] + (1 - m) * other).permute(0, 3, 1, 2)


def test_lower_when_positive_pixels_match_the_text_and_differ_from_negatives():
    mask = _mask()
    text = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2)
    good = pixel_text_contrastive_loss(_features(mask, True, text), text, mask)
    bad = pixel_text_contrastive_loss(_features(mask, False, text), text, mask)
    assert good < 0.01 < bad


def test_sampling_is_bounded_and_resizes_the_mask():
    torch.manual_seed(0)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, :32] = 1
    pixels = torch.randn(2, 4, 16, 16, requires_grad=True)
    loss = pixel_text_contrastive_loss(pixels, torch.randn(2, 4), mask, num_samples=5)
    loss.backward()
    touched = (pixels.grad.abs().sum(1) > 0).sum(dim=(1, 2))
    assert (touched <= 10).all() and (touched > 0).all()


def test_no_positive_pixel_gives_zero_with_a_graph():
    pixels = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss = pixel_text_contrastive_loss(pixels, torch.randn(2, 4), torch.zeros(2, 1, 8, 8))
    assert loss == 0 and loss.requires_grad


def test_fp32_under_bf16_inputs():
    mask = _mask()
    loss = pixel_text_contrastive_loss(torch.randn(2, 4, 8, 8, dtype=torch.bfloat16),
                                       torch.randn(2, 4, dtype=torch.bfloat16), mask)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_literal_eq14_is_minus_the_probability_whose_log_infonce_takes():
    torch.manual_seed(0)
    mask, pixels, text = _mask(), torch.randn(2, 4, 8, 8), torch.randn(2, 4)
    infonce = pixel_text_contrastive_loss(pixels, text, mask, num_samples=4, generator=torch.Generator().manual_seed(1))
    literal = pixel_text_contrastive_loss(pixels, text, mask, num_samples=4, generator=torch.Generator().manual_seed(1),
                                          form="literal")  # the same samples
    assert -1.0 <= literal <= 0.0 < infonce
    assert literal <= -torch.exp(-infonce)  # Jensen: mean(p) >= exp(mean(log p)), p the positives' probabilities
    aligned = _features(mask, True, torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2))
    perfect = pixel_text_contrastive_loss(aligned, torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2), mask, form="literal")
    assert perfect < -0.99  # every positive pixel's probability is ~1
