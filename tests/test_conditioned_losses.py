import pytest
import torch
import torch.nn.functional as F

from langseg.losses import conditioned_contrastive_loss, conditioned_similarity, weighted_reconstruction_loss


def _pairs(b=4, n=9, length=5, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, n, c, generator=g)
    e = v[:, :length] + 0.05 * torch.randn(b, length, c, generator=g)  # every word matches a patch of its image
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 3:] = False
    w_v = torch.full((b, n), 1.0 / n)
    w_e = mask.float() / mask.sum(1, keepdim=True)
    return v, e, w_v, w_e, mask


def test_similarity_ignores_padding_words_and_is_a_cosine_average():
    v, e, w_v, w_e, mask = _pairs()
    s = conditioned_similarity(v, e, w_v, w_e, mask)
    junk = e.clone()
    junk[1, 3:] = 50 * v[0, :2]  # padding words that would match image 0 perfectly
    assert torch.allclose(s, conditioned_similarity(v, junk, w_v, w_e, mask), atol=1e-6)
    assert s.shape == (4, 4) and s.abs().max() <= 1 + 1e-5
    assert (s.diagonal() > s.masked_fill(torch.eye(4, dtype=torch.bool), -2).amax(1)).all()


def test_contrastive_loss_is_lower_for_matched_pairs_and_fp32():
    v, e, w_v, w_e, mask = _pairs()
    matched = conditioned_contrastive_loss(v, e, w_v, w_e, mask)
    perm = torch.tensor([1, 2, 3, 0])
    shuffled = conditioned_contrastive_loss(v, e[perm], w_v, w_e[perm], mask[perm])
    assert matched.dtype == torch.float32 and matched < shuffled
    half = conditioned_contrastive_loss(v.half(), e.half(), w_v, w_e, mask)
    assert half.dtype == torch.float32


def test_weighted_reconstruction_loss_uniform_weights_give_mse_and_zero_weights_do_not_count():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    uniform = torch.full((2, 6), 1 / 6)
    assert torch.allclose(weighted_reconstruction_loss(pred, target, uniform), F.mse_loss(pred, target))
    w = torch.tensor([[0.5, 0.5, 0, 0, 0, 0]] * 2)
    other = pred.clone()
    other[:, 2:] += 10
    assert torch.allclose(weighted_reconstruction_loss(pred, target, w), weighted_reconstruction_loss(other, target, w))


def test_padding_words_score_zero_in_a_patch_max_only_with_padding_zero():
    v, e, w_v, w_e, mask = _pairs(b=2, n=5, length=4)
    e[1, :3] = -v[1, 0]  # text 1 (words 0-2 real, 3 padding) faces away from image 1's patch 0: best cosine -1
    exclude = conditioned_similarity(v, e, w_v, w_e, mask)
    zero = conditioned_similarity(v, e, w_v, w_e, mask, padding="zero")
    v_n, e_n = F.normalize(v, dim=-1), F.normalize(e, dim=-1)
    best_real = torch.einsum("nc,lc->nl", v_n[1], e_n[1, :3]).amax(1)  # (N,) image 1's patches vs text 1's words
    lifted = 0.5 * (w_v[1] * (best_real.clamp_min(0) - best_real)).sum()  # a negative best becomes 0 under "zero"
    assert best_real[0] < 0 and torch.allclose(zero[1, 1] - exclude[1, 1], lifted, atol=1e-6) and lifted > 0
    assert torch.allclose(zero[:, 0], exclude[:, 0])  # text 0 has no padding word
    assert conditioned_contrastive_loss(v, e, w_v, w_e, mask, padding="zero") != conditioned_contrastive_loss(
        v, e, w_v, w_e, mask)
    with pytest.raises(ValueError, match="'ignore'"):
        conditioned_similarity(v, e, w_v, w_e, mask, padding="ignore")
