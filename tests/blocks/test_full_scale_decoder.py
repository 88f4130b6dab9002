import pytest
import torch

from langseg.blocks.full_scale_decoder import FullScaleDecoder

DIMS = (8, 16, 24, 32)


def _features(size, b=2):
    return [torch.randn(b, c, size // s, size // s) for c, s in zip(DIMS, (4, 8, 16, 32))]


@pytest.mark.parametrize("size", [32, 64])
def test_pixels_at_first_stage_size_and_logits_at_input_size(size):
    dec = FullScaleDecoder(DIMS, ham_channels=16, channels=12, nmf_rank=4)
    pixels, logits = dec(_features(size), (size, size))
    assert pixels.shape == (2, 12, size // 4, size // 4)
    assert logits.shape == (2, 1, size, size)


def test_default_decodes_stages_two_to_four_only():
    torch.manual_seed(0)
    dec = FullScaleDecoder(DIMS, ham_channels=16, channels=12, nmf_rank=4).eval()
    feats = _features(64)
    other = [torch.randn_like(feats[0])] + feats[1:]
    with torch.no_grad():
        torch.testing.assert_close(dec(feats, (64, 64)), dec(other, (64, 64)))
    with_p1 = FullScaleDecoder(DIMS, stages=(0, 1, 2, 3), ham_channels=16, channels=12, nmf_rank=4).eval()
    with torch.no_grad():
        assert not torch.allclose(with_p1(feats, (64, 64))[1], with_p1(other, (64, 64))[1])


def test_align_stage_one_decodes_at_an_eighth_with_the_same_parameters():
    at_quarter = FullScaleDecoder(DIMS, ham_channels=16, channels=12, nmf_rank=4)
    at_eighth = FullScaleDecoder(DIMS, ham_channels=16, channels=12, nmf_rank=4, align_stage=1)
    pixels, logits = at_eighth(_features(64), (64, 64))
    assert pixels.shape == (2, 12, 8, 8) and logits.shape == (2, 1, 64, 64)
    assert sum(p.numel() for p in at_eighth.parameters()) == sum(p.numel() for p in at_quarter.parameters())
    with pytest.raises(ValueError, match="align_stage=4 is not an encoder stage"):
        FullScaleDecoder(DIMS, align_stage=4)
