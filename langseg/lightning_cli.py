"""``LangsegCLI``: Lightning's CLI over every langseg model and datamodule, with the standard callbacks and
every output under the run's directory."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from langseg.callbacks import FitSummary, PredictionWriter, TestReport
from langseg.data.datamodules import SegmentationDataModule
from langseg.errors import ConfigError
from langseg.models.base import LanguageGuidedSegmenter

TRAINER_DEFAULTS = {"accelerator": "auto", "devices": 1, "log_every_n_steps": 10}
CHECKPOINT_DEFAULTS = {"checkpoint.monitor": "val/dice", "checkpoint.mode": "max", "checkpoint.save_last": True}


class LangsegCLI(LightningCLI):
    """LightningCLI in subclass mode; ``data.in_channels`` feeds ``model.in_channels``.

    Registered once here, for every config: a ``ModelCheckpoint`` on the best ``val/dice`` plus the last
    epoch (``--checkpoint.*``), ``FitSummary``, ``TestReport`` (``--test_report.*``) and ``PredictionWriter``
    (``--prediction_writer.*``). Unless a config names a logger, a ``CSVLogger`` writes to
    ``<trainer.default_root_dir>/version_<n>/``, and checkpoints, the saved config, test results and
    predictions all go there: one ``--trainer.default_root_dir`` moves everything, and runs never overwrite
    each other.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.in_channels", "model.init_args.in_channels", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(FitSummary, "fit_summary")
        parser.add_lightning_class_args(TestReport, "test_report")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")

    def _parse_ckpt_path(self) -> None:
        """Refuses, before Lightning reads the checkpoint's hyper-parameters into the config (which would
        silently swap the model), a ``--ckpt_path`` that holds another model than the config builds."""
        config = self.config.get(self.config.get("subcommand") or "", None)
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if ckpt_path and Path(ckpt_path).is_file():
            saved = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True).get("langseg_model")
            wanted = str(config.model.class_path).rsplit(".", 1)[-1] if config.get("model") else None
            if saved is not None and wanted is not None and saved != wanted:
                raise ConfigError(f"--ckpt_path {ckpt_path} holds a {saved} model, but the config builds {wanted}; "
                                  f"pass a checkpoint of the same model (or the config it was trained with)")
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.logger is None or trainer.logger is True:
            trainer.logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                                       init_args=Namespace(save_dir=trainer.default_root_dir or ".", name=""))


def build_cli(args: list[str] | None = None, run: bool = True) -> LangsegCLI:
    """The Lightning CLI over every ``LanguageGuidedSegmenter`` and ``SegmentationDataModule`` subclass."""
    kwargs: dict[str, Any] = {"save_config_kwargs": {"overwrite": True}} if run else {"save_config_callback": None}
    return LangsegCLI(LanguageGuidedSegmenter, SegmentationDataModule, subclass_mode_model=True,
                      subclass_mode_data=True, auto_configure_optimizers=False, trainer_defaults=TRAINER_DEFAULTS,
                      args=args, run=run, **kwargs)
