import logging

import pytest
import torch

from langseg.blocks.text_encoder import TextEncoder
from langseg.errors import ConfigError
from tests.hf_folders import write_biomedbert_folder, write_clip_folder, write_cxr_bert_folder

CACHE_RTOL = 2**-10  # the cache stores fp16 by default: relative rounding <= 2**-11
TEXTS = ["One infected area in the upper left lung.", "All lesions: bilateral pulmonary infection, three infected areas."]


@pytest.fixture(scope="module")
def tiny() -> TextEncoder:
    return TextEncoder("tiny", output_hidden_states=True)


def test_outputs_shapes_mask_and_hidden_states(tiny):
    feats = tiny(TEXTS)
    b, t, c = feats.tokens.shape
    assert (b, c) == (2, tiny.hidden_size) and feats.mask.shape == (2, t) and feats.sentence.shape == (2, c)
    assert feats.mask[1].all() and not feats.mask[0].all()  # the shorter text is padded
    assert len(feats.hidden_states) == tiny.num_layers + 1
    assert torch.all(feats.tokens[0][~feats.mask[0]] == 0)


def test_padding_does_not_change_a_texts_features(tiny):
    alone = tiny.__class__("tiny")._encode(TEXTS[:1])
    batched = tiny.__class__("tiny")._encode(TEXTS)
    n = int(alone.mask.sum())
    assert torch.allclose(alone.tokens[0, :n], batched.tokens[0, :n], atol=1e-5)
    assert torch.allclose(alone.sentence[0], batched.sentence[0], atol=1e-5)


def test_frozen_encoder_encodes_each_text_once(monkeypatch):
    enc = TextEncoder("tiny")
    calls = []
    original = enc.model.forward
    monkeypatch.setattr(enc.model, "forward", lambda *a, **k: calls.append(k["input_ids"].shape[0]) or original(*a, **k))
    first = enc(TEXTS)
    second = enc([TEXTS[1], TEXTS[0], TEXTS[1]])
    assert calls == [2]
    assert torch.allclose(second.tokens[1, : int(first.mask[0].sum())], first.tokens[0, : int(first.mask[0].sum())])
    assert not any(p.requires_grad for p in enc.parameters())


def test_trainable_encoder_gets_gradients_and_is_not_cached():
    enc = TextEncoder("tiny", freeze=False)
    enc(TEXTS).sentence.sum().backward()
    assert enc.model.embeddings.word_embeddings.weight.grad is not None
    assert not enc._cache


def test_fixed_padding_and_truncation_warning(caplog):
    enc = TextEncoder("tiny", max_length=8, padding="max_length")
    with caplog.at_level(logging.WARNING):
        feats = enc(TEXTS)
    assert feats.tokens.shape[1] == 8 and feats.mask.shape == (2, 8)
    assert "truncated to max_length=8" in caplog.text


def test_frozen_encoder_encodes_without_dropout_in_train_mode():
    enc = TextEncoder("tiny", cache=False)
    enc.model.config.hidden_dropout_prob = 0.9
    for module in enc.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.9
    enc.train()
    first, second = enc(["left lung"]), enc(["left lung"])
    assert torch.equal(first.tokens, second.tokens)  # dropout off while encoding
    assert enc.model.training  # the mode flags stay those of the model the encoder sits in


def test_missing_path_says_what_to_pass(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist: pass text_encoder='minilm'"):
        TextEncoder(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no config.json"):
        TextEncoder(str(tmp_path))


def test_packaged_default_is_minilm_384d():
    enc = TextEncoder("minilm")
    feats = enc(["left lung", "right lung", "the liver"])
    assert feats.tokens.shape[-1] == enc.hidden_size == 384 and enc.num_layers == 6
    sim = torch.nn.functional.cosine_similarity
    assert sim(feats.sentence[0], feats.sentence[1], dim=0) > sim(feats.sentence[0], feats.sentence[2], dim=0)


def _same_hidden_states(enc: TextEncoder, reference: torch.nn.Module, texts: list[str]) -> None:
    """Every hidden state of ``enc`` equals the reference model's on the same tokens (real tokens only)."""
    batch = enc.tokenizer(texts, padding=True, truncation=True, max_length=enc.max_length, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**batch, output_hidden_states=True).hidden_states
    feats = enc(texts)
    mask = batch["attention_mask"].bool()
    assert len(feats.hidden_states) == len(expected)
    for got, want in zip(feats.hidden_states, expected):
        assert torch.allclose(got[mask], want[mask], rtol=CACHE_RTOL, atol=1e-5)


def test_cxr_bert_folder_loads_as_plain_bert_with_the_masked_lm_hidden_states(tmp_path):
    mlm = write_cxr_bert_folder(tmp_path / "BiomedVLP-CXR-BERT-specialized")
    enc = TextEncoder(str(tmp_path / "BiomedVLP-CXR-BERT-specialized"), output_hidden_states=True)
    assert type(enc.model).__name__ == "BertModel" and enc.num_layers == 3
    assert enc.tokenizer.tokenize("Left LUNG") == ["left", "lung"]  # do_lower_case honoured
    _same_hidden_states(enc, mlm.bert, TEXTS)


def test_biomedbert_folder_loads_with_the_masked_lm_hidden_states(tmp_path):
    mlm = write_biomedbert_folder(tmp_path / "BiomedBERT")
    enc = TextEncoder(str(tmp_path / "BiomedBERT"), output_hidden_states=True)
    _same_hidden_states(enc, mlm.bert, TEXTS)


def test_remote_code_of_a_non_bert_model_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "mystery", "auto_map": {"AutoModel": "x.Y"}}')
    with pytest.raises(ConfigError, match="ships custom code"):
        TextEncoder(str(tmp_path))


@pytest.mark.parametrize("text_only", [False, True], ids=["CLIPModel", "CLIPTextModel"])
def test_clip_folder_gives_the_text_tower(tmp_path, text_only):
    tower = write_clip_folder(tmp_path / "clip", text_only=text_only)
    enc = TextEncoder(str(tmp_path / "clip"), max_length=18, output_hidden_states=True)
    assert type(enc.model).__name__ == "CLIPTextModel" and enc.hidden_size == 32
    _same_hidden_states(enc, tower, TEXTS)
    feats = enc(TEXTS)
    assert feats.tokens.shape[1] == 18 and feats.mask.sum(1).tolist() == [18, 18]  # truncated to 18 tokens


def test_kept_padding_features_are_the_encoders_and_survive_the_cache():
    cached = TextEncoder("tiny", max_length=24, padding="max_length", zero_padding=False, output_hidden_states=True)
    direct = TextEncoder("tiny", max_length=24, padding="max_length", zero_padding=False, cache=False,
                         output_hidden_states=True)
    zeroed = TextEncoder("tiny", max_length=24, padding="max_length")
    first, again, plain, ref = cached(TEXTS), cached(TEXTS[::-1]), direct(TEXTS), zeroed(TEXTS)
    pad = ~first.mask
    assert pad.any() and (first.tokens[pad].abs().sum(-1) > 0).all()  # the encoder's outputs at [PAD]
    assert torch.allclose(first.tokens, plain.tokens, rtol=CACHE_RTOL, atol=1e-5)
    assert torch.equal(again.tokens[0], first.tokens[1])
    assert torch.allclose(first.hidden_states[2], plain.hidden_states[2], rtol=CACHE_RTOL, atol=1e-5)
    assert torch.allclose(first.sentence, ref.sentence, rtol=CACHE_RTOL, atol=1e-5) and torch.equal(first.mask, ref.mask)
    with pytest.raises(ConfigError, match="zero_padding=False"):
        TextEncoder("tiny", zero_padding=False)


def test_folder_without_model_type_or_tokenizer_is_named(tmp_path):
    import json

    from langseg.blocks.text_encoder import TextEncoder
    from langseg.errors import ConfigError

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(ConfigError, match=r"config.json' has no \"model_type\""):
        TextEncoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32, "model_type": "bert"}))
    with pytest.raises(ConfigError, match=r"has no tokenizer files \(one of tokenizer.json, vocab.txt"):
        TextEncoder(str(tmp_path))  # transformers blamed a missing sentencepiece


def test_a_loaded_encoder_follows_its_parents_mode_and_a_frozen_one_encodes_without_dropout():
    from langseg.blocks.text_encoder import TextEncoder

    enc = TextEncoder("tiny", cache=False)
    assert all(m.training for m in enc.modules())  # no stray eval-mode modules for Lightning's fit-start check
    first, second = enc(["left lung"]).tokens, enc(["left lung"]).tokens
    assert torch.equal(first, second) and all(m.training for m in enc.modules())


def _distinct_texts(n: int) -> list[str]:
    return [f"lesion {k} in the left lung" for k in range(n)]


def test_cache_stays_within_its_bound_and_drops_the_least_recently_used_text(monkeypatch):
    probe = TextEncoder("tiny", output_hidden_states=True, cache_mb=None)
    probe(_distinct_texts(1))
    per_text = probe.cached_bytes
    enc = TextEncoder("tiny", output_hidden_states=True, cache_mb=3.5 * per_text / 2**20)
    texts = _distinct_texts(4)
    enc(texts[:3])
    enc(texts[:1])  # texts[0] is now the most recently used
    enc(texts[3:])
    assert enc.cached_bytes <= enc.cache_bytes and list(enc._cache) == [texts[2], texts[0], texts[3]]
    calls = []
    original = enc.model.forward
    monkeypatch.setattr(enc.model, "forward", lambda *a, **k: calls.append(k["input_ids"].shape[0]) or original(*a, **k))
    enc([texts[0], texts[1]])
    assert calls == [1]  # texts[1] was dropped and is encoded again; texts[0] was kept


def test_features_are_the_same_cached_or_just_encoded_and_fp16_is_close_to_fp32():
    half = TextEncoder("tiny", output_hidden_states=True)
    full = TextEncoder("tiny", output_hidden_states=True, cache_dtype="float32")
    new, again, exact = half(TEXTS), half(TEXTS), full(TEXTS)
    assert new.tokens.dtype == torch.float32 and torch.equal(new.tokens, again.tokens)
    assert torch.equal(new.hidden_states[1], again.hidden_states[1])
    assert not torch.equal(new.tokens, exact.tokens)  # rounded to fp16 ...
    assert torch.allclose(new.tokens, exact.tokens, rtol=CACHE_RTOL, atol=1e-6)  # ... and no further
    assert half.cached_bytes * 2 == full.cached_bytes


def test_a_zero_bound_caches_nothing_and_a_negative_one_is_refused():
    enc = TextEncoder("tiny", cache_mb=0)
    feats = enc(TEXTS)
    assert feats.tokens.shape[0] == 2 and not enc._cache and enc.cached_bytes == 0
    with pytest.raises(ConfigError, match="cache_mb=-1"):
        TextEncoder("tiny", cache_mb=-1)
    with pytest.raises(ConfigError, match="cache_dtype='bfloat8'"):
        TextEncoder("tiny", cache_dtype="bfloat8")


def test_cached_fp16_features_come_back_fp32_under_bf16_autocast():
    enc = TextEncoder("tiny", output_hidden_states=True)
    plain = enc(TEXTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        new, again = TextEncoder("tiny", output_hidden_states=True)(TEXTS), enc(TEXTS)
    assert new.tokens.dtype == again.hidden_states[0].dtype == torch.float32
    assert torch.equal(new.tokens, plain.tokens) and torch.equal(again.sentence, plain.sentence)
