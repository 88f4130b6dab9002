import pytest
import torch

from langseg.blocks.guide import GuideLayer, SubpixelHead, TextTokenProjection, UpBlock
from langseg.errors import ConfigError


def _text(b=2, t=8, c=16, lengths=(3, 8)):
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return torch.randn(b, t, c) * mask.unsqueeze(-1), mask


@pytest.mark.parametrize("size", [(4, 4), (8, 6)])
@pytest.mark.parametrize("tokens", [(8, 5), None])
def test_guide_layer_keeps_the_visual_shape(size, tokens):
    layer = GuideLayer(12, 16, tokens, self_heads=1, cross_heads=4)
    vis = torch.randn(2, 12, *size)
    assert layer(vis, *_text()).shape == vis.shape


@pytest.mark.parametrize("tokens", [(8, 5), None])
def test_padding_words_change_nothing(tokens):
    torch.manual_seed(0)
    layer = GuideLayer(12, 16, tokens).eval()
    vis = torch.randn(2, 12, 4, 4)
    text, mask = _text()
    garbage = text + 5 * torch.randn_like(text) * (~mask).unsqueeze(-1)
    torch.testing.assert_close(layer(vis, text, mask), layer(vis, garbage, mask))
    real = layer(vis, text, mask)
    changed = text.clone()
    changed[0, 0] += 1.0
    assert not torch.allclose(real, layer(vis, changed, mask))


def test_extra_padding_changes_nothing_without_token_projection():
    torch.manual_seed(0)
    layer = GuideLayer(12, 16, None).eval()
    vis = torch.randn(2, 12, 4, 4)
    text, mask = _text()
    longer = torch.cat([text, torch.randn(2, 4, 16)], 1)
    longer_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    torch.testing.assert_close(layer(vis, text, mask), layer(vis, longer, longer_mask))


def test_text_projection_maps_tokens_and_width_and_rejects_other_lengths():
    proj = TextTokenProjection(16, 12, in_tokens=8, out_tokens=5)
    assert proj(*_text()).shape == (2, 5, 12)
    with pytest.raises(ValueError, match="max_length"):
        proj(*_text(t=6, lengths=(3, 6)))


def test_guide_residual_scale_receives_gradient():
    layer = GuideLayer(12, 16, (8, 5))
    layer(torch.randn(2, 12, 4, 4), *_text()).sum().backward()
    assert layer.scale.grad is not None and layer.scale.grad.abs() > 0


@pytest.mark.parametrize("size", [4, 7])
def test_up_block_doubles_resolution_and_sets_channels(size):
    block = UpBlock(32, 16)
    out = block(torch.randn(2, 32, size, size), torch.randn(2, 16, 2 * size, 2 * size))
    assert out.shape == (2, 16, 2 * size, 2 * size)


def test_single_conv_up_block_with_biases_and_relu():
    block = UpBlock(32, 16, num_convs=1, bias=True, act=torch.nn.ReLU)
    out = block(torch.randn(2, 32, 4, 4), torch.randn(2, 16, 8, 8))
    assert out.shape == (2, 16, 8, 8) and out.min() >= 0
    # transposed conv (with bias), one 3x3 conv over the concatenation (with bias), BatchNorm
    expected = 32 * 16 * 4 + 16 + (2 * 16) * 16 * 9 + 16 + 2 * 16
    assert sum(p.numel() for p in block.parameters()) == expected


@pytest.mark.parametrize(("size", "scale"), [(8, 4), (5, 2)])
def test_subpixel_head_upsamples_to_one_channel(size, scale):
    head = SubpixelHead(16, mid_channels=6, scale=scale)
    assert head(torch.randn(2, 16, size, size)).shape == (2, 1, scale * size, scale * size)


def test_monai_style_head_zero_pads_and_starts_as_nearest_neighbour_upsampling():
    torch.manual_seed(0)
    monai, ours = SubpixelHead(8, mid_channels=3, scale=4, style="monai"), SubpixelHead(8, mid_channels=3, scale=4)
    with torch.no_grad():
        monai.shuffle[0].bias.zero_()  # ICNR sets the weights only (as MONAI's icnr_init)
        shuffled = monai.shuffle(torch.randn(1, 8, 5, 5))  # so each 4x4 block of the shuffle is constant
    blocks = shuffled.unfold(2, 4, 4).unfold(3, 4, 4)  # (1, 3, 5, 5, 4, 4)
    assert torch.allclose(blocks, blocks[..., :1, :1].expand_as(blocks))
    ones = torch.ones(1, 3, 8, 8)
    assert torch.allclose(ours.blur(ones), ones) and ours.blur(ones).shape == ones.shape
    blurred = monai.blur(ones)  # zeros enter the first 3 rows and columns
    assert blurred[0, 0, 0, 0] == 1 / 16 and torch.allclose(blurred[..., 3:, 3:], ones[..., 3:, 3:])
    with pytest.raises(ConfigError, match="subpixel style"):
        SubpixelHead(8, style="pytorch")


def test_unmasked_projection_reads_the_padded_words_as_the_official_code():
    text, mask = _text()
    masked, unmasked = TextTokenProjection(16, 12, 8, 4), TextTokenProjection(16, 12, 8, 4, mask_padding=False)
    unmasked.load_state_dict(masked.state_dict())
    changed = text.clone()
    changed[0, 3:] += 1.0  # only the padded words of the first text
    assert torch.allclose(masked(text, mask), masked(changed, mask))
    assert torch.allclose(unmasked(text, mask)[1], unmasked(changed, mask)[1])
    assert not torch.allclose(unmasked(text, mask)[0], unmasked(changed, mask)[0])


@pytest.mark.parametrize("tokens", [(8, 5), None])
def test_text_norm_brings_the_words_to_the_scale_of_the_position_code(tokens):
    """Words of a sentence encoder's scale (about 0.5) come out of the plain projection several times smaller than the
    sine code added to them as keys; with ``text_norm`` their content outweighs it."""
    from langseg.blocks.layers import sine_position_encoding_1d

    torch.manual_seed(0)
    text, mask = _text(t=8, c=64, lengths=(8, 8))
    position = sine_position_encoding_1d(8, 32, text.device, text.dtype).std()
    plain, normed = GuideLayer(32, 64, tokens), GuideLayer(32, 64, tokens, text_norm=True)
    assert plain.project_text(0.5 * text, mask)[0].std() < 0.5 * position
    assert normed.project_text(0.5 * text, mask)[0].std() > position
