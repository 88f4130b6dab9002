import math

import pytest
import torch

from langseg.blocks.conditioned import (ConditionedAttention, ConditionedInteraction, ConditionedReconstructor,
                                        OfficialConditionedInteraction, OfficialConditionedReconstructor,
                                        sample_weighted_mask)
from langseg.blocks.layers import sine_position_encoding_2d

DIM, TEXT_DIM = 16, 12


def _words(lengths, width=TEXT_DIM, pad_to=None):
    total = pad_to or max(lengths)
    mask = torch.arange(total)[None] < torch.tensor(lengths)[:, None]
    return torch.randn(len(lengths), total, width) * mask[..., None], mask


def test_attention_ignores_padding_keys_and_a_zero_condition_removes_a_key():
    torch.manual_seed(0)
    attn = ConditionedAttention(DIM, num_heads=4)
    q, ctx = torch.randn(2, 5, DIM), torch.randn(2, 6, DIM)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out = attn(q, ctx, mask)
    junk = ctx.clone()
    junk[1, 4:] = 100.0
    assert torch.allclose(out, attn(q, junk, mask), atol=1e-5)
    cond = torch.full((2, 6), 1.0 / 6)
    assert torch.allclose(attn(q, ctx, None, cond), attn(q, ctx), atol=1e-5)  # uniform condition = none
    cond = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0, 0.0]] * 2)
    kept = attn(q, ctx[:, 1:3], None, cond[:, 1:3])
    assert torch.allclose(attn(q, ctx, None, cond), kept, atol=1e-5)


@pytest.mark.parametrize("size", [2, 4])
def test_interaction_shapes_and_condition_weights(size):
    torch.manual_seed(0)
    ci = ConditionedInteraction(DIM, TEXT_DIM, num_heads=4)
    words, mask = _words([5, 3])
    out = ci(torch.randn(2, DIM, size, size), words, mask)
    assert out.vision_out.shape == (2, DIM, size, size)
    assert out.v.shape == (2, size * size, DIM) and out.e.shape == (2, 5, DIM)
    assert torch.allclose(out.w_poi.sum(1), torch.ones(2)) and torch.allclose(out.w_woi.sum(1), torch.ones(2))
    assert out.w_woi.dtype == torch.float32 and out.w_poi.dtype == torch.float32
    assert (out.w_woi[~mask] == 0).all() and (out.w_woi[mask] > 0).all()  # padding words get zero weight


def test_padding_words_change_nothing_in_the_interaction():
    torch.manual_seed(0)
    ci = ConditionedInteraction(DIM, TEXT_DIM, num_heads=4).eval()
    vision = torch.randn(2, DIM, 4, 4)
    words, mask = _words([5, 3])
    padded, padded_mask = torch.cat([words, torch.randn(2, 4, TEXT_DIM)], 1), torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], 1)
    a, b = ci(vision, words, mask), ci(vision, padded, padded_mask)
    assert torch.allclose(a.vision_out, b.vision_out, atol=1e-5)
    assert torch.allclose(a.w_poi, b.w_poi, atol=1e-6)
    assert torch.allclose(a.w_woi, b.w_woi[:, :5], atol=1e-6) and (b.w_woi[:, 5:] == 0).all()


def test_interaction_without_conditions_runs_only_the_text_to_vision_half():
    torch.manual_seed(0)
    ci = ConditionedInteraction(DIM, TEXT_DIM, num_heads=4)
    calls = []
    for m in (ci.vision_to_text, ci.poi_head, ci.woi_head):
        m.register_forward_hook(lambda *_: calls.append(1))
    words, mask = _words([5, 3])
    vision = torch.randn(2, DIM, 4, 4)
    out = ci(vision, words, mask, conditions=False)
    assert not calls and out.w_poi is None and out.w_woi is None
    assert torch.allclose(out.vision_out, ci.text_to_vision(vision, words, mask), atol=1e-6)
    ci(vision, words, mask)
    assert len(calls) == 3


def test_weighted_mask_respects_the_ratio_validity_and_zero_weights():
    torch.manual_seed(0)
    w = torch.rand(3, 16)
    assert (sample_weighted_mask(w, 0.5).sum(1) == 8).all()
    valid = torch.arange(10)[None] < torch.tensor([[10], [7], [2]])
    picked = sample_weighted_mask(torch.rand(3, 10), 0.3, valid)
    assert picked.sum(1).tolist() == [3, 2, 1]  # floor(0.3 * n), at least one
    assert not (picked & ~valid).any()
    w = torch.tensor([[0.0, 0.5, 0.5, 0.0]])
    for _ in range(20):
        assert not sample_weighted_mask(w, 0.5)[0, [0, 3]].any()


def test_weighted_mask_draws_heavy_positions_more_often():
    torch.manual_seed(0)
    w = torch.tensor([[0.7, 0.1, 0.1, 0.05, 0.05]]).expand(2000, -1)
    freq = sample_weighted_mask(w, 0.2).float().mean(0)  # one pick per row: the frequency is the weight
    assert torch.allclose(freq, w[0], atol=0.04)


def test_reconstructor_reads_only_the_keys_its_condition_keeps():
    torch.manual_seed(0)
    rec = ConditionedReconstructor(DIM, depth=3, num_heads=4)
    masked, ctx = torch.randn(2, 6, DIM), torch.randn(2, 5, DIM)
    cond = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]] * 2)
    other = ctx.clone()
    other[:, [0, 2, 3, 4]] = torch.randn(2, 4, DIM)
    out = rec(masked, ctx, cond)
    assert out.shape == (2, 6, DIM)
    assert torch.allclose(out, rec(masked, other, cond), atol=1e-5)
    assert len(rec.layers) == 3


def test_position_code_distinguishes_every_patch():
    code = sine_position_encoding_2d(4, 5, 16)
    assert code.shape == (20, 16)
    dist = torch.cdist(code, code).masked_fill(torch.eye(20, dtype=torch.bool), math.inf)
    assert dist.min() > 0.1


def _bare_attention(query, key_value, mha, heads):
    """softmax(Q K^T / sqrt(d)) V per head with ``mha``'s packed projections, then its output projection."""
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    b, n, c = query.shape
    split = lambda x: x.reshape(b, -1, heads, c // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(query @ w_q.T + b_q), split(key_value @ w_k.T + b_k), split(key_value @ w_v.T + b_v)
    attn = (q @ k.transpose(-1, -2) / math.sqrt(c // heads)).softmax(-1)
    return (attn @ v).transpose(1, 2).reshape(b, n, c) @ mha.out_proj.weight.T + mha.out_proj.bias


@pytest.mark.parametrize("grid", [4, 3])  # 3: the learned 4x4 table resized
def test_official_interaction_is_the_official_equations_recomputed(grid):
    torch.manual_seed(0)
    ci = OfficialConditionedInteraction(DIM, TEXT_DIM, num_heads=4, grid=4).eval()
    torch.nn.init.normal_(ci.fusion.position)
    vision = torch.randn(2, DIM, grid, grid)
    words, mask = _words([5, 3])
    out = ci(vision, words, mask, conditions=True)
    fusion = ci.fusion
    e = torch.nn.functional.conv1d(words.transpose(1, 2), fusion.text_proj.weight, fusion.text_proj.bias, padding=1)
    e = e.transpose(1, 2)  # E: padding words are projected too, as in the official code
    v = torch.einsum("oc,bchw->bhwo", fusion.patch_embed.weight[:, :, 0, 0], vision) + fusion.patch_embed.bias
    table = fusion.position.reshape(1, 4, 4, DIM).permute(0, 3, 1, 2)
    if grid != 4:
        table = torch.nn.functional.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False)
    v = v.reshape(2, grid * grid, DIM) + table.flatten(2).transpose(1, 2)
    e_prime = _bare_attention(e, v, fusion.text_attn, 4)  # E' = MHA(query E, key/value V)
    v_prime = _bare_attention(v, e_prime, fusion.vision_attn, 4)  # V' = MHA(query V, key/value E')
    assert torch.allclose(out.vision_out, v_prime.transpose(1, 2).reshape(2, DIM, grid, grid), atol=1e-5)
    assert torch.allclose(out.e, e, atol=1e-5)
    assert torch.equal(out.v, vision.flatten(2).transpose(1, 2)) and out.pos is None
    e_out = ci.text_out(e_prime.transpose(1, 2)).transpose(1, 2)  # E'' = ReLU(BN(Conv1d(E')))
    woi = ci.woi_head(e_out).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)
    assert torch.allclose(out.w_woi, woi, atol=1e-6) and (out.w_woi[~mask] == 0).all()
    assert torch.allclose(out.w_poi, ci.poi_head(v_prime).squeeze(-1).softmax(-1), atol=1e-6)


def test_official_interaction_lets_padding_words_in_and_gradients_reach_every_weight():
    torch.manual_seed(0)
    ci = OfficialConditionedInteraction(DIM, TEXT_DIM, num_heads=4, grid=3).eval()
    vision = torch.randn(2, DIM, 3, 3)
    words, mask = _words([5, 3])
    junk = words.clone()
    junk[1, 3:] = 5.0
    assert not torch.allclose(ci(vision, words, mask).vision_out, ci(vision, junk, mask).vision_out)
    out = ci.train()(vision, words, mask)
    (out.vision_out.sum() + (out.w_poi * torch.randn_like(out.w_poi)).sum()
     + (out.w_woi * torch.randn_like(out.w_woi)).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ci.parameters())


@pytest.mark.parametrize("official", [False, True])
def test_head_dropout_drops_what_the_weight_heads_read_in_training_only(official):
    torch.manual_seed(0)
    build = (lambda p: OfficialConditionedInteraction(DIM, TEXT_DIM, 4, 3, head_dropout=p)) if official else (
        lambda p: ConditionedInteraction(DIM, TEXT_DIM, 4, head_dropout=p))
    plain, dropped = build(0.0), build(0.5)
    dropped.load_state_dict(plain.state_dict())
    vision, (words, mask) = torch.randn(2, DIM, 3, 3), _words([5, 3])

    def run(module, mode):
        torch.manual_seed(1)  # the same draws for the official fusion's own dropout
        return getattr(module, mode)()(vision, words, mask)

    for mode in ("eval", "train"):
        a, b = run(plain, mode), run(dropped, mode)
        assert torch.equal(a.vision_out, b.vision_out)  # the decoder's input is never dropped
        same = torch.allclose(a.w_poi, b.w_poi) and torch.allclose(a.w_woi, b.w_woi)
        assert same == (mode == "eval"), mode
        assert (b.w_woi[~mask] == 0).all() and torch.allclose(b.w_poi.sum(1), torch.ones(2))


def _official_attention(query, key, mha, heads, mask=None, weight=None):
    """The official ``MultiheadAttention`` (nets/transformer/mutihead_attention.py) on time-first tensors, written
    out: scaled q, ``softmax(q k^T + mask)``, times ``weight + 1e-10`` and renormalised, then the output projection."""
    (t, b, c), d = query.shape, query.shape[-1] // heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    q = (query @ w_q.T + b_q) * d ** -0.5
    k, v = key @ w_k.T + b_k, key @ w_v.T + b_v
    q, k, v = (x.reshape(x.shape[0], b * heads, d).transpose(0, 1) for x in (q, k, v))
    logits = torch.bmm(q, k.transpose(1, 2))
    if mask is not None:
        logits = logits + mask
    attn = logits.softmax(-1)
    if weight is not None:
        attn = attn * (weight[:, None, None, :].expand(-1, heads, t, -1).reshape(attn.shape) + 1e-10)
        attn = attn / attn.sum(-1, keepdim=True)
    out = torch.bmm(attn, v).transpose(0, 1).reshape(t, b, c)
    return out @ mha.out_proj.weight.T + mha.out_proj.bias


def _official_decoder(layers, x, weight, context=None):
    """The official ``TransformerDecoder`` (eval mode): post-norm layers of causal self-attention (weighted when
    there is no context), cross-attention to the context (weighted), ReLU FFN."""
    x = x.transpose(0, 1)
    ctx = None if context is None else context.transpose(0, 1)
    causal = torch.triu(torch.full((x.shape[0], x.shape[0]), float("-inf")), 1)
    for layer in layers:
        self_weight = weight if context is None else None
        x = layer.self_attn_norm(x + _official_attention(x, x, layer.self_attn, 4, causal, self_weight))
        if ctx is not None:
            x = layer.cross_attn_norm(x + _official_attention(x, ctx, layer.cross_attn, 4, None, weight))
        x = layer.final_norm(x + layer.fc2(torch.relu(layer.fc1(x))))
    return x.transpose(0, 1)


def test_official_reconstructor_is_the_official_dual_transformer_recomputed():
    torch.manual_seed(0)
    rec = OfficialConditionedReconstructor(DIM, depth=2, num_heads=4, mlp_ratio=2.0).eval()
    for p in rec.parameters():  # the official init leaves the biases at 0: randomise them so they are checked too
        torch.nn.init.normal_(p, std=0.3)
    masked, ctx = torch.randn(2, 6, DIM), torch.randn(2, 5, DIM)
    weight = torch.rand(2, 5).softmax(-1)
    out = rec(masked, ctx, weight)
    encoded = _official_decoder(rec.context_layers, ctx, weight)  # decoder1: the context, self-attention only
    expected = _official_decoder(rec.query_layers, masked, weight, encoded)  # decoder2: masked tokens query it
    assert out.shape == (2, 6, DIM) and torch.allclose(out, expected, atol=1e-5)
    assert all(not hasattr(layer, "cross_attn") for layer in rec.context_layers)
    assert rec.query_layers[0].fc1.out_features == 2 * DIM and isinstance(rec.head, torch.nn.Identity)
    later = masked.clone()
    later[:, -1] = torch.randn(2, DIM)  # causal: a later masked token changes nothing before it
    changed = rec(later, ctx, weight)
    assert torch.allclose(changed[:, :-1], out[:, :-1], atol=1e-6) and not torch.allclose(changed[:, -1], out[:, -1])
    padded = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    junk = ctx.clone()
    junk[1, 3:] = 9.0  # keys the context mask removes
    assert torch.allclose(rec(masked, ctx, weight, padded), rec(masked, junk, weight, padded), atol=1e-5)


def test_official_reconstructor_trains_under_autocast_with_dropout_and_maps_to_another_width():
    torch.manual_seed(0)
    rec = OfficialConditionedReconstructor(DIM, depth=1, num_heads=4, out_dim=TEXT_DIM).train()
    masked, ctx, weight = torch.randn(2, 6, DIM), torch.randn(2, 5, DIM), torch.rand(2, 5).softmax(-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rec(masked, ctx, weight)
    assert out.shape == (2, 6, TEXT_DIM)
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rec.parameters())
    assert not torch.allclose(rec(masked, ctx, weight), rec(masked, ctx, weight))  # dropout 0.1 in training


def test_weighted_mask_tops_up_rows_short_of_positive_weights_only_with_top_up():
    torch.manual_seed(0)
    w = torch.zeros(4000, 12)
    w[:, [1, 4]] = 0.5  # 2 positive weights of the 10 valid positions; floor(0.5 * 10) = 5 to mask
    valid = torch.ones(4000, 12, dtype=torch.bool)
    valid[:, 10:] = False
    fewer = sample_weighted_mask(w, 0.5, valid)
    topped = sample_weighted_mask(w, 0.5, valid, top_up=True)
    assert (fewer.sum(1) == 2).all() and fewer[:, [1, 4]].all()
    assert (topped.sum(1) == 5).all() and topped[:, [1, 4]].all() and not topped[:, 10:].any()
    spare = [0, 2, 3, 5, 6, 7, 8, 9]  # the other 3 picks are uniform over the valid zero-weight positions
    assert torch.allclose(topped[:, spare].float().mean(0), torch.full((8,), 3 / 8), atol=0.04)
    rich = torch.rand(3, 10) + 0.1  # every position positive: the top-up changes nothing
    torch.manual_seed(1)
    plain = sample_weighted_mask(rich, 0.3)
    torch.manual_seed(1)
    assert torch.equal(sample_weighted_mask(rich, 0.3, top_up=True), plain)
