"""The ``langseg`` command: Lightning's CLI (fit/validate/test/predict) over every registered model and datamodule."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

from lightning.pytorch.cli import LightningCLI

from langseg.data.datamodules import SegmentationDataModule
from langseg.errors import LangsegError
from langseg.models.base import LanguageGuidedSegmenter
from langseg.registry import list_models


TOOLS = ("list-models", "data", "compare")


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


def build_cli(args: list[str] | None = None, run: bool = True) -> LangsegCLI:
    """The Lightning CLI over every ``LanguageGuidedSegmenter`` and ``SegmentationDataModule`` subclass."""
    kwargs: dict[str, Any] = {"save_config_kwargs": {"overwrite": True}} if run else {"save_config_callback": None}
    return LangsegCLI(LanguageGuidedSegmenter, SegmentationDataModule, subclass_mode_model=True,
                      subclass_mode_data=True, args=args, run=run, **kwargs)


def _tools_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="langseg", description="langseg tools (fit/validate/test/predict "
                                     "are Lightning's: langseg fit --help)")
    sub = parser.add_subparsers(dest="tool", required=True)
    lm = sub.add_parser("list-models", help="registered model names")
    lm.add_argument("pattern", nargs="?", default="*")
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="action", required=True)
    conv = data.add_parser("convert", help="convert a dataset layout to the generic CSV format")
    conv.add_argument("--format", choices=["lvit"], required=True, help="source layout")
    conv.add_argument("src", help="source root (LViT: holds Train_Folder, Val_Folder, Test_Folder)")
    conv.add_argument("dst", help="destination folder for train.csv, val.csv, test.csv")
    conv.add_argument("--copy", action="store_true", help="copy images and masks instead of pointing at src")
    cmp = sub.add_parser("compare", help="fit and test several configs; write a Markdown table and a bar chart")
    cmp.add_argument("--configs", nargs="+", required=True)
    cmp.add_argument("--data", help="a data config (YAML) replacing every config's data section")
    cmp.add_argument("--output", default="results/compare", help="folder for comparison.{md,json,png}")
    cmp.add_argument("overrides", nargs=argparse.REMAINDER,
                     help="after --: CLI arguments applied to every config, e.g. -- --trainer.max_epochs 2")
    return parser


def _run_tool(argv: list[str]) -> None:
    opts = _tools_parser().parse_args(argv)
    if opts.tool == "list-models":
        sys.stdout.write("\n".join(list_models(opts.pattern)) + "\n")
    elif opts.tool == "data":
        from langseg.data.lvit import convert_lvit

        counts = convert_lvit(opts.src, opts.dst, copy=opts.copy)
        sys.stdout.write(f"wrote {opts.dst}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "\n")
    else:
        from langseg.compare import compare

        extra = [a for a in opts.overrides if a != "--"]
        if opts.data:
            extra = ["--data", opts.data, *extra]
        rows = compare(opts.configs, opts.output, extra)
        sys.stdout.write(f"{len(rows)} configs compared: {opts.output}/comparison.md\n")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``langseg`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden.*")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    try:
        if argv[:1] and argv[0] in TOOLS:
            _run_tool(argv)
        else:
            build_cli(args)
    except Exception as err:
        cause = _find_langseg_error(err)
        if cause is None:
            raise
        sys.stderr.write(f"langseg: error: {_one_line(cause)}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
