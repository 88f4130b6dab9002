"""The ``langseg`` command: Lightning's fit/validate/test/predict, plus list-models, data, compare, convert and
demo."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from langseg.errors import ConfigError, LangsegError

LIGHTNING_COMMANDS = {
    "fit": "train a model (langseg fit --config configs/unet.yaml; every option: langseg fit --help)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split: metrics, swapped-text Dice, results files",
    "predict": "write masks and overlays for a split, or for new images: "
               "langseg predict --ckpt_path m.ckpt --image film.png --text '...'",
}
TOOLS = ("list-models", "data", "compare", "convert", "demo")


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("langseg")
    except PackageNotFoundError:
        return "(not installed)"


class ToolsParser(argparse.ArgumentParser):
    """argparse, reporting a bad command or option as one ``langseg: error:`` line (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"langseg: error: {message} (see: {self.prog} --help)\n")
        sys.exit(2)


def _boolean(value: str) -> bool:
    """``true``/``false`` (also yes/no, 1/0) as a bool, for options written ``--share false``."""
    answers = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if value.lower() not in answers:
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return answers[value.lower()]


def tools_parser() -> argparse.ArgumentParser:
    """The parser of ``langseg --help`` and of the tools; fit/validate/test/predict are Lightning's own."""
    parser = ToolsParser(prog="langseg", description="Language-guided medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"langseg {_version()}")
    sub = parser.add_subparsers(dest="tool", required=True, metavar="COMMAND", parser_class=ToolsParser)
    for name, text in LIGHTNING_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    lm = sub.add_parser("list-models", help="registered model names, what each is and its paper")
    lm.add_argument("pattern", nargs="?", default="*")
    lm.add_argument("--names", action="store_true", help="names only, one per line")
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="action", required=True,
                                                                    parser_class=ToolsParser)
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
    cv = sub.add_parser("convert", help="an official GuideDecoder/HiMix/RecLMIS checkpoint as a langseg checkpoint")
    cv.add_argument("--from", dest="method", choices=["guidedecoder", "himix", "reclmis"], required=True,
                    help="official code")
    cv.add_argument("checkpoint", help="the official checkpoint (GuideDecoder/HiMix: the official Lightning "
                    "wrapper's .ckpt; RecLMIS: best_model-RecLMIS.pth.tar)")
    cv.add_argument("--config", required=True, help="the langseg config whose network receives the weights")
    cv.add_argument("--output", required=True, help="the langseg checkpoint to write (for --ckpt_path)")
    cv.add_argument("overrides", nargs="*", help="after --: options of the config's model, e.g. -- "
                    "--model.text_encoder /path/to/BiomedVLP-CXR-BERT-specialized")
    demo = sub.add_parser("demo", help="a local web page: pick or upload an image, type texts, see the masks "
                          "(needs the demo extra: pip install -e \".[demo]\")")
    demo.add_argument("--ckpt_path", help="a checkpoint written by langseg fit (default: the shipped demo model, "
                      "LSMS trained on the embedded synthetic films)")
    demo.add_argument("--port", type=int, help="local port (default: 7860, or the next free one)")
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    demo.add_argument("--share", type=_boolean, default=False, metavar="{true,false}",
                      help="also serve through a temporary public gradio.live link (default: false)")
    return parser


def predict_images_parser() -> argparse.ArgumentParser:
    """``langseg predict --image ...``: new images (no masks, no config), with a trained checkpoint."""
    parser = ToolsParser(prog="langseg predict", description="Segment new images with a typed text (masks are not "
                         "needed; without --image, predict runs Lightning on a data split: langseg predict --help).")
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by langseg fit")
    parser.add_argument("--image", nargs="+", required=True, help="image files or folders of images")
    parser.add_argument("--text", nargs="+", default=[], help="one text for every image, or one per image")
    parser.add_argument("--output", default="predictions", help="folder for masks/ and overlays/")
    parser.add_argument("--no_overlay", action="store_true", help="write the masks only")
    return parser


def _predict_images(argv: list[str]) -> None:
    opts = predict_images_parser().parse_args(argv)
    from langseg.inference import image_files, load, predict_images

    image_files(opts.image)  # a missing image is refused before the model loads
    model = load(opts.ckpt_path)
    if model.use_text and not opts.text:
        raise ConfigError(f"{type(model).__name__} segments what a text describes: pass --text '...'")
    written = predict_images(model, opts.image, opts.text or [""], opts.output, overlay=not opts.no_overlay)
    sys.stdout.write(f"{len(written)} mask(s) written to {Path(opts.output) / 'masks'}"
                     + (f", overlays to {Path(opts.output) / 'overlays'}\n" if not opts.no_overlay else "\n"))


def _run_tool(argv: list[str]) -> None:
    extra: list[str] = []
    if argv[0] == "convert" and "--" in argv:  # config overrides for the network that receives the weights
        argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    opts = tools_parser().parse_args(argv)
    if opts.tool == "list-models":
        from langseg.registry import list_models

        names = list_models(opts.pattern)
        if not names:
            raise ConfigError(f"no registered model matches {opts.pattern!r}; registered: {', '.join(list_models())}")
        if opts.names:
            sys.stdout.write("\n".join(names) + "\n")
            return
        from langseg.registry import model_info

        width = max(len(n) for n in names)
        shown: set[str] = set()
        for name in names:
            description, paper = model_info(name)
            sys.stdout.write(f"{name:<{width}}  {description}\n")
            if paper and paper not in shown:  # once per family
                sys.stdout.write(f"{'':<{width}}  paper: {paper}\n")
                shown.add(paper)
    elif opts.tool == "data":
        from langseg.data.lvit import convert_lvit

        counts = convert_lvit(opts.src, opts.dst, copy=opts.copy)
        sys.stdout.write(f"wrote {opts.dst}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "\n")
    elif opts.tool == "demo":
        from langseg.demo import serve

        serve(opts.ckpt_path, port=opts.port, share=opts.share, host=opts.host)
    elif opts.tool == "convert":
        from langseg.convert import convert_command

        out = convert_command(opts.method, opts.checkpoint, opts.config, opts.output, [*opts.overrides, *extra])
        sys.stdout.write(f"wrote {out}: the official {opts.method} weights of {opts.checkpoint}\n")
    else:
        from langseg.compare import compare

        for config in [*opts.configs, *([opts.data] if opts.data else [])]:
            check_yaml(Path(config))
        extra = [a for a in opts.overrides if a != "--"]
        if opts.data:
            extra = ["--data", opts.data, *extra]
        rows = compare(opts.configs, opts.output, extra)
        sys.stdout.write(f"{len(rows)} configs compared: {opts.output}/comparison.md\n")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so captured or redirected output receives it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging() -> None:
    """langseg's own messages (run folders, summaries) as plain lines on stderr; Lightning keeps its own handler
    (configuring the root logger would print each Lightning message twice)."""
    logger = logging.getLogger("langseg")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def check_yaml(path: Path, _seen: set[Path] | None = None) -> None:
    """A ConfigError naming ``path`` (and line) when it, or a YAML file it names, is missing or not valid YAML;
    jsonargparse would report a syntax error in ``<unicode string>``."""
    seen = set() if _seen is None else _seen
    if path.resolve() in seen:
        return
    seen.add(path.resolve())
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: YAML syntax error{where}: {getattr(err, 'problem', None) or err}") from err
    if doc is not None and not isinstance(doc, dict):
        raise ConfigError(f"{path}: holds a {type(doc).__name__}; expected options as 'key: value' lines")
    stack: list[Any] = [doc]
    while stack:  # nested config files (e.g. ``data: data/synthetic.yaml``) resolve against this file's folder
        value = stack.pop()
        if isinstance(value, dict):
            stack += value.values()
        elif isinstance(value, list):
            stack += value
        elif isinstance(value, str) and value.endswith((".yaml", ".yml")) and (path.parent / value).is_file():
            check_yaml(path.parent / value, seen)


def prepare_lightning_args(argv: list[str]) -> list[str]:
    """Checks the YAML files named on the command line, and turns ``--model <registered name>`` into its
    class and defaults (e.g. ``--model lsms_small``)."""
    out, i = [], 0
    while i < len(argv):
        option, joined, value = argv[i].partition("=")
        step = 1 if joined else 2
        if not joined:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if option in ("-c", "--config", "--data", "--model", "--trainer") and value.endswith((".yaml", ".yml")):
            check_yaml(Path(value))
        if option == "--model" and value and not value.startswith(("-", "{")) and "." not in value:
            import langseg.models  # noqa: F401 - registers the models
            from langseg.registry import list_models, model_config

            if value in list_models():
                out.append(f"--model={json.dumps(model_config(value))}")
                i += step
                continue
        out.append(argv[i])
        i += 1
    return out


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``langseg`` console script."""
    argv = sys.argv[1:] if args is None else list(args)
    configure_logging()
    try:
        if argv[:1] == ["predict"] and any(t == "--image" or t.startswith("--image=") for t in argv):
            _predict_images(argv[1:])
        elif not argv or argv[0] not in LIGHTNING_COMMANDS:
            _run_tool(argv or ["--help"])
        else:
            from langseg.lightning_cli import build_cli

            prepared = prepare_lightning_args(argv)
            saved = list(sys.argv)
            sys.argv[1:] = prepared  # Lightning reads sys.argv (and warns when given args beside another one)
            try:
                build_cli(None)
            finally:
                sys.argv[:] = saved
    except BrokenPipeError:  # e.g. `langseg list-models | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as err:
        cause = _find_langseg_error(err)
        if cause is None:
            raise
        sys.stderr.write(f"langseg: error: {_one_line(cause)}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
