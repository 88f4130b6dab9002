"""``langseg convert``: official GuideDecoder/HiMix checkpoints onto langseg's networks (``langseg/convert.py``).

The official state dicts are built here from the official module definitions (names and shapes as
``LanGuideMedSeg``/``HiMix`` and the MONAI and Hugging Face modules they hold would give them), with random values.
"""
from __future__ import annotations

import re
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


RECLMIS_WIDTHS, RECLMIS_GRID, RECLMIS_DEPTH = (4, 8, 16, 32, 32), 4, 2


def _conv_bn(prefix: str, c_in: int, c_out: int) -> dict[str, tuple]:
    """The official ``ConvBatchNorm``: ``conv`` (3x3, bias) and ``norm`` (BatchNorm2d)."""
    return {f"{prefix}.conv.weight": (c_out, c_in, 3, 3), f"{prefix}.conv.bias": (c_out,),
            **{f"{prefix}.norm.{k}": v for k, v in _batch_norm(c_out).items()}}


def official_reclmis_shapes(widths: tuple[int, ...], in_channels: int, text_dim: int, grid: int,
                            depth: int) -> dict[str, tuple]:
    """Names and shapes of the official ``RecLMIS`` state dict (``nets/RecLMIS.py``, ``nets/Interactor.py``, LViT's
    ``PixLevelModule``, ``nets/transformer/``), at ``widths`` (``base_channel`` x 1, 2, 4, 8, 8 officially)."""
    c = widths[-1]
    shapes = _conv_bn("inc", in_channels, widths[0])
    for i in range(1, 5):  # down1-4: max-pool, two ConvBatchNorm
        shapes |= _conv_bn(f"down{i}.nConvs.0", widths[i - 1], widths[i]) | _conv_bn(f"down{i}.nConvs.1",
                                                                                     widths[i], widths[i])
    c_in = widths[4]
    for k, skip in zip((4, 3, 2, 1), (3, 2, 1, 0)):  # up4-1: PixLevelModule on the skip, two ConvBatchNorm
        c_out, s = widths[max(skip - 1, 0)], widths[skip]
        shapes |= {f"up{k}.pixModule.conv_avg.weight": (s, s, 1, 1), f"up{k}.pixModule.conv_max.weight": (s, s, 1, 1),
                   f"up{k}.pixModule.bottleneck.0.weight": (6, 3), f"up{k}.pixModule.bottleneck.0.bias": (6,),
                   f"up{k}.pixModule.bottleneck.2.weight": (1, 6), f"up{k}.pixModule.bottleneck.2.bias": (1,),
                   f"up{k}.pixModule.conv_sig.0.weight": (s, s, 1, 1), f"up{k}.pixModule.conv_sig.0.bias": (s,)}
        shapes |= _conv_bn(f"up{k}.nConvs.0", c_in + s, c_out) | _conv_bn(f"up{k}.nConvs.1", c_out, c_out)
        c_in = c_out
    shapes |= {"outc.weight": (1, widths[0], 1, 1), "outc.bias": (1,), "text_module4.weight": (c, text_dim, 3),
               "text_module4.bias": (c,), "interact.embeddings.patch_embeddings.weight": (c, c, 1, 1),
               "interact.embeddings.patch_embeddings.bias": (c,),
               "interact.embeddings.position_embeddings": (1, grid * grid, c),
               "interact.CTBN.conv.weight": (c, c, 3), "interact.CTBN.conv.bias": (c,),
               **{f"interact.CTBN.norm.{k}": v for k, v in _batch_norm(c).items()},
               **{f"interact.{a}.{k}": v for a in ("attn_text", "attn_img") for k, v in _attention(c).items()},
               **{f"{m}.{k}": v for m in ("mlp_visual", "mlp_woi") for k, v in
                  {"0.weight": (c, c), "0.bias": (c,), "2.weight": (1, c), "2.bias": (1,)}.items()},
               "clip.logit_scale": (), "clip.token_embedding.weight": (50, text_dim),
               "clip.positional_embedding": (77, text_dim)}
    layer = {**{f"{a}.{k}": v for a in ("self_attn", "encoder_attn") for k, v in _attention(c).items()},
             **{f"{n}.{k}": (c,) for n in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm")
                for k in ("weight", "bias")},
             "fc1.weight": (2 * c, c), "fc1.bias": (2 * c,), "fc2.weight": (c, 2 * c), "fc2.bias": (c,)}
    for rec in ("rec_img_trans1", "rec_text_trans1"):  # DualTransformer: two TransformerDecoder stacks
        shapes |= {f"{rec}.decoder{d}.decoder_layers.{j}.{k}": v for d in (1, 2) for j in range(depth)
                   for k, v in layer.items()}
    return shapes


def official_reclmis_state(text_dim: int, in_channels: int = 3) -> dict[str, torch.Tensor]:
    shapes = official_reclmis_shapes(RECLMIS_WIDTHS, in_channels, text_dim, RECLMIS_GRID, RECLMIS_DEPTH)
    return {k: torch.tensor(5) if k.endswith("num_batches_tracked") else torch.randn(v) for k, v in shapes.items()}


def test_every_official_reclmis_tensor_lands_and_only_the_reconstructors_are_left_out(tmp_path):
    from langseg.models import RecLMIS

    official = official_reclmis_state(text_dim=32)
    model = RecLMIS(text_encoder="tiny", in_channels=3, widths=RECLMIS_WIDTHS, num_heads=4, interaction="official",
                    position_grid=RECLMIS_GRID, recon_depth=RECLMIS_DEPTH)
    target = model.net.state_dict()
    converted = convert_state_dict("reclmis", official, target)
    assert set(target) - set(converted) == {k for k in target if k.startswith(("vision_reconstructor.",
                                                                                 "text_reconstructor."))}
    landed = 0
    for name, value in official.items():
        mapped = official_key("reclmis", name)
        if mapped is not None:
            assert torch.equal(converted[mapped[0]], value.reshape(target[mapped[0]].shape)), name
            landed += 1
    assert landed == len(converted)
    dropped = {re.sub(r"\.(decoder\d|\d|weight|bias|token_embedding|positional_embedding|logit_scale).*", "", k)
               for k in official if official_key("reclmis", k) is None}
    assert dropped == {"clip", "rec_img_trans1", "rec_text_trans1", "up1.pixModule.conv_sig", "up2.pixModule.conv_sig",
                       "up3.pixModule.conv_sig", "up4.pixModule.conv_sig"}
    model.net.load_state_dict({**target, **converted})
    assert torch.equal(model.net.interaction.fusion.position, official["interact.embeddings.position_embeddings"])
    with pytest.raises(ConfigError, match="'interact.attn_txt.in_proj_weight' is not a tensor of the official reclmis"):
        convert_state_dict("reclmis", {**official, "interact.attn_txt.in_proj_weight": torch.zeros(1)}, target)
    paper = RecLMIS(text_encoder="tiny", in_channels=3, widths=RECLMIS_WIDTHS, num_heads=4).net.state_dict()
    with pytest.raises(ConfigError, match="'text_module4.weight' maps to.*--model.interaction official"):
        convert_state_dict("reclmis", official, paper)
    with pytest.raises(ConfigError, match=r"no official tensor for langseg's \['interaction.fusion.position'\]"):
        convert_state_dict("reclmis", {k: v for k, v in official.items()
                                       if k != "interact.embeddings.position_embeddings"}, target)


def test_with_reconstructor_official_every_official_reconstructor_tensor_lands_too():
    from langseg.models import RecLMIS

    official = official_reclmis_state(text_dim=32)
    model = RecLMIS(text_encoder="tiny", in_channels=3, widths=RECLMIS_WIDTHS, num_heads=4, interaction="official",
                    aux_losses="official", reconstructor="official", mlp_ratio=2.0, position_grid=RECLMIS_GRID,
                    recon_depth=RECLMIS_DEPTH)
    target = model.net.state_dict()
    converted = convert_state_dict("reclmis", official, target)
    assert set(converted) == set(target)  # every langseg tensor, the reconstructors included, gets an official value
    for name, value in official.items():
        mapped = official_key("reclmis", name, official_reconstructors=True)
        if mapped is not None:
            assert torch.equal(converted[mapped[0]], value.reshape(target[mapped[0]].shape)), name
    dropped = {k for k in official if official_key("reclmis", k, official_reconstructors=True) is None}
    unused_cross = {k for k in dropped if re.match(r"rec_(img|text)_trans1\.decoder1\..*\.encoder_attn", k)}
    assert len(unused_cross) == 2 * RECLMIS_DEPTH * 6  # decoder1's cross-attention: 4 tensors + its norm's 2
    assert {k.split(".")[0] for k in dropped - unused_cross} == {"clip", "up1", "up2", "up3", "up4"}
    assert torch.equal(converted["text_reconstructor.query_layers.1.cross_attn.in_proj_weight"],
                       official["rec_text_trans1.decoder2.decoder_layers.1.encoder_attn.in_proj_weight"])
    assert torch.equal(converted["vision_reconstructor.context_layers.0.self_attn_norm.bias"],
                       official["rec_img_trans1.decoder1.decoder_layers.0.self_attn_layer_norm.bias"])
    with pytest.raises(ConfigError, match=r"'rec_img_trans1\.decoder1\.decoder_layers\.1\..*' maps to .*recon_depth"):
        convert_state_dict("reclmis", official, RecLMIS(
            text_encoder="tiny", in_channels=3, widths=RECLMIS_WIDTHS, num_heads=4, interaction="official",
            aux_losses="official", reconstructor="official", mlp_ratio=2.0, position_grid=RECLMIS_GRID,
            recon_depth=1).net.state_dict())
    with pytest.raises(ConfigError, match=r"'rec_img_trans1\.decoder1\.decoder_layers\.0\.fc1\.weight' has shape .*mlp_ratio"):
        convert_state_dict("reclmis", official, RecLMIS(
            text_encoder="tiny", in_channels=3, widths=RECLMIS_WIDTHS, num_heads=4, interaction="official",
            aux_losses="official", reconstructor="official", position_grid=RECLMIS_GRID,
            recon_depth=RECLMIS_DEPTH).net.state_dict())


def test_convert_from_reclmis_writes_a_checkpoint_that_langseg_test_accepts(tmp_path, monkeypatch, capsys,
                                                                            one_thread):
    from tests.hf_folders import write_clip_folder

    clip = write_clip_folder(tmp_path / "clip-vit-base-patch32")
    official = official_reclmis_state(clip.config.hidden_size)
    torch.save({"epoch": 3, "best_model": True, "model": "RecLMIS", "val_loss": 0.4,
                "state_dict": {f"module.{k}": v for k, v in official.items()}},  # saved from nn.DataParallel
               tmp_path / "best_model-RecLMIS.pth.tar")
    monkeypatch.chdir(REPO)
    model_args = ["--model.text_encoder", str(tmp_path / "clip-vit-base-patch32"), "--model.widths",
                  str(list(RECLMIS_WIDTHS)), "--model.position_grid", str(RECLMIS_GRID), "--model.recon_depth",
                  str(RECLMIS_DEPTH)]
    out = tmp_path / "model.ckpt"
    main(["convert", "--from", "reclmis", str(tmp_path / "best_model-RecLMIS.pth.tar"), "--config",
          "configs/reclmis_official.yaml", "--output", str(out), "--", *model_args])
    assert f"wrote {out}" in capsys.readouterr().out
    state = torch.load(out, weights_only=True)["state_dict"]
    assert torch.equal(state["net.interaction.fusion.text_attn.in_proj_weight"],
                       official["interact.attn_text.in_proj_weight"])
    assert torch.equal(state["net.decoder.blocks.0.plam.mlp.0.weight"][..., 0, 0],
                       official["up4.pixModule.bottleneck.0.weight"])
    assert torch.equal(state["net.vision_reconstructor.query_layers.1.fc2.weight"],  # reconstructor: official
                       official["rec_img_trans1.decoder2.decoder_layers.1.fc2.weight"])
    main(["test", "--config", "configs/reclmis_official.yaml", "--ckpt_path", str(out), *model_args,
          "--data", "configs/data/synthetic.yaml", "--data.init_args.in_channels", "3", "--data.init_args.num_test",
          "4", "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0", "--trainer.precision", "32",
          "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"])
    assert "test/dice" in capsys.readouterr().out
