"""The ``langseg`` command: Lightning's fit/validate/test/predict, plus list-models, data, compare and convert."""
from __future__ import annotations

import argparse
import logging
import sys

from langseg.errors import LangsegError

LIGHTNING_COMMANDS = {
    "fit": "train a model (langseg fit --config configs/unet.yaml; every option: langseg fit --help)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split: metrics, swapped-text Dice, results files",
    "predict": "write masks and overlays for a split",
}
TOOLS = ("list-models", "data", "compare", "convert")


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


def tools_parser() -> argparse.ArgumentParser:
    """The parser of ``langseg --help`` and of the tools; fit/validate/test/predict are Lightning's own."""
    parser = argparse.ArgumentParser(prog="langseg", description="Language-guided medical image segmentation.")
    sub = parser.add_subparsers(dest="tool", required=True, metavar="COMMAND")
    for name, text in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
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
    cmp.add_argument("--output", default="results/compare", help="folder for comparison.{md,json,png} and the runs")
    cmp.add_argument("overrides", nargs=argparse.REMAINDER,
                     help="after --: CLI arguments applied to every config, e.g. -- --trainer.max_epochs 2")
    cv = sub.add_parser("convert", help="an official GuideDecoder/HiMix checkpoint as a langseg checkpoint")
    cv.add_argument("--from", dest="method", choices=["guidedecoder", "himix"], required=True, help="official code")
    cv.add_argument("checkpoint", help="the official checkpoint (.ckpt of the official Lightning wrapper)")
    cv.add_argument("--config", required=True, help="the langseg config whose network receives the weights")
    cv.add_argument("--output", required=True, help="the langseg checkpoint to write (for --ckpt_path)")
    cv.add_argument("overrides", nargs="*", help="after --: options of the config's model, e.g. -- "
                    "--model.text_encoder /path/to/BiomedVLP-CXR-BERT-specialized")
    return parser


def _run_tool(argv: list[str]) -> None:
    extra: list[str] = []
    if argv[0] == "convert" and "--" in argv:  # config overrides for the network that receives the weights
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    opts = tools_parser().parse_args(argv)
    if opts.tool == "list-models":
        from langseg.registry import list_models

        sys.stdout.write("\n".join(list_models(opts.pattern)) + "\n")
    elif opts.tool == "data":
        from langseg.data.lvit import convert_lvit

        counts = convert_lvit(opts.src, opts.dst, copy=opts.copy)
        sys.stdout.write(f"wrote {opts.dst}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "\n")
    elif opts.tool == "convert":
        from langseg.convert import convert_command

        out = convert_command(opts.method, opts.checkpoint, opts.config, opts.output, [*opts.overrides, *extra])
        sys.stdout.write(f"wrote {out}: the official {opts.method} weights of {opts.checkpoint}\n")
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
    try:
        if not argv or argv[0] in ("-h", "--help") or argv[0] in TOOLS:
            _run_tool(argv or ["--help"])
        else:
            from langseg.lightning_cli import build_cli

            build_cli(args)  # None: Lightning reads sys.argv itself
    except Exception as err:
        cause = _find_langseg_error(err)
        if cause is None:
            raise
        sys.stderr.write(f"langseg: error: {_one_line(cause)}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
