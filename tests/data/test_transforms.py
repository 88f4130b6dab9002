"""The input pipeline options: langseg's default unchanged, the official GuideDecoder / HiMix resize, intensity
normalisation and training zoom as their definitions say, recorded for inference, bad values named."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from langseg.data import ImageTextMaskDataModule
from langseg.data.transforms import equalize_histogram, resize_image, zscore
from langseg.errors import ConfigError


def _module(folder, **options) -> ImageTextMaskDataModule:
    """The datamodule without the loader cache: samples as decoded (tests/data/test_cache.py covers the cache)."""
    dm = ImageTextMaskDataModule(str(folder), image_size=32, num_workers=0, cache=False, **options)
    dm.setup("fit")
    return dm


def _pixels(folder, split: str = "train", index: int = 0) -> torch.Tensor:
    """The PNG of a row as a (1, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.asarray(Image.open(folder / "images" / f"{split}_{index}.png"), np.float32) / 255)[None]


def test_default_pipeline_gives_the_tensors_it_always_gave(generic_folder):
    dm = _module(generic_folder)
    for split in ("train", "val"):
        item = dm.dataset(split)[0]
        # the pipeline before the options: antialiased bilinear resize, clamp, (x - 0.5) / 0.25
        resized = F.interpolate(_pixels(generic_folder, split)[None], size=(32, 32), mode="bilinear",
                                align_corners=False, antialias=True)[0].clamp(0, 1)
        assert torch.equal(item["image"], (resized - 0.5) / 0.25)
        mask = np.asarray(Image.open(generic_folder / "masks" / f"{split}_0.png")) > 0
        expected = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(32, 32), mode="nearest")
        assert torch.equal(item["mask"], expected[0])
    assert dm.dataset("train").augmentation is None
    assert dm.preprocessing() == {"image_size": 32, "in_channels": 1, "mean": [0.5], "std": [0.25],
                                  "resize": "bilinear", "intensity": "unit"}


def test_zscore_is_per_image_and_per_channel():
    image = torch.stack([torch.rand(16, 16) * 0.3 + 0.2, torch.rand(16, 16), torch.full((16, 16), 0.7)])
    out = zscore(image)
    assert torch.allclose(out[:2].mean((1, 2)), torch.zeros(2), atol=1e-6)
    assert torch.allclose(out[:2].std((1, 2), correction=0), torch.ones(2), atol=1e-5)
    assert out[2].abs().max() < 1e-6  # a constant channel is centred, not divided by 0
    assert torch.allclose(zscore(image[:2] * 3 + 1), out[:2], atol=1e-5)  # independent of the pixel scale


def test_histogram_equalisation_flattens_the_histogram_onto_0_255():
    rng = np.random.default_rng(0)
    skewed = torch.from_numpy(rng.random((1, 64, 64)).astype(np.float32) ** 2)  # most pixels dark
    out = equalize_histogram(skewed)
    assert out.min() == 0 and out.max() == 255
    quarters = np.histogram(out.numpy(), bins=4, range=(0, 255))[0] / out.numel()
    assert np.allclose(quarters, 0.25, atol=0.05), quarters  # before: half the pixels in the lowest quarter
    order = skewed.flatten().argsort()
    assert (out.flatten()[order].diff() >= 0).all()  # monotone: the ordering of intensities is kept
    assert torch.allclose(equalize_histogram(skewed * 0.5 + 0.25), out, atol=1e-3)
    two_levels = torch.tensor([[[0.2, 0.2], [0.6, 0.6]]])
    assert torch.equal(equalize_histogram(two_levels), torch.tensor([[[0.0, 0.0], [255.0, 255.0]]]))


def test_bicubic_resize_is_monai_s_no_antialias_no_clamp():
    edge = torch.zeros(1, 8, 8)
    edge[:, :, 4:] = 1
    assert torch.equal(resize_image(edge, 8, "bicubic"), edge)  # the same size: unchanged
    up = resize_image(edge, 32, "bicubic")
    assert up.max() > 1 and up.min() < 0  # bicubic overshoots at an edge, and is kept as MONAI keeps it
    assert 0 <= resize_image(edge, 32, "bilinear").min() and resize_image(edge, 32, "bilinear").max() <= 1
    noise = torch.rand(1, 64, 64)
    # downsizing without antialiasing keeps more of the pixel noise than the antialiased default
    assert resize_image(noise, 16, "bicubic").std() > resize_image(noise, 16, "bilinear").std()


@pytest.mark.parametrize("intensity", ["zscore", "histogram"])
def test_official_pipeline_reaches_every_split_and_the_record(generic_folder, intensity):
    dm = _module(generic_folder, resize="bicubic", intensity=intensity)
    image = dm.dataset("val")[0]["image"]
    resized = F.interpolate(_pixels(generic_folder, "val")[None], size=(32, 32), mode="bicubic",
                            align_corners=False)[0]
    assert torch.allclose(image, zscore(resized) if intensity == "zscore" else equalize_histogram(resized), atol=1e-5)
    if intensity == "zscore":
        assert abs(float(image.mean())) < 1e-5 and abs(float(image.std(correction=0)) - 1) < 1e-4
    else:
        assert image.min() == 0 and image.max() == 255
    assert dm.preprocessing()["resize"] == "bicubic" and dm.preprocessing()["intensity"] == intensity


def test_zoom_is_applied_to_the_training_split_only(generic_folder):
    plain = _module(generic_folder)
    always = _module(generic_folder, zoom=[1.5, 1.5], zoom_p=1.0)
    never = _module(generic_folder, zoom=[1.5, 1.5], zoom_p=0.0)
    torch.manual_seed(0)
    zoomed = always.dataset("train")[1]
    base = plain.dataset("train")[1]
    assert not torch.equal(zoomed["image"], base["image"])
    assert set(zoomed["mask"].unique().tolist()) <= {0.0, 1.0}  # nearest: the mask stays binary
    ratio = float(zoomed["mask"].sum() / base["mask"].sum())
    assert 1.5 < ratio < 3.0, ratio  # a 1.5x zoom about the centre enlarges the lesion's area about 2.25x
    assert torch.equal(never.dataset("train")[1]["image"], base["image"])
    assert torch.equal(always.dataset("val")[1]["image"], plain.dataset("val")[1]["image"])
    assert "zoom" not in always.preprocessing()  # training only: inference does not zoom


def test_segment_image_prepares_a_film_as_the_training_data(generic_folder, one_thread):
    import langseg

    dm = _module(generic_folder, resize="bicubic", intensity="zscore")
    model = langseg.create_model("unet_small").eval()
    model.preprocessing = dm.preprocessing()
    seen = []
    segment = model.segment
    model.segment = lambda image, texts=None: seen.append(image) or segment(image, texts)
    film = generic_folder / "images" / "val_0.png"
    mask = model.segment_image(film)
    resized = F.interpolate(_pixels(generic_folder, "val")[None], size=(32, 32), mode="bicubic", align_corners=False)
    assert torch.allclose(seen[0], zscore(resized[0])[None], atol=1e-5)
    assert torch.equal(seen[0][0], dm.dataset("val")[0]["image"])  # exactly what validation saw
    assert mask.shape == (40, 40)
    model.preprocessing = {**dm.preprocessing(), "intensity": "minmax"}
    with pytest.raises(ConfigError, match="preprocessing intensity='minmax'; expected one of unit, zscore, histogram"):
        model.segment_image(film)


@pytest.mark.parametrize("options, message", [
    ({"resize": "nearest"}, "data.resize='nearest'; expected one of bilinear, bicubic"),
    ({"intensity": "minmax"}, "data.intensity='minmax'; expected one of unit, zscore, histogram"),
    ({"zoom": [1.2, 0.95]}, "data.zoom=[1.2, 0.95]; expected [min, max] with 0 < min <= max"),
    ({"zoom": [1.2]}, "data.zoom=[1.2]; expected [min, max]"),
    ({"zoom": "1.2"}, "data.zoom='1.2'; expected [min, max]"),
    ({"zoom_p": 1.5}, "data.zoom_p=1.5; expected a probability in [0, 1]"),
])
def test_bad_pipeline_options_name_the_field(generic_folder, options, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ImageTextMaskDataModule(str(generic_folder), **options)


@pytest.mark.parametrize("args, expected", [
    (["--data.intensity", "minmax"], "--data.init_args.intensity: Expected a typing.Literal['unit', 'zscore', 'histogram']. "
                                     "Got value: minmax"),
    (["--data.zoom", "[1.2, 0.9]"], "data.zoom=(1.2, 0.9); expected [min, max] with 0 < min <= max, e.g. [0.95, 1.2]"),
    (["--data.zoom_p", "2"], "data.zoom_p=2.0; expected a probability in [0, 1]"),
])
def test_bad_pipeline_options_are_one_line_from_the_command_line(generic_folder, tmp_path, capsys, args, expected):
    from tests.test_cli_faults import UNET, run_main, the_error, written_files

    line = the_error(*run_main("fit", "--config", UNET, "--data", "langseg.data.ImageTextMaskDataModule", "--data.root",
                               generic_folder, *args, cwd=tmp_path, capsys=capsys)[::2])
    assert line == f"langseg: error: {expected}"
    assert written_files(tmp_path / "runs") == []  # refused before anything is written


def test_official_pipeline_matches_monai_where_monai_is_installed():
    """The official code runs MONAI on the raw 0-255 pixels; langseg on [0, 1]: the same up to float round-off."""
    transforms = pytest.importorskip("monai.transforms")
    from langseg.data.datasets import prepare_image

    pixels = (np.random.default_rng(0).random((150, 230, 3)) ** 2 * 255).astype(np.uint8)
    raw = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)
    official = torch.as_tensor(np.asarray(transforms.Resize((224, 224), mode="bicubic")(raw)))
    ours = prepare_image(pixels, 224, 3, resize="bicubic")
    assert torch.allclose(ours * 255, official, atol=1e-3)
    zscored = torch.as_tensor(np.asarray(transforms.NormalizeIntensity(channel_wise=True)(official.clone())))
    assert torch.allclose(zscore(ours), zscored, atol=1e-4)
    equalised = torch.as_tensor(np.asarray(transforms.HistogramNormalize()(official.clone())))
    assert torch.allclose(equalize_histogram(ours), equalised, atol=0.01)


def test_a_model_trained_with_the_official_pipeline_predicts_with_it(generic_folder, tmp_path, capsys):
    """fit with bicubic + zscore + zoom records the pipeline in the checkpoint; ``predict --image`` applies it."""
    import langseg
    from tests.test_cli_faults import UNET, run_main

    code, _, err = run_main("fit", "--config", UNET, "--data", "langseg.data.ImageTextMaskDataModule", "--data.root",
                            generic_folder, "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers",
                            "0", "--data.resize", "bicubic", "--data.intensity", "zscore", "--data.zoom", "[0.95, 1.2]",
                            "--data.zoom_p", "0.5", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar",
                            "false", "--trainer.default_root_dir", "fit", cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    ckpt = tmp_path / "fit" / "version_0" / "checkpoints" / "last.ckpt"
    model = langseg.load(ckpt)
    assert (model.preprocessing["resize"], model.preprocessing["intensity"]) == ("bicubic", "zscore")
    film = generic_folder / "images" / "test_0.png"
    code, _, err = run_main("predict", "--ckpt_path", ckpt, "--image", film, "--output", "new", cwd=tmp_path,
                            capsys=capsys)
    assert code == 0, err[-2000:]
    resized = F.interpolate(_pixels(generic_folder, "test")[None], size=(32, 32), mode="bicubic", align_corners=False)
    with torch.no_grad():
        logits = model.segment(zscore(resized[0])[None])["logits"]
    expected = F.interpolate(torch.sigmoid(logits), size=(40, 40), mode="bilinear")[0, 0] > model.hparams.threshold
    written = np.asarray(Image.open(tmp_path / "new" / "masks" / "test_0.png")) > 0
    assert np.array_equal(written, expected.numpy())
    seen = []
    segment = model.segment
    model.segment = lambda image, texts=None: seen.append(image) or segment(image, texts)
    assert np.array_equal(model.segment_image(film), written)
    assert torch.allclose(seen[0], zscore(resized[0])[None], atol=1e-5)  # the model's input, not only its mask
