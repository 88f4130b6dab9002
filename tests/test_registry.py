import pytest

import langseg
from langseg.errors import ConfigError
from langseg.models import UNetBaseline


def test_create_and_list_models():
    assert "unet" in langseg.list_models()
    assert langseg.list_models("un*") == ["unet", "unet_small"]
    model = langseg.create_model("unet", in_channels=3, encoder_name="resnet18")
    assert isinstance(model, UNetBaseline)
    assert model.net.model.encoder.conv1.in_channels == 3


def test_every_small_variant_has_a_full_size_model():
    small = langseg.list_models("*_small")
    assert small and {name.removesuffix("_small") for name in small} <= set(langseg.list_models())


def test_a_small_variant_builds_the_full_class_with_its_defaults_and_takes_overrides():
    small = langseg.get_model_class("unet_small").defaults
    model = langseg.create_model("unet_small", in_channels=3)
    assert type(model) is UNetBaseline and model.hparams.in_channels == 3
    assert tuple(model.hparams.decoder_channels) == small["decoder_channels"]
    assert model.net.model.decoder.blocks[-1].conv2[0].out_channels == small["decoder_channels"][-1]
    wider = langseg.create_model("unet_small", decoder_channels=(32, 16, 8, 8, 8))
    assert tuple(wider.hparams.decoder_channels) == (32, 16, 8, 8, 8)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'unett'.*unet"):
        langseg.create_model("unett")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ConfigError, match="already registered"):
        langseg.register_model("unet")(object)


def test_every_model_has_a_description_and_its_family_a_paper():
    from langseg.registry import model_info

    for name in langseg.list_models():
        description, paper = model_info(name)
        assert len(description) > 20 and "\n" not in description, name
        assert paper, name
