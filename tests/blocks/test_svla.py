import pytest
import torch

from langseg.blocks.svla import LanguageGuidedVisionEncoder, ScaleAwareVLAttention, SVLAEncoderBlock

DIMS, DEPTHS = (8, 16, 24, 32), (1, 1, 2, 1)


def _words(b=2, t=5, c=12, pad=0):
    words = torch.randn(b, t + pad, c)
    mask = torch.ones(b, t + pad, dtype=torch.bool)
    mask[:, t:] = False
    return words, mask


@pytest.mark.parametrize("size", [32, 64])
def test_svla_and_block_keep_the_input_shape(size):
    torch.manual_seed(0)
    words, mask = _words()
    x = torch.randn(2, 8, size // 4, size // 4)
    assert ScaleAwareVLAttention(8, text_dim=12)(x, words, mask).shape == x.shape
    assert SVLAEncoderBlock(8, text_dim=12)(x, words, mask).shape == x.shape


@pytest.mark.parametrize("size", [32, 64])
def test_encoder_gives_four_stages_at_quarter_to_thirtysecond_resolution(size):
    enc = LanguageGuidedVisionEncoder(1, 12, DIMS, DEPTHS, (2.0,) * 4)
    words, mask = _words()
    feats = enc(torch.randn(2, 1, size, size), words, mask)
    assert [f.shape for f in feats] == [(2, c, size // s, size // s) for c, s in zip(DIMS, (4, 8, 16, 32))]


@pytest.mark.parametrize("dims", [DIMS[:3], DIMS])
def test_output_stride_is_the_stride_of_the_deepest_map(dims):
    enc = LanguageGuidedVisionEncoder(1, 0, dims, (1,) * len(dims), (2.0,) * len(dims))
    deepest = enc(torch.randn(1, 1, 64, 64))[-1]
    assert enc.output_stride == 64 // deepest.shape[-1]
    assert enc.output_stride == {3: 16, 4: 32}[len(dims)]


def test_default_encoder_follows_table_one():
    enc = LanguageGuidedVisionEncoder(3, text_dim=0)
    assert [len(stage) for stage in enc.stages] == [3, 3, 5, 2]
    assert [stage[0].norm1.num_features for stage in enc.stages] == [64, 128, 320, 512]
    assert [down[0].stride for down in enc.downs] == [(2, 2)] * 3
    assert all(isinstance(down[1], torch.nn.BatchNorm2d) for down in enc.downs)
    units = enc.stages[0][0].attn.units
    assert [u[0].kernel_size for u in units] == [(1, 7), (1, 11), (1, 21)]
    assert all(u[0].groups == 64 for u in units)


def test_padding_words_change_nothing():
    torch.manual_seed(0)
    enc = LanguageGuidedVisionEncoder(1, 12, DIMS, DEPTHS, (2.0,) * 4).eval()
    words, mask = _words(pad=0)
    padded, padded_mask = _words(pad=4)
    padded[:, :5] = words
    padded[:, 5:] = 100.0 * torch.randn(2, 4, 12)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a, b = enc(x, words, mask), enc(x, padded, padded_mask)
    for fa, fb in zip(a, b):
        torch.testing.assert_close(fa, fb)


def test_real_words_change_the_output():
    torch.manual_seed(0)
    attn = ScaleAwareVLAttention(8, text_dim=12).eval()
    x = torch.randn(2, 8, 16, 16)
    words, mask = _words()
    other = words.clone()
    other[:, 1] += 3.0
    assert not torch.allclose(attn(x, words, mask), attn(x, other, mask))


def test_gradients_reach_the_text_projections():
    attn = ScaleAwareVLAttention(8, text_dim=12)
    words, mask = _words()
    attn(torch.randn(2, 8, 8, 8), words, mask).square().mean().backward()
    for proj in (attn.w_l1, attn.w_l2):
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_language_branch_runs_in_fp32_under_bf16_autocast():
    attn = ScaleAwareVLAttention(8, text_dim=12)
    words, mask = _words()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(torch.randn(2, 8, 8, 8), words, mask)
    assert torch.isfinite(out.float()).all()


def test_image_only_svla_has_no_language_parameters_and_needs_no_words():
    attn = ScaleAwareVLAttention(8, text_dim=0)
    assert not any(name.startswith("w_") for name, _ in attn.named_parameters())
    x = torch.randn(2, 8, 8, 8)
    assert attn(x).shape == x.shape
    with pytest.raises(ValueError, match="language branch"):
        ScaleAwareVLAttention(8, text_dim=12)(x)
