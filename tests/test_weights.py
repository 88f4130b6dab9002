"""Hugging Face ConvNeXt weights on langseg's timm ConvNeXt encoders (``langseg/weights.py``)."""
from __future__ import annotations

import pytest
import timm
import torch

from langseg.errors import ConfigError
from langseg.models.guidedecoder import GuideDecoderNet
from langseg.models.mmi_unet import MMIUNetNet
from langseg.weights import load_hf_convnext
from tests.hf_folders import write_convnext_folder

DEPTHS, DIMS = (1, 1, 2, 1), (8, 16, 24, 32)


def small_timm_encoder(**kwargs) -> torch.nn.Module:
    return timm.create_model("convnext_tiny", features_only=True, out_indices=(-4, -3, -2, -1), depths=DEPTHS,
                             dims=DIMS, **kwargs).eval()


def hf_stage_outputs(hf: torch.nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return hf(image, output_hidden_states=True).hidden_states[1:]  # the four stage outputs


@pytest.mark.parametrize("source", ["folder", "pytorch_model.bin", "model.safetensors"])
def test_hf_convnext_initialises_the_timm_encoder_to_identical_features(tmp_path, source, one_thread):
    hf = write_convnext_folder(tmp_path / "convnext", DEPTHS, DIMS)
    if source == "pytorch_model.bin":  # the older layout of the official repos' lib/convnext-tiny-224
        from safetensors.torch import load_file

        torch.save(load_file(str(tmp_path / "convnext" / "model.safetensors")), tmp_path / source)
    path = {"folder": tmp_path / "convnext", "pytorch_model.bin": tmp_path / source,
            "model.safetensors": tmp_path / "convnext" / source}[source]
    encoder = small_timm_encoder()
    load_hf_convnext(encoder, path)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = encoder(image)
    for got, want in zip(ours, hf_stage_outputs(hf, image), strict=True):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_conv_mlp_convnext_takes_the_linear_weights_reshaped(tmp_path, one_thread):
    hf = write_convnext_folder(tmp_path / "convnext", DEPTHS, DIMS)
    encoder = small_timm_encoder(conv_mlp=True)  # ConvNeXt-Atto..Nano: the MLP as 1x1 convs
    load_hf_convnext(encoder, tmp_path / "convnext")
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder(image)[-1], hf_stage_outputs(hf, image)[-1], atol=1e-5)


def test_guidedecoder_encoder_weights_option_loads_a_hf_folder(tmp_path, one_thread):
    hf = write_convnext_folder(tmp_path / "convnext-atto", (2, 2, 6, 2), (40, 80, 160, 320))
    net = GuideDecoderNet(text_dim=32, encoder_name="convnext_atto", max_text_length=16, text_tokens=(16, 8, 4),
                          encoder_weights=str(tmp_path / "convnext-atto")).eval()
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net.encoder(image)[0], hf_stage_outputs(hf, image)[0], atol=1e-5)


def test_mmi_unet_encoder_weights_option_loads_a_hf_folder(tmp_path, one_thread):
    hf = write_convnext_folder(tmp_path / "convnext-atto", (2, 2, 6, 2), (40, 80, 160, 320))
    net = MMIUNetNet(text_dim=32, encoder_name="convnext_atto", encoder_weights=str(tmp_path / "convnext-atto")).eval()
    image = torch.randn(1, 3, 32, 32)
    first_stage = image
    with torch.no_grad():  # Bridgers sit between the stages: compare the stem and first stage with the HF model's
        for name in ("stem_0", "stem_1", "stages_0"):
            first_stage = getattr(net.encoder, name)(first_stage)
    assert torch.allclose(first_stage, hf_stage_outputs(hf, image)[0], atol=1e-5)


def test_wrong_size_or_foreign_weights_name_the_file(tmp_path):
    write_convnext_folder(tmp_path / "convnext", DEPTHS, DIMS)
    with pytest.raises(ConfigError, match=r"convnext.*another ConvNeXt size"):
        load_hf_convnext(timm.create_model("convnext_atto", features_only=True), tmp_path / "convnext")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.bin")
    with pytest.raises(ConfigError, match=r"other.bin: 'fc.weight' is not a Hugging Face ConvNeXt tensor"):
        load_hf_convnext(small_timm_encoder(), tmp_path / "other.bin")
    with pytest.raises(ConfigError, match="holds none of"):
        load_hf_convnext(small_timm_encoder(), tmp_path)
