"""Writes examples/quickstart.ipynb (executed: ``python examples/make_quickstart.py``)."""
from pathlib import Path

from notebook_tools import write_executed

cells = [
    ("markdown", "# langseg quickstart\n\nTrain the image-only U-Net baseline for a few steps on the embedded "
                 "synthetic referring-lesion data, then look at image, text, ground truth and prediction side by side. "
                 "No download; runs on a CPU in about a minute."),
    ("code", "import lightning as L\nimport matplotlib.pyplot as plt\nimport torch\n\nimport langseg\n"
             "from langseg.data import SyntheticReferringDataModule\n\nlangseg.list_models()"),
    ("markdown", "The synthetic images hold several lesions; the text says which ones are in the mask "
                 "(sides are the patient's: the patient's left is on the image's right)."),
    ("code", "L.seed_everything(0)\ndm = SyntheticReferringDataModule(num_train=256, num_val=64, num_test=64, "
             "batch_size=32, num_workers=0)\ndm.setup(\"fit\")\nsample = dm.dataset(\"train\")[0]\n"
             "print(sample[\"text\"], tuple(sample[\"image\"].shape))"),
    ("code", "model = langseg.create_model(\"unet_small\")  # the U-Net of configs/unet.yaml (decoder 128 .. 8)\n"
             "trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_model_summary=False,\n"
             "                    enable_progress_bar=False)\ntrainer.fit(model, dm)\n"
             "{k: round(float(v), 3) for k, v in trainer.callback_metrics.items() if k.startswith(\"val/\")}"),
    ("code", "dm.setup(\"test\")\nbatch = next(iter(dm.test_dataloader()))\nmodel.eval()\nwith torch.no_grad():\n"
             "    pred = model.predict_step(batch, 0)[\"mask\"]\n\nfig, axes = plt.subplots(3, 3, figsize=(9, 9.6))\n"
             "for row, i in enumerate(range(3)):\n"
             "    for ax, img, title in zip(axes[row], (batch[\"image\"][i, 0], batch[\"mask\"][i, 0], pred[i, 0]),\n"
             "                              (\"image\", \"ground truth\", \"prediction (image only)\")):\n"
             "        ax.imshow(img, cmap=\"gray\")\n        ax.set_title(title, fontsize=9)\n        ax.axis(\"off\")\n"
             "    axes[row, 0].text(0, -12, batch[\"text\"][i], fontsize=8, wrap=True)\nfig.tight_layout()"),
    ("markdown", "The baseline cannot read the text, so where the text names one lesion of several it "
                 "segments the wrong set. Text-guided methods (the other names in `langseg.list_models()`, or "
                 "the FiLM example in `docs/extending.md`) close that gap; `test/dice_swapped_text` "
                 "measures it."),
    ("code", "(result,) = trainer.test(model, dm, verbose=False)\n{k: round(v, 3) for k, v in result.items()}"),
]
write_executed(cells, Path(__file__).with_name("quickstart.ipynb"))
