"""The ``langseg`` command: Lightning's CLI (fit/validate/test/predict) over every registered model and datamodule."""
from __future__ import annotations

import logging
import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from langseg.data.datamodules import SegmentationDataModule
from langseg.errors import LangsegError
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import list_models


class LangsegCLI(LightningCLI):
    """LightningCLI in subclass mode; ``data.in_channels`` feeds ``model.in_channels``."""

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.link_arguments("data.in_channels", "model.init_args.in_channels", apply_on="instantiate")


def _one_line(err: BaseException) -> str:
    """The message of an error, without the worker traceback DataLoader wraps around it."""
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(err).__name__
    name = type(err).__name__
    return last.split(f"{name}: ", 1)[-1] if "Original Traceback" in str(err) else " ".join(lines)


def _find_langseg_error(err: BaseException) -> LangsegError | None:
    """The LangsegError behind ``err``, following causes (jsonargparse wraps errors raised in ``__init__``)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LangsegError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``langseg`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] in (["list-models"], ["list_models"]):
        sys.stdout.write("\n".join(list_models(argv[1] if len(argv) > 1 else "*")) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden.*")
    try:
        LangsegCLI(LanguageGuidedSegmenter, SegmentationDataModule, subclass_mode_model=True,
                   subclass_mode_data=True, args=args, save_config_kwargs={"overwrite": True})
    except Exception as err:
        cause = _find_langseg_error(err)
        if cause is None:
            raise
        sys.stderr.write(f"langseg: error: {_one_line(cause)}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
