"""Tiny random Hugging Face folders in the layouts the official repositories ship (CXR-BERT, BiomedBERT, CLIP,
ConvNeXt), written by the tests themselves: nothing is downloaded."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import (BertConfig, BertForMaskedLM, CLIPConfig, CLIPModel, CLIPTextModel, CLIPTokenizer,
                          ConvNextConfig, ConvNextForImageClassification, ConvNextModel)

from langseg.blocks.text_encoder import TINY_BERT_DIR

VOCAB = (TINY_BERT_DIR / "vocab.txt").read_text().split()


def _tiny_bert_mlm(layers: int) -> BertForMaskedLM:
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=64, hidden_dropout_prob=0.25,
                        attention_probs_dropout_prob=0.25)
    torch.manual_seed(1)
    return BertForMaskedLM(config).eval()


def write_cxr_bert_folder(root: Path, layers: int = 3) -> BertForMaskedLM:
    """``lib/BiomedVLP-CXR-BERT-specialized/`` as the official GuideDecoder/HiMix repos ship it: a ``CXRBertModel``
    config (``model_type`` ``cxr-bert``, an ``auto_map`` to remote code, a projection size), a tokenizer config
    naming the remote ``CXRBertTokenizer``, ``vocab.txt``, and the masked-LM weights (``bert.*``, ``cls.*``)
    plus the CLS projection head in ``pytorch_model.bin``. Returns the masked-LM model the weights came from."""
    mlm = _tiny_bert_mlm(layers)
    root.mkdir(parents=True, exist_ok=True)
    config = {**mlm.config.to_dict(), "architectures": ["CXRBertModel"], "model_type": "cxr-bert",
              "projection_size": 8, "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                                                 "AutoModel": "modeling_cxrbert.CXRBertModel"}}
    (root / "config.json").write_text(json.dumps(config))
    (root / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": True, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]", "tokenizer_class": "CXRBertTokenizer",
        "auto_map": {"AutoTokenizer": ["configuration_cxrbert.CXRBertTokenizer", None]}}))
    shutil.copy(TINY_BERT_DIR / "vocab.txt", root / "vocab.txt")
    state = dict(mlm.state_dict())
    state["cls_projection_head.dense_to_hidden.weight"] = torch.randn(8, 32)
    state["cls_projection_head.dense_to_hidden.bias"] = torch.zeros(8)
    torch.save(state, root / "pytorch_model.bin")
    return mlm


def write_biomedbert_folder(root: Path, layers: int = 3) -> BertForMaskedLM:
    """A BiomedBERT (PubMedBERT) folder: a plain ``BertForMaskedLM`` config, ``vocab.txt`` and its weights."""
    mlm = _tiny_bert_mlm(layers)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({**mlm.config.to_dict(), "architectures": ["BertForMaskedLM"]}))
    shutil.copy(TINY_BERT_DIR / "vocab.txt", root / "vocab.txt")
    torch.save(mlm.state_dict(), root / "pytorch_model.bin")
    return mlm


def write_clip_folder(root: Path, text_only: bool = False) -> torch.nn.Module:
    """A CLIP folder (``CLIPModel``, or its ``CLIPTextModel`` alone) with a character-level BPE tokenizer.

    Returns the text tower the folder holds."""
    chars = [chr(c) for c in range(33, 127)]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    root.mkdir(parents=True, exist_ok=True)
    CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[]).save_pretrained(str(root))
    text = dict(vocab_size=len(tokens), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=len(tokens) - 2,
                eos_token_id=len(tokens) - 1, pad_token_id=len(tokens) - 1)
    config = CLIPConfig(text_config=text, projection_dim=16, vision_config=dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16))
    torch.manual_seed(2)
    model = CLIPModel(config).eval()
    if text_only:
        tower = CLIPTextModel(config.text_config).eval()
        getattr(tower, "text_model", tower).load_state_dict(model.text_model.state_dict())  # transformers 4 | 5
        tower.save_pretrained(str(root))
        return tower
    model.save_pretrained(str(root))
    return model.text_model


def tiny_convnext_config(depths: tuple[int, ...] = (1, 1, 2, 1), dims: tuple[int, ...] = (8, 16, 24, 32)
                         ) -> ConvNextConfig:
    return ConvNextConfig(num_channels=3, depths=list(depths), hidden_sizes=list(dims), layer_scale_init_value=0.5)


def write_convnext_folder(root: Path, depths: tuple[int, ...] = (1, 1, 2, 1),
                          dims: tuple[int, ...] = (8, 16, 24, 32)) -> ConvNextModel:
    """A ``facebook/convnext-tiny-224``-layout folder (``ConvNextForImageClassification`` config and weights,
    ``convnext.*`` keys) of a small random ConvNeXt; returns its ``ConvNextModel``."""
    torch.manual_seed(3)
    model = ConvNextForImageClassification(tiny_convnext_config(depths, dims)).eval()
    with torch.no_grad():  # non-trivial norms and layer scales, so a mis-mapped tensor shows
        for name, p in model.named_parameters():
            if "layernorm" in name.lower() or "layer_scale" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(root))
    return model.convnext
