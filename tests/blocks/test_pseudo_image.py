import pytest
import torch

from langseg.blocks.pseudo_image import TextToPseudoImage


def test_native_output_is_c_by_224_in_unit_range():
    gen = TextToPseudoImage(text_dim=32, out_channels=3)
    out = gen(torch.randn(2, 32))
    assert gen.native_size == 224
    assert out.shape == (2, 3, 224, 224)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("size", [(32, 32), (64, 48)])
def test_resized_to_the_requested_size(size):
    out = TextToPseudoImage(text_dim=16)(torch.randn(3, 16), size)
    assert out.shape == (3, 1, *size)


def test_different_sentences_give_different_images_and_gradients_reach_the_projection():
    torch.manual_seed(0)
    gen = TextToPseudoImage(text_dim=16)
    out = gen(torch.randn(2, 16), (32, 32))
    assert not torch.allclose(out[0], out[1])
    out.sum().backward()
    assert gen.project.weight.grad.abs().sum() > 0
