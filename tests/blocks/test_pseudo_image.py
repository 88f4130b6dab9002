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


def test_fan_in_init_lets_the_text_change_the_pseudo_image_at_initialisation():
    """PyTorch's default init shrinks the text's variation through the transposed convolutions (their fan-in is
    taken from the output channels); ``init="fan_in"`` keeps it, so different texts give visibly different images."""
    torch.manual_seed(0)
    sentences = 0.3 * torch.randn(8, 64)  # a sentence encoder's scale
    spread = {}
    for init in ("torch", "fan_in"):
        torch.manual_seed(0)
        spread[init] = TextToPseudoImage(64, init=init)(sentences).std(0).mean()  # variation across the texts
    assert spread["fan_in"] > 0.02
    assert spread["fan_in"] > 20 * spread["torch"]


def test_unknown_init_is_refused():
    from langseg.errors import ConfigError

    with pytest.raises(ConfigError, match="fan_in"):
        TextToPseudoImage(16, init="xavier")
