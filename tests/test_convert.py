"""``langseg convert``: official GuideDecoder/HiMix checkpoints onto langseg's networks (``langseg/convert.py``).

The official state dicts are built here from the official module definitions (names and shapes as
``LanGuideMedSeg``/``HiMix`` and the MONAI and Hugging Face modules they hold would give them), with random values.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from langseg.blocks.layers import sine_position_encoding_1d
from langseg.cli import main
from langseg.convert import convert_state_dict, official_key, read_official_checkpoint
from langseg.errors import ConfigError
from langseg.models import GuideDecoder, HiMix
from tests.hf_folders import write_convnext_folder, write_cxr_bert_folder

REPO = Path(__file__).resolve().parent.parent
ATTO = ((2, 2, 6, 2), (40, 80, 160, 320))  # the official ConvNeXt-T's layout at ConvNeXt-Atto's size
TOKENS, TEXT_LEN, HEAD = (24, 12, 9), 24, 24


def _attention(c: int) -> dict[str, tuple[int, ...]]:
    """``nn.MultiheadAttention(c, heads)``'s tensors."""
    return {"in_proj_weight": (3 * c, c), "in_proj_bias": (3 * c,), "out_proj.weight": (c, c), "out_proj.bias": (c,)}


def _batch_norm(c: int) -> dict[str, tuple[int, ...]]:
    return {"weight": (c,), "bias": (c,), "running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}


def official_shapes(method: str, dims: tuple[int, ...], text_dim: int, text_layers: int) -> dict[str, tuple]:
    """Names and shapes of the official network's decoder, head and mixer (``utils/layers*.py``, ``utils/model*.py``):
    stage ``decoder16/8/4`` = a guide layer (``GuideDecoderLayer`` / HiMix ``DecoderLayer``) + MONAI ``UnetrUpBlock``,
    ``decoder1`` = MONAI ``SubpixelUpsample``, ``out`` = MONAI ``UnetOutBlock``."""
    shapes: dict[str, tuple] = {}
    for stage, c_in, c_out, tokens in zip(("decoder16", "decoder8", "decoder4"), dims[::-1], dims[::-1][1:], TOKENS):
        layer = {"text_project.0.weight": (tokens, TEXT_LEN, 1), "text_project.0.bias": (tokens,),
                 "text_project.2.weight": (c_in, text_dim), "text_project.2.bias": (c_in,),
                 "vis_pos.pe": (1, 5000, c_in), "txt_pos.pe": (1, tokens, c_in)}
        for norm in ("self_attn_norm", "cross_attn_norm", "norm1", "norm2"):
            layer |= {f"{norm}.weight": (c_in,), f"{norm}.bias": (c_in,)}
        for attn in ("self_attn", "cross_attn"):
            layer |= {f"{attn}.{k}": v for k, v in _attention(c_in).items()}
        if method == "guidedecoder":
            layer["scale"] = ()
        else:
            layer |= {"sig": (), "scale1": (), "scale2": (), "scale3": (), "lin1.weight": (c_in // 2, c_in),
                      "lin1.bias": (c_in // 2,), "lin2.weight": (c_in, c_in // 2), "lin2.bias": (c_in,),
                      "norm.weight": (c_in,), "norm.bias": (c_in,)}
        up = {"transp_conv.conv.weight": (c_in, c_out, 2, 2), "conv_block.conv1.conv.weight": (c_out, 2 * c_out, 3, 3),
              "conv_block.conv2.conv.weight": (c_out, c_out, 3, 3)}
        for norm in ("norm1", "norm2"):
            up |= {f"conv_block.{norm}.{k}": v for k, v in _batch_norm(c_out).items()}
        shapes |= {f"{stage}.guide_layer.{k}": v for k, v in layer.items()}
        shapes |= {f"{stage}.decoder.{k}": v for k, v in up.items()}
    shapes |= {"decoder1.conv_block.weight": (HEAD * 16, dims[0], 3, 3), "decoder1.conv_block.bias": (HEAD * 16,),
               "out.conv.conv.weight": (1, HEAD, 1, 1), "out.conv.conv.bias": (1,)}
    if method == "himix":
        shapes["attention_weights"] = (3, text_layers // 3)
    return shapes


def official_checkpoint(method: str, convnext: torch.nn.Module, text_dim: int, text_layers: int) -> dict:
    """An official Lightning checkpoint: ``state_dict`` under the wrapper's ``model.`` prefix, random values, the
    ConvNeXt and BERT tensors of real models, the projection heads, and the sine tables the official code holds."""
    dims = tuple(convnext.config.hidden_sizes)
    state = {f"encoder.model.{k}": v for k, v in convnext.state_dict().items()}
    state |= {"encoder.project_head.weight": torch.randn(8, dims[-1]), "encoder.project_head.bias": torch.randn(8),
              "text_encoder.model.bert.embeddings.word_embeddings.weight": torch.randn(5, text_dim),
              "text_encoder.project_head.0.weight": torch.randn(8, text_dim)}
    for name, shape in official_shapes(method, dims, text_dim, text_layers).items():
        if name.endswith(".pe"):
            state[name] = sine_position_encoding_1d(shape[1], shape[2]).unsqueeze(0)
        elif name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        else:
            state[name] = torch.randn(shape)
    return {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("official")
    bert = write_cxr_bert_folder(root / "BiomedVLP-CXR-BERT-specialized", layers=3)
    convnext = write_convnext_folder(root / "convnext", *ATTO)
    return {"root": root, "bert": root / "BiomedVLP-CXR-BERT-specialized", "text_dim": bert.config.hidden_size,
            "convnext": convnext}


def build(method: str, folders: dict, **kwargs) -> torch.nn.Module:
    cls = GuideDecoder if method == "guidedecoder" else HiMix
    extra = {"ffn": "official", "centred_fft": False} if method == "himix" else {}
    return cls(text_encoder=str(folders["bert"]), encoder_name="convnext_atto", **{**extra, **kwargs})


@pytest.mark.parametrize("method", ["guidedecoder", "himix"])
def test_every_official_tensor_lands_and_every_langseg_tensor_is_filled(method, folders):
    official = official_checkpoint(method, folders["convnext"], folders["text_dim"], 3)["state_dict"]
    official = {k.removeprefix("model."): v for k, v in official.items()}
    model = build(method, folders)
    converted = convert_state_dict(method, official, model.net.state_dict())
    assert set(converted) == set(model.net.state_dict())
    landed = 0
    for name, value in official.items():
        mapped = official_key(method, name)
        if mapped is None:
            continue
        key, index = mapped
        got = converted[key] if index is None else converted[key][index]
        assert torch.equal(got, value.reshape(got.shape)), name  # ConvNeXt-Atto's MLP: 1x1 convs
        landed += 1
    dropped = {k.split(".")[0] + "." + k.split(".")[1] for k in official if official_key(method, k) is None}
    assert dropped == {"encoder.model", "encoder.project_head", "text_encoder.model", "text_encoder.project_head",
                       "decoder16.guide_layer", "decoder8.guide_layer", "decoder4.guide_layer"}
    assert landed == len(converted) + (6 if method == "himix" else 0)  # HiMix: 3 scalars -> one (3,) per stage


def test_unknown_extra_or_missing_tensors_are_errors_that_name_them(folders):
    official = official_checkpoint("himix", folders["convnext"], folders["text_dim"], 3)["state_dict"]
    official = {k.removeprefix("model."): v for k, v in official.items()}
    target = build("himix", folders).net.state_dict()
    with pytest.raises(ConfigError, match="'decoder8.guide_layer.gate.weight' is not a tensor of the official himix"):
        convert_state_dict("himix", {**official, "decoder8.guide_layer.gate.weight": torch.zeros(1)}, target)
    with pytest.raises(ConfigError, match=r"no official tensor for langseg's \['guides.1.text_proj.tokens.0.bias'\]"):
        convert_state_dict("himix", {k: v for k, v in official.items() if k != "decoder8.guide_layer.text_project.0.bias"},
                           target)
    with pytest.raises(ConfigError, match=r"no official tensor for langseg's \['guides.0.scales'\]"):  # 1 of 3 missing
        convert_state_dict("himix", {k: v for k, v in official.items() if k != "decoder16.guide_layer.scale2"}, target)
    prenorm = build("himix", folders, ffn="prenorm").net.state_dict()  # langseg's FFN has a LayerNorm first
    with pytest.raises(ConfigError, match=r"'decoder16.guide_layer.lin1.weight'.*--model.ffn official"):
        convert_state_dict("himix", official, prenorm)
    tampered = {**official, "decoder4.guide_layer.txt_pos.pe": torch.zeros(1, 9, 160)}
    with pytest.raises(ConfigError, match="txt_pos.pe' is not the fixed sine table"):
        convert_state_dict("himix", tampered, target)


class CfgNode(dict):
    """Stands for the official config object that official checkpoints pickle in their hyper-parameters."""


def test_convert_command_writes_a_checkpoint_that_langseg_test_accepts(folders, tmp_path, monkeypatch, capsys,
                                                                       one_thread):
    official = official_checkpoint("himix", folders["convnext"], folders["text_dim"], 3)
    official["hyper_parameters"] = {"args": CfgNode(bert_type="microsoft/BiomedVLP-CXR-BERT-specialized")}
    torch.save(official, tmp_path / "official.ckpt")
    assert set(read_official_checkpoint(tmp_path / "official.ckpt")) == {
        k.removeprefix("model.") for k in official["state_dict"]}  # read without importing the official config class
    monkeypatch.chdir(REPO)
    model_args = ["--model.text_encoder", str(folders["bert"]), "--model.encoder_name", "convnext_atto"]
    out = tmp_path / "converted" / "model.ckpt"
    main(["convert", "--from", "himix", str(tmp_path / "official.ckpt"), "--config", "configs/himix_paper.yaml",
          "--output", str(out), "--", *model_args])
    assert f"wrote {out}" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["model.ckpt"]  # no temporary file left behind
    state = torch.load(out, weights_only=True)["state_dict"]
    assert torch.equal(state["net.guides.2.refine.sigma"], official["state_dict"]["model.decoder4.guide_layer.sig"])
    assert not any(k.startswith("text_encoder.") for k in state)
    main(["test", "--config", "configs/himix_paper.yaml", "--ckpt_path", str(out), *model_args,
          "--data", "configs/data/synthetic.yaml", "--data.init_args.num_test", "4", "--data.init_args.batch_size", "4",
          "--data.init_args.num_workers", "0", "--trainer.default_root_dir", str(tmp_path / "runs"),
          "--trainer.enable_progress_bar", "false"])
    assert "test/dice" in capsys.readouterr().out
