import pytest
import torch

from langseg.blocks.unet_plam import PixelLevelAttention, UNetDecoder, UNetEncoder

WIDTHS = (4, 8, 16, 32, 32)


@pytest.mark.parametrize("size", [32, 64])
def test_encoder_strides_and_decoder_restores_the_input_size(size):
    enc, dec = UNetEncoder(2, WIDTHS), UNetDecoder(WIDTHS)
    feats = enc(torch.randn(2, 2, size, size))
    assert [f.shape[1] for f in feats] == list(WIDTHS)
    assert [f.shape[-1] for f in feats] == [size // 2 ** i for i in range(5)]
    assert enc.output_stride == 16
    assert dec(feats[-1], feats[:-1]).shape == (2, 1, size, size)


def test_plam_rescales_every_pixel_by_one_scalar_shared_by_all_channels():
    torch.manual_seed(0)
    plam = PixelLevelAttention(6)
    x = torch.rand(2, 6, 8, 8) + 0.5
    ratio = plam(x) / x  # (B, C, H, W): the same value across C at each pixel
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    assert ratio.std() > 0  # the weight varies over pixels


def test_gradients_reach_every_encoder_decoder_parameter():
    enc, dec = UNetEncoder(1, WIDTHS), UNetDecoder(WIDTHS)
    feats = enc(torch.randn(2, 1, 32, 32))
    dec(feats[-1], feats[:-1]).square().mean().backward()
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
