"""``LangsegCLI``: Lightning's CLI over every langseg model and datamodule, with the standard callbacks,
every output under the run's own directory, atomic checkpoints and one-line errors."""
from __future__ import annotations

import difflib
import inspect
import logging
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from langseg.callbacks import FitSummary, PredictionWriter, RunCheckpoint, TestReport
from langseg.data.datamodules import SegmentationDataModule
from langseg.errors import ConfigError
from langseg.files import atomic_torch_save
from langseg.inference import read_checkpoint
from langseg.models.base import LanguageGuidedSegmenter

TRAINER_DEFAULTS = {"accelerator": "auto", "devices": 1, "log_every_n_steps": 10,
                    "enable_model_summary": False}  # FitSummary prints the parameter counts (Lightning's shows FLOPs: 0)
CHECKPOINT_DEFAULTS = {"checkpoint.monitor": "val/dice", "checkpoint.mode": "max", "checkpoint.save_last": True}
EVALUATION_OPTIONS = ("threshold", "text_encoder")  # model options a checkpoint's user may change after training
OUTPUT_OPTIONS = ("trainer.default_root_dir", "test_report.output_dir", "prediction_writer.output_dir")


class _DropAdvertisement(logging.Filter):
    """Lightning logs a tip to install a cloud-logging product at every run: not about the user's run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip: For seamless cloud logging and experiment tracking")


for _name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # whichever holds Lightning's stderr handler
    for _handler in logging.getLogger(_name).handlers:
        _handler.addFilter(_DropAdvertisement())
# torch 2.14 deprecates a pytree type check that Lightning 2.6 still calls on every batch: nothing the user can change
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                        module=r"lightning\.pytorch\.utilities\._pytree")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its path and renames it: a crash or a full disk
    leaves the previous checkpoint or none, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote filesystems: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


class RunLogger(CSVLogger):
    """``CSVLogger`` whose ``version_<n>`` folder is claimed with ``mkdir``: two runs started at once in the
    same ``default_root_dir`` get different folders (and so never share checkpoints)."""

    def _get_next_version(self) -> int:
        version = super()._get_next_version()
        if rank_zero_only.rank != 0:  # other DDP processes read the folder from rank 0 (trainer.log_dir)
            return version
        root = Path(self.root_dir)
        self._created = [p for p in (root, *root.parents) if not p.exists()]  # what remove_if_empty may take back
        root.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                (root / f"version_{version}").mkdir()
                self._created.insert(0, root / f"version_{version}")
                return version
            except FileExistsError:
                version += 1

    def remove_if_empty(self) -> None:
        """Removes the folders this logger created (its ``version_<n>`` and the missing parents of its root), as
        long as no file was written in them: a run refused before its first output leaves nothing behind."""
        for folder in getattr(self, "_created", []):  # innermost first
            if folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
                shutil.rmtree(folder)


def check_output_dir(option: str, folder: str | Path) -> None:
    """Checks that ``folder`` (or, while it does not exist, its nearest existing parent) is a folder a file can be
    written in, or a ConfigError naming the option; creates nothing, so a run refused later leaves no folder."""
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        what = "is not a folder" if isinstance(err, (FileExistsError, NotADirectoryError)) else "is not writable"
        raise ConfigError(f"--{option} {folder}: {what} ({err.strerror or err}); expected a folder "
                          f"langseg can write its outputs to") from err


def explicit_model_options(argv: list[str]) -> set[str]:
    """Names of the model's init arguments given on the command line (``--model.init_args.x``, ``--model.x``)."""
    names = set()
    for token in argv:
        if token.startswith("--model."):
            key = token[len("--model."):].split("=", 1)[0]
            key = key.removeprefix("init_args.").removeprefix("dict_kwargs.")
            names.add(key.split(".", 1)[0])
    return names


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and Namespaces as dicts, for comparing a parsed option with a saved one."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


class LangsegArgumentParser(LightningArgumentParser):
    """Lightning's parser, reporting a bad option as one ``langseg: error:`` line (no usage dump)."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error:
            return super().error(message, ex)
        sys.stderr.write(f"langseg: error: {one_line_parser_error(message, self)}\n")
        self.exit(2)


def _option_names(parser: Any) -> list[str]:
    names = list(getattr(parser, "_option_string_actions", {}))
    for action in getattr(parser, "_actions", []):
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            names += _option_names(sub)
    return names


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def _init_options(class_path: str) -> list[str]:
    """The init arguments of the class at ``class_path`` (and of its bases, when it forwards ``**kwargs``)."""
    from jsonargparse._util import import_object

    try:
        cls = import_object(class_path)
    except Exception:  # noqa: BLE001 - only used for a suggestion
        return []
    names: list[str] = []
    for klass in getattr(cls, "__mro__", (cls,)):
        params = inspect.signature(klass.__init__).parameters.values() if "__init__" in vars(klass) else []
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if "__init__" in vars(klass) and not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def one_line_parser_error(message: str, parser: Any) -> str:
    """jsonargparse's multi-line message reduced to the key, what was wrong, and the nearest valid names."""
    from langseg.registry import list_models

    lines = [ln.strip().lstrip("- ").strip() for ln in message.strip().splitlines()]
    given = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Given value:")), "")
    key = re.match(r'Parser key "([^"]+)"', lines[0])
    key = key.group(1) if key else ""
    if key == "model" and given and "." not in given and "(" not in given:
        return f"--model {given}: no such model; registered models: {', '.join(list_models())} (or a class name)"
    if key == "data" and given and "." not in given and "(" not in given:
        names = sorted(c.__name__ for c in _subclasses(SegmentationDataModule))
        return f"--data {given}: no such data module; expected one of {', '.join(names)} (or a YAML file)"
    problem = re.search(r"Problem with given class_path '([\w.]+)':", message)
    if problem:
        cls = problem.group(1)
        unknown = re.search(r"Option '([\w.]+)' is not accepted", message)
        if unknown:
            close = difflib.get_close_matches(unknown.group(1), _init_options(cls), 3)
            return (f"--{key}.init_args.{unknown.group(1)}: {cls.rsplit('.', 1)[-1]} has no such option"
                    + (f"; did you mean {', '.join(close)}?" if close else ""))
        inner = re.search(r'Parser key "([^"]+)":\s*(.*?)(?:\n\s*- Expected a <class \'NoneType\'>|\n\s*Given value|$)',
                          message[problem.end():], re.S)
        if inner:
            return f"--{key}.init_args.{inner.group(1)}: {' '.join(inner.group(2).split())}"
    noise = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
             "Expected a <class 'NoneType'>", "Expected a path but")
    kept = [ln for ln in lines[1 if key else 0:] if ln and not ln.startswith(noise)]
    text = " ".join(kept) or lines[0]
    if "unrecognized arguments:" in text:
        unknown = [t for t in text.split("unrecognized arguments:", 1)[1].split() if t.startswith("-")]
        close = [m for u in unknown for m in difflib.get_close_matches(u.split("=")[0], _option_names(parser), 1)]
        return (f"unrecognized option(s) {' '.join(unknown) or text}"
                + (f"; did you mean {', '.join(close)}?" if close else ""))
    if key and lines[0] != f'Parser key "{key}":':
        text = lines[0].split(":", 1)[1].strip() + (" " + text if kept else "")
    if text.startswith("the following arguments are required:") and ".model" in text:
        text += " (pass a config, e.g. --config configs/unet.yaml, or --model NAME and --data CLASS_OR_YAML)"
    if given and "Got value" not in text:
        text += f"; got {given!r}"
    return f"--{key}: {text}" if key else text


class LangsegCLI(LightningCLI):
    """LightningCLI in subclass mode; ``data.in_channels`` feeds ``model.in_channels``.

    Registered once here, for every config: a ``RunCheckpoint`` on the best ``val/dice`` plus the latest
    weights as ``last.ckpt`` (``--checkpoint.*``), ``FitSummary``, ``TestReport`` (``--test_report.*``) and ``PredictionWriter``
    (``--prediction_writer.*``). Unless a config names a logger, a ``RunLogger`` (CSV) writes to
    ``<trainer.default_root_dir>/version_<n>/``, and checkpoints, the saved config, test results and
    predictions all go there: one ``--trainer.default_root_dir`` moves everything, and runs never overwrite
    each other. Checkpoints are written atomically.

    ``validate``/``test``/``predict`` need ``--ckpt_path`` (or ``--untrained true`` for a randomly initialised
    model); the checkpoint must hold the model the config builds, and only ``EVALUATION_OPTIONS`` may differ
    from its hyper-parameters.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        argv = kwargs.get("args")
        self._argv = [str(a) for a in argv] if isinstance(argv, (list, tuple)) else sys.argv[1:]
        super().__init__(*args, parser_class=LangsegArgumentParser, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.in_channels", "model.init_args.in_channels", apply_on="instantiate")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(FitSummary, "fit_summary")
        parser.add_lightning_class_args(TestReport, "test_report")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand != "fit":
            parser.add_argument("--untrained", type=bool, default=False,
                                help="evaluate the randomly initialised model (no --ckpt_path), e.g. for a baseline")
        return parser

    def _parse_ckpt_path(self) -> None:
        """Checks ``--ckpt_path`` and reads its hyper-parameters into the config (as Lightning does), refusing
        a missing, damaged or other model's checkpoint and command-line model options it would override."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path in ("last", "best", "hpc", "registry"):
            raise ConfigError(f"--ckpt_path {ckpt_path}: each run writes to its own folder, so a new run has no "
                              f"'{ckpt_path}' checkpoint; pass the file, e.g. <run>/checkpoints/last.ckpt")
        if not ckpt_path:
            if subcommand != "fit" and not config.get("untrained"):
                raise ConfigError(f"langseg {subcommand} needs --ckpt_path (a checkpoint written by langseg fit, "
                                  f"e.g. <run>/checkpoints/last.ckpt); pass --untrained true to evaluate a randomly "
                                  f"initialised model on purpose")
            return
        ckpt = read_checkpoint(ckpt_path)
        saved = ckpt.get("langseg_model")
        wanted = str(config.model.class_path).rsplit(".", 1)[-1] if config.get("model") else None
        if saved is not None and wanted is not None and saved != wanted:
            raise ConfigError(f"--ckpt_path {ckpt_path} holds a {saved} model, but the config builds {wanted}; "
                              f"pass a checkpoint of the same model (or the config it was trained with)")
        hparams = dict(ckpt.get("hyper_parameters", {}))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        init_args = config.model.get("init_args") or Namespace()
        kept = {}
        for name in sorted(explicit_model_options(self._argv)):
            if name in EVALUATION_OPTIONS:
                kept[name] = init_args.get(name)
            elif name in hparams and _plain(init_args.get(name)) != _plain(hparams[name]):
                raise ConfigError(f"--model.init_args.{name} {init_args.get(name)!r}: the model's options come from "
                                  f"--ckpt_path {ckpt_path} ({name}={hparams[name]!r}); only "
                                  f"{', '.join(EVALUATION_OPTIONS)} can be changed after training")
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        for name, value in kept.items():
            self.config[subcommand].model.init_args[name] = value

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        for option in OUTPUT_OPTIONS:
            folder = config.get(option)
            if folder:
                check_output_dir(option, folder)
        trainer = config.trainer
        if trainer.logger is None or trainer.logger is True:
            trainer.logger = Namespace(class_path="langseg.lightning_cli.RunLogger",
                                       init_args=Namespace(save_dir=trainer.default_root_dir or ".", name=""))

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Exception:
            if isinstance(self.trainer.logger, RunLogger):
                self.trainer.logger.remove_if_empty()
            raise

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def build_cli(args: list[str] | None = None, run: bool = True) -> LangsegCLI:
    """The Lightning CLI over every ``LanguageGuidedSegmenter`` and ``SegmentationDataModule`` subclass."""
    kwargs: dict[str, Any] = {"save_config_kwargs": {"overwrite": True}} if run else {"save_config_callback": None}
    # ``args`` replace the command line, which is therefore hidden from LightningCLI: given both (``langseg compare``,
    # ``langseg convert``), it warns that the command line is ignored.
    saved = list(sys.argv)
    if args is not None:
        sys.argv[1:] = []
    try:
        return LangsegCLI(LanguageGuidedSegmenter, SegmentationDataModule, subclass_mode_model=True,
                          subclass_mode_data=True, auto_configure_optimizers=False, trainer_defaults=TRAINER_DEFAULTS,
                          args=args, run=run, **kwargs)
    finally:
        sys.argv[:] = saved
