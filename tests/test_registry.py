import pytest

import langseg
from langseg.errors import ConfigError
from langseg.models import UNetBaseline


def test_create_and_list_models():
    assert "unet" in langseg.list_models()
    assert langseg.list_models("un*") == ["unet"]
    model = langseg.create_model("unet", in_channels=3, encoder_name="resnet18")
    assert isinstance(model, UNetBaseline)
    assert model.net.encoder.conv1.in_channels == 3


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'unett'.*unet"):
        langseg.create_model("unett")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ConfigError, match="already registered"):
        langseg.register_model("unet")(object)
