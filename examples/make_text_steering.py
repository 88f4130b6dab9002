"""Writes examples/text_steering.ipynb (executed): ``python examples/make_text_steering.py``.

Set LANGSEG_NOTEBOOK_QUICK=1 for a seconds-long run (tiny text encoder, a few images; used by the tests).
"""
from pathlib import Path

from notebook_tools import write_executed

cells = [
    ("markdown", "# The mask follows the text\n\nLoad a trained HiMix checkpoint (`configs/himix.yaml`, the registered "
                 "`himix_small`; `langseg fit --config configs/himix.yaml` writes it to "
                 "`runs/himix/version_0/checkpoints/last.ckpt` on its first run; if it is missing, this notebook "
                 "trains `langseg.create_model(\"himix_small\")` for 8 epochs and saves it there) and segment "
                 "**one** test image with different texts: one zone, the other side, all lesions, the largest."),
    ("code", "import os\nfrom pathlib import Path\n\n"
             "import lightning as L\nimport matplotlib.pyplot as plt\nimport torch\n"
             "from lightning.pytorch.callbacks import ModelCheckpoint\n\n"
             "import langseg\nfrom langseg.data import SyntheticReferringDataModule\n"
             "from langseg.models import HiMix\n\n"
             "QUICK = os.environ.get(\"LANGSEG_NOTEBOOK_QUICK\") == \"1\"  # the test suite's seconds-long run\n"
             "ROOT = Path(os.environ.get(\"LANGSEG_NOTEBOOK_RUNS\", \"../runs\"))\n"
             "CKPT = ROOT / \"himix\" / \"version_0\" / \"checkpoints\" / \"last.ckpt\"  # where langseg fit puts it"),
    ("code", "data_args = dict(num_train=32, num_val=8, num_test=64, batch_size=8, num_workers=0) if QUICK else {}\n"
             "dm = SyntheticReferringDataModule(**data_args)\n"
             "if not CKPT.exists():\n"
             "    L.seed_everything(0)\n"
             "    quick = dict(text_encoder=\"tiny\", text_layers=(2, 3, 4), max_text_length=16, text_tokens=(16, 8, 4))\n"
             "    model = langseg.create_model(\"himix_small\", **(quick if QUICK else {}))  # = configs/himix.yaml\n"
             "    trainer = L.Trainer(max_epochs=1 if QUICK else 8, logger=False, enable_progress_bar=False,\n"
             "                        enable_model_summary=False,\n"
             "                        callbacks=[ModelCheckpoint(dirpath=CKPT.parent, save_last=True, save_top_k=0)])\n"
             "    trainer.fit(model, dm)\n"
             "model = HiMix.load_from_checkpoint(CKPT, map_location=\"cpu\").eval()\n"
             "type(model).__name__, model.hparams.text_encoder"),
    ("code", "dm.setup(\"test\")\nds = dm.dataset(\"test\")\n"
             "index = next(i for i in range(len(ds)) if \"three infected areas\" in ds[i][\"text\"])\n"
             "sample = ds[index]\nprint(\"ground-truth text:\", sample[\"text\"])\n"
             "texts = [\"One infected area in the upper right lung.\", \"One infected area in the upper left lung.\",\n"
             "         \"One infected area in the lower right lung.\", \"One infected area in the lower left lung.\",\n"
             "         \"Unilateral infection, right lung.\", \"Unilateral infection, left lung.\",\n"
             "         \"All lesions: bilateral pulmonary infection, three infected areas.\", \"The largest lesion.\"]\n"
             "with torch.no_grad():\n"
             "    image = sample[\"image\"].unsqueeze(0).expand(len(texts), -1, -1, -1)\n"
             "    masks = torch.sigmoid(model.segment(image, texts)[\"logits\"]) > 0.5\n"
             "fig, axes = plt.subplots(2, 5, figsize=(13, 6))\n"
             "axes[0, 0].imshow(sample[\"image\"][0], cmap=\"gray\")\naxes[0, 0].set_title(\"image\", fontsize=9)\n"
             "axes[1, 0].imshow(sample[\"mask\"][0], cmap=\"gray\")\n"
             "axes[1, 0].set_title(\"ground truth (all lesions)\", fontsize=9)\n"
             "for ax, text, mask in zip([a for row in axes for a in row[1:]], texts, masks):\n"
             "    ax.imshow(sample[\"image\"][0], cmap=\"gray\")\n"
             "    ax.imshow(mask[0], cmap=\"Reds\", alpha=0.5 * mask[0].float())\n"
             "    ax.set_title(text.replace(\", \", \",\\n\", 1), fontsize=8)\n"
             "for ax in axes.flat:\n    ax.axis(\"off\")\nfig.tight_layout()\n"
             "{text: int(mask.sum()) for text, mask in zip(texts, masks)}"),
    ("markdown", "Sides are the patient's: the patient's *left* lung is on the image's *right*. A zone without a lesion "
                 "should give an (almost) empty mask; \"all lesions\" should give every lesion. An image-only model gives "
                 "the same mask for every text. The last text, \"The largest lesion.\" without the location the training texts always give, gets an empty mask: the model learned the synthetic phrasings, not language in general."),
]
write_executed(cells, Path(__file__).with_name("text_steering.ipynb"))
