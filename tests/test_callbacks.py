"""Prediction writer and test report."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

from langseg.callbacks import PredictionWriter, TestReport, with_columns
from langseg.data import ImageTextMaskDataModule
from langseg.models import UNetBaseline


def _model() -> UNetBaseline:
    torch.manual_seed(0)
    return UNetBaseline(decoder_channels=(16, 8, 8, 8, 8), encoder_depth=5)


def _trainer(callback) -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])


def test_predict_writes_masks_at_original_size_and_overlays(tmp_path, generic_folder):
    dm = ImageTextMaskDataModule(str(generic_folder), image_size=32, batch_size=3, num_workers=0)
    out = tmp_path / "pred"
    for _ in range(2):  # a second run overwrites cleanly
        _trainer(PredictionWriter(str(out))).predict(_model(), dm, return_predictions=False)
    masks = sorted((out / "masks").iterdir())
    assert [m.name for m in masks] == [f"test_{i}.png" for i in range(4)]
    with Image.open(masks[0]) as mask:
        assert mask.size == (40, 40) and set(np.unique(np.asarray(mask))) <= {0, 255}
    with Image.open(out / "overlays" / "test_0.png") as overlay:
        assert overlay.width == 40 * 7 and overlay.height > 40 * 7  # enlarged to >= 256 px, caption band below
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_test_report_holds_every_metric_and_matches_the_logged_ones(tmp_path, generic_folder):
    dm = ImageTextMaskDataModule(str(generic_folder), image_size=32, batch_size=3, num_workers=0)
    (logged,) = _trainer(TestReport(str(tmp_path / "res"))).test(_model(), dm, verbose=False)
    summary = json.loads((tmp_path / "res" / "test_summary.json").read_text())
    for key in ("dice", "miou", "dice_pooled", "miou_pooled", "hd95", "dice_swapped_text"):
        assert key in summary
        if key != "hd95":
            assert abs(summary[key] - logged[f"test/{key}"]) < 1e-5, key
    with (tmp_path / "res" / "test_per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary["images"] == 4
    assert {"id", "text", "dice", "iou", "hd95", "dice_swapped_text"} <= set(rows[0])


def test_default_output_folders_are_inside_the_run_folder(tmp_path, generic_folder):
    from lightning.pytorch.loggers import CSVLogger

    dm = ImageTextMaskDataModule(str(generic_folder), image_size=32, batch_size=4, num_workers=0)
    trainer = L.Trainer(logger=CSVLogger(str(tmp_path), name=""), enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[TestReport(), PredictionWriter(overlay=False)])
    trainer.test(_model(), dm, verbose=False)
    trainer.predict(_model(), dm, return_predictions=False)
    run = Path(trainer.log_dir)
    assert run.parent == tmp_path and run.name.startswith("version_")
    assert (run / "results" / "test_summary.json").is_file()
    assert sorted(p.name for p in (run / "predictions" / "masks").iterdir()) == [f"test_{i}.png" for i in range(4)]


def test_channels_last_option_converts_model_and_images(generic_folder):
    from langseg.callbacks import PerformanceOptions

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch["image"].is_contiguous(memory_format=torch.channels_last))

    model = _model()
    dm = ImageTextMaskDataModule(str(generic_folder), image_size=32, batch_size=4, num_workers=0)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=1,
                        callbacks=[PerformanceOptions(channels_last=True), Probe()])
    trainer.fit(model, dm)
    conv = model.net.model.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and seen and all(seen)


def test_overlay_outlines_prediction_and_ground_truth_and_keeps_small_captions_readable():
    import numpy as np
    from PIL import Image

    from langseg.callbacks import overlay_image

    base = Image.new("RGB", (32, 32), "gray")
    pred = np.zeros((32, 32), bool)
    pred[4:12, 4:12] = True
    truth = np.zeros((32, 32), bool)
    truth[18:28, 18:28] = True
    caption = "the larger consolidation in the lower left lung, near the diaphragm"
    picture = np.asarray(overlay_image(base, pred, caption, truth))
    assert picture.shape[1] == 256 and picture.shape[0] > 256  # enlarged 8x, caption band below
    green = (picture[..., 0] == 0) & (picture[..., 1] == 220)
    yellow = (picture[..., 0] == 255) & (picture[..., 1] == 230)
    assert green[18 * 8:28 * 8, 18 * 8:28 * 8].any() and not green[:16 * 8, :16 * 8].any()
    assert yellow[4 * 8:12 * 8, 4 * 8:12 * 8].any() and not yellow[16 * 8:256, 16 * 8:].any()
    assert not np.asarray(overlay_image(base, pred, caption))[..., 1].__eq__(220).any()  # no truth: no green


def test_overlay_pixels_are_the_tinted_image_with_eroded_contours():
    """Every pixel of an overlay, against a reference drawn in floats with ``scipy.ndimage`` erosions: the image mixed
    55 : 45 with red where predicted, yellow on the prediction's border, green on the truth's, borders touching the
    image's edge included (noisy masks, an RGB photo, and a small image enlarged 3x so the borders are 3 px wide)."""
    from scipy import ndimage

    from langseg.callbacks import PREDICTION_TINT, overlay_image

    rng = np.random.default_rng(0)
    for size, scale in ((96, 3), (300, 1)):
        rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pred, truth = rng.random((2, size, size)) > 0.5
        pred[: size // 2] = False  # a large empty region and a noisy one
        picture = np.asarray(overlay_image(Image.fromarray(rgb), pred, "a caption", truth))
        big = [a.repeat(scale, 0).repeat(scale, 1) for a in (rgb, pred, truth)]
        want = big[0].copy()
        want[big[1]] = (0.55 * big[0][big[1]] + PREDICTION_TINT).astype(np.uint8)
        for mask, color in ((big[1], (255, 230, 0)), (big[2], (0, 220, 0))):
            want[mask & ~ndimage.binary_erosion(mask, iterations=scale)] = color
        assert picture.shape[:2] != want.shape[:2] and np.array_equal(picture[:size * scale], want)


def test_mask_compress_level_changes_the_file_not_the_pixels(tmp_path, generic_folder):
    dm = ImageTextMaskDataModule(str(generic_folder), image_size=32, batch_size=4, num_workers=0)
    for level in (1, 9):
        _trainer(PredictionWriter(str(tmp_path / str(level)), overlay=False, mask_compress_level=level)).predict(
            _model(), dm, return_predictions=False)
    for one in (tmp_path / "1" / "masks").iterdir():
        nine = tmp_path / "9" / "masks" / one.name
        assert one.read_bytes() != nine.read_bytes()
        assert np.array_equal(np.asarray(Image.open(one)), np.asarray(Image.open(nine)))


def test_last_checkpoint_holds_the_latest_weights_after_the_best_epoch(tmp_path, generic_folder):
    """The monitored score is best at epoch 0 and worse after: ``last.ckpt`` must still be epoch 2's."""
    from langseg.callbacks import RunCheckpoint

    class FallingScore(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            pl_module.log("val/score", -float(trainer.current_epoch))

    checkpoint = RunCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/score", mode="max", save_last=True)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[FallingScore(), checkpoint], limit_train_batches=1, limit_val_batches=1,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    dm = ImageTextMaskDataModule(str(generic_folder), image_size=32, batch_size=4, num_workers=0)
    model = _model()
    trainer.fit(model, dm)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    best = torch.load(checkpoint.best_model_path, weights_only=True)
    assert (best["epoch"], last["epoch"], last["global_step"]) == (0, 2, 3)
    assert all(torch.equal(last["state_dict"][k], v) for k, v in model.state_dict().items() if k in last["state_dict"])


def test_extra_columns_follow_the_report_fields_and_never_replace_one():
    row = with_columns({"id": "film_1", "dice": 0.5}, {"id": "P-17", "dice": "n/a", "finding": "small"})
    assert row == {"id": "film_1", "dice": 0.5, "csv_id": "P-17", "csv_dice": "n/a", "finding": "small"}
