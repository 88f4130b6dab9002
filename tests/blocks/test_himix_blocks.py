import pytest
import torch

from langseg.blocks.himix import FrequencyRefinement, HiMixLayer, LayerGroupMixer
from langseg.errors import ConfigError


def _hidden(n_states, b=2, t=6, c=8):
    return [torch.randn(b, t, c, requires_grad=True) for _ in range(n_states)]


@pytest.mark.parametrize("num_layers", [12, 6, 3])
def test_mixer_gives_one_text_per_stage_and_every_chosen_layer_gets_gradient(num_layers):
    hidden = _hidden(num_layers + 1)  # embeddings first
    mixer = LayerGroupMixer(range(1, num_layers + 1), groups=3)
    out = mixer(hidden)
    assert len(out) == 3 and all(o.shape == (2, 6, 8) for o in out)
    sum(o.sum() for o in out).backward()
    assert hidden[0].grad is None
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in hidden[1:])
    assert mixer.logits.grad is not None


def test_mixer_sends_the_deepest_group_to_the_first_stage():
    hidden = _hidden(7)
    out = LayerGroupMixer(range(1, 7), groups=3)(hidden)
    out[0].sum().backward()
    assert [h.grad is not None and bool(h.grad.abs().sum() > 0) for h in hidden] == [False] * 5 + [True] * 2


def test_mixer_with_equal_weights_averages_its_group():
    hidden = _hidden(7)
    out = LayerGroupMixer(range(1, 7), groups=3)(hidden)
    torch.testing.assert_close(out[2], (hidden[1] + hidden[2]) / 2)


@pytest.mark.parametrize("layers", [range(1, 5), range(1, 3), []])
def test_mixer_rejects_a_layer_count_it_cannot_split(layers):
    with pytest.raises(ConfigError, match="cannot be split"):
        LayerGroupMixer(layers, groups=3)


def test_mixer_rejects_layers_the_encoder_does_not_have():
    with pytest.raises(ConfigError, match="hidden states"):
        LayerGroupMixer(range(1, 7), groups=3)(_hidden(5))


@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
@pytest.mark.parametrize("centred", [True, False])
def test_frequency_refinement_keeps_shape_and_is_differentiable_in_sigma(size, centred):
    refine = FrequencyRefinement(sigma=2.0, centred=centred)
    x = torch.randn(2, 3, *size)
    out = refine(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.pow(2).sum().backward()
    assert refine.sigma.grad is not None and torch.isfinite(refine.sigma.grad) and refine.sigma.grad.abs() > 0


def test_centred_refinement_is_a_high_pass():
    refine = FrequencyRefinement(sigma=1.0)
    flat = torch.full((1, 2, 8, 8), 3.0)
    torch.testing.assert_close(refine(flat), flat)  # no high frequencies to add
    edge = torch.zeros(1, 1, 8, 8)
    edge[..., 4:] = 1.0
    assert not torch.allclose(refine(edge), edge)


@pytest.mark.parametrize("size", [(4, 4), (6, 5)])
def test_himix_layer_keeps_shape(size):
    layer = HiMixLayer(16, 8, text_tokens=(6, 4), heads=8)
    vis = torch.randn(2, 16, *size)
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    assert layer(vis, torch.randn(2, 6, 8), mask).shape == vis.shape


def test_himix_layer_ignores_padding_words():
    torch.manual_seed(0)
    layer = HiMixLayer(16, 8, text_tokens=(6, 4), heads=8).eval()
    vis, text = torch.randn(2, 16, 4, 4), torch.randn(2, 6, 8)
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    garbage = text + 3 * torch.randn_like(text) * (~mask).unsqueeze(-1)
    torch.testing.assert_close(layer(vis, text, mask), layer(vis, garbage, mask))


def test_official_ffn_is_the_official_codes_linear_relu_dropout_linear():
    x = torch.randn(2, 5, 16)
    official = HiMixLayer(16, 8, (4, 3), heads=2, ffn="official").eval()
    lin1, lin2 = official.ffn[0], official.ffn[3]
    assert torch.allclose(official.ffn(x), lin2(torch.relu(lin1(x))))  # no norm, one dropout (off in eval)
    prenorm = HiMixLayer(16, 8, (4, 3), heads=2).eval()
    assert isinstance(prenorm.ffn[0], torch.nn.LayerNorm) and len(prenorm.ffn) == len(official.ffn) + 2
    with pytest.raises(ConfigError, match="ffn must be 'prenorm' or 'official'"):
        HiMixLayer(16, 8, (4, 3), heads=2, ffn="postnorm")
