import pytest
import torch

from langseg.blocks.bridger import Bridger, interactor

pytestmark = pytest.mark.usefixtures("one_thread")


def _text(b=2, t=6, c=16, lengths=(3, 6)):
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return torch.randn(b, t, c), mask


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (7, 7), (8, 5)])
def test_keeps_the_map_and_text_shapes_at_even_odd_and_sub_stride_sizes(size):
    bridger = Bridger(24, 16).eval()
    vis = torch.randn(2, 24, *size)
    text, _ = _text()
    out_vis, out_text = bridger(vis, text)
    assert out_vis.shape == vis.shape and out_text.shape == text.shape


def test_both_outputs_are_residual_updates_that_read_the_other_modality():
    torch.manual_seed(0)
    bridger = Bridger(24, 16).eval()
    vis, (text, _) = torch.randn(2, 24, 4, 4), _text()
    out_vis, out_text = bridger(vis, text)
    other_vis, other_text = bridger(vis, text.flip(0))
    assert not torch.allclose(out_vis, other_vis)  # the map reads the words
    assert not torch.allclose(out_text, bridger(vis.flip(0), text)[1])  # the words read the map
    assert not torch.allclose(out_vis, vis) and not torch.allclose(out_text, text)


def test_without_text_update_the_text_branch_is_not_built():
    full, vision_only = Bridger(24, 16), Bridger(24, 16, update_text=False)
    vis, (text, _) = torch.randn(2, 24, 4, 4), _text()
    assert vision_only(vis, text)[1] is None
    missing = sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in vision_only.parameters())
    assert missing == sum(p.numel() for p in [*full.text_interactor.parameters(), *full.text_out.parameters()])


def test_a_text_mask_hides_padded_words_and_without_it_they_count():
    torch.manual_seed(0)
    bridger = Bridger(24, 16).eval()
    vis, (text, mask) = torch.randn(2, 24, 4, 4), _text()
    garbage = text + 5 * torch.randn_like(text) * (~mask).unsqueeze(-1)
    masked, masked_garbage = bridger(vis, text, mask), bridger(vis, garbage, mask)
    torch.testing.assert_close(masked[0], masked_garbage[0])
    torch.testing.assert_close(masked[1][mask], masked_garbage[1][mask])
    assert not torch.allclose(bridger(vis, text)[0], bridger(vis, garbage)[0])


def test_interactor_is_post_norm_and_every_parameter_learns():
    layer = interactor(16, heads=8, ffn_dim=128).eval()
    out = layer(torch.randn(2, 9, 16), torch.randn(2, 5, 16))
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 9), atol=1e-5, rtol=0)  # last op is a LayerNorm
    bridger = Bridger(24, 16)
    vis, (text, _) = torch.randn(2, 24, 4, 4), _text()
    out_vis, out_text = bridger(vis, text)
    (out_vis.square().mean() + out_text.square().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bridger.parameters())


def test_linear_layers_start_small_with_zero_bias():
    bridger = Bridger(64, 256)
    for linear in (bridger.text_in, bridger.text_out, bridger.vision_interactor.linear1):
        assert torch.count_nonzero(linear.bias) == 0
        assert 0.01 < linear.weight.std().item() < 0.03
