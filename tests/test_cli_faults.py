"""Bad input and injected faults through the ``langseg`` command: each ends in exactly one ``langseg: error:``
line naming the file, option or row (exit 2) with nothing half-written, or in a documented acceptance.

Most cases call ``langseg.cli.main(argv)`` in this process (what the console script calls, minus ~5 s of
imports per case); the cases that need a process of their own (resource limits, the console script's
own output) run ``langseg`` in a subprocess.
"""
from __future__ import annotations

import csv
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from langseg.cli import main
from tests.conftest import write_generic_folder
from tests.test_cli import LANGSEG, REPO, TINY

UNET = str(REPO / "configs" / "unet.yaml")


def run_main(*args: str, cwd: Path, capsys) -> tuple[int, str, str]:
    """``langseg <args>`` in this process, from ``cwd``: (exit status, stdout, stderr)."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    return code, out.out, out.err


def the_error(code: int, err: str) -> str:
    """The single ``langseg: error:`` line of a refused command (no traceback, no usage dump)."""
    assert code == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("langseg: error: ")]
    assert len(errors) == 1 and "Traceback" not in err and "usage:" not in err, err[-2000:]
    assert not any(ln.startswith(("  ", "tip:")) for ln in lines), err[-2000:]
    return errors[0]


def written_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def written_paths(root: Path) -> list[Path]:
    """Every file and folder under ``root``."""
    return sorted(root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder holding ``unet.ckpt``: the tiny U-Net of configs/unet.yaml after one short fit."""
    root = tmp_path_factory.mktemp("trained")
    code = subprocess.run([LANGSEG, "fit", "--config", UNET, *TINY, "--trainer.default_root_dir", "fit"], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr[-3000:]
    shutil.copy(root / "fit" / "version_0" / "checkpoints" / "last.ckpt", root / "unet.ckpt")
    return root


# --- configuration and parser errors --------------------------------------------------------------------

@pytest.mark.parametrize("case, files, args, expected", [
    ("yaml-syntax", {"bad.yaml": "model:\n  init_args: [\n"}, ["--config", "bad.yaml"],
     "bad.yaml: YAML syntax error at line 3, column 1"),
    ("nested-yaml-syntax", {"main.yaml": "data: data.yaml\n", "data.yaml": "init_args: {a: 1\n"},
     ["--config", "main.yaml"], "data.yaml: YAML syntax error at line 2"),
    ("config-missing", {}, ["--config", "nothere.yaml"], "nothere.yaml: config file not found"),
    ("config-not-a-mapping", {"list.yaml": "- 1\n- 2\n"}, ["--config", "list.yaml"],
     "list.yaml: holds a list; expected options"),
    ("unknown-model-name", {}, ["--config", UNET, "--model", "unet_smal"],
     "--model unet_smal: no such model; registered models: early_fusion"),
    ("unknown-model-option", {}, ["--config", UNET, "--model.init_args.threshol", "0.4"],
     "--model.init_args.threshol: UNetBaseline has no such option; did you mean threshold?"),
    ("model-option-of-wrong-type", {}, ["--config", UNET, "--model.init_args.threshold", "abc"],
     "--model.init_args.threshold: Expected a <class 'float'>. Got value: abc"),
    ("trainer-option-of-wrong-type", {}, ["--config", UNET, "--trainer.max_epochs", "x"],
     "--trainer.max_epochs: Expected a <class 'int'>; got 'x'"),
    ("unknown-trainer-option", {}, ["--config", UNET, "--trainer.max_epoches", "1"],
     "unrecognized option(s) --trainer.max_epoches"),
    ("unknown-data-class", {}, ["--config", UNET, "--data", "Nope"],
     "--data Nope: no such data module; expected one of ImageTextMaskDataModule"),
    ("model-class-missing", {}, ["--config", UNET, "--model", "langseg.models.NoSuchModel"], "NoSuchModel"),
    ("image-size-0", {}, ["--config", UNET, "--data.init_args.image_size", "0"], "data.image_size=0; expected an integer >= 1"),
    ("batch-size-0", {}, ["--config", UNET, "--data.init_args.batch_size", "0"], "data.batch_size=0; expected an integer >= 1"),
    ("num-workers-negative", {}, ["--config", UNET, "--data.init_args.num_workers", "-1"], "data.num_workers=-1"),
    ("threshold-out-of-range", {}, ["--config", UNET, "--model.init_args.threshold", "1.5"],
     "threshold=1.5; expected a probability strictly between 0 and 1"),
    ("data-root-missing", {}, ["--config", UNET, "--data", "langseg.data.ImageTextMaskDataModule", "--data.root",
                               "missing", "--trainer.max_steps", "1"], "data root 'missing' is not a folder"),
    ("text-encoder-missing", {}, ["--config", UNET, "--model", "tests.tiny_models.TextGate", "--model.text_encoder",
                                  "cxr-bert"], "cxr-bert' does not exist: pass"),
    ("text-required", {}, ["--config", UNET, "--model", "langseg.models.RecLMIS", "--model.use_text", "false"],
     "RecLMIS cannot run without text"),
    ("head-prior-out-of-range", {}, ["--config", str(REPO / "configs" / "early_fusion_unet.yaml"),
                                     "--model.init_args.head_prior", "1.5"],
     "head_prior is a foreground fraction in (0, 1), got 1.5"),
    ("synthetic-wording-unknown", {}, ["--config", UNET, "--data.init_args.wording", "free"],
     "--data.init_args.wording: Expected a typing.Literal['varied', 'canonical']. Got value: free"),
    ("root-dir-is-a-file", {"taken": "x"}, ["--config", UNET, "--trainer.default_root_dir", "taken/runs"],
     "--trainer.default_root_dir taken/runs: is not a folder"),
    ("prediction-dir-is-a-file", {"taken": "x"}, ["--config", UNET, "--prediction_writer.output_dir", "taken"],
     "--prediction_writer.output_dir taken: is not a folder"),
    ("report-dir-is-a-file", {"taken": "x"}, ["--config", UNET, "--test_report.output_dir", "taken"],
     "--test_report.output_dir taken: is not a folder"),
])
def test_bad_configuration_is_one_line_before_any_work(tmp_path, capsys, case, files, args, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    before = written_paths(tmp_path)
    line = the_error(*run_main("fit", *args[:2], *TINY, *args[2:], cwd=tmp_path, capsys=capsys)[::2])
    assert expected in line
    assert written_paths(tmp_path) == before  # no run folder (not even an empty one), no checkpoint, no saved config


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through file permissions: a folder where no one may create files
        target = Path("/sys/langseg-runs")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        target = tmp_path / "ro" / "runs"
    line = the_error(*run_main("fit", "--config", UNET, *TINY, "--trainer.default_root_dir", str(target),
                               cwd=tmp_path, capsys=capsys)[::2])
    assert f"--trainer.default_root_dir {target}: is not writable" in line
    assert not target.exists()


@pytest.mark.parametrize("argv, expected", [
    (["fot"], "invalid choice: 'fot' (choose from 'fit'"),
    (["list-models", "zzz*"], "no registered model matches 'zzz*'; registered: early_fusion"),
    (["compare", "--configs", "nothere.yaml"], "nothere.yaml: config file not found"),
    (["data", "convert", "--format", "xx", "a", "b"], "argument --format: invalid choice: 'xx'"),
    (["data", "convert", "--format", "lvit", "missing", "out"], "missing/Train_Folder/Train_text.xlsx: annotation "
                                                                  "spreadsheet not found"),
])
def test_bad_tool_command_is_one_line(tmp_path, capsys, argv, expected):
    assert expected in the_error(*run_main(*argv, cwd=tmp_path, capsys=capsys)[::2])
    assert written_files(tmp_path) == []


def test_a_registered_variant_name_is_a_model(tmp_path, capsys):
    code, out, err = run_main("fit", "--model", "lsms_small", "--data", "SyntheticReferringDataModule",
                              "--print_config", cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    assert "class_path: langseg.models.lsms.LSMS" in out and "nmf_rank: 8" in out and "lr: 0.004" in out


def test_fast_dev_run_trains_one_step_and_writes_no_run_folder_outside_the_root(tmp_path, capsys):
    """Lightning turns the logger off under ``fast_dev_run``: the run-folder callbacks fall back to the root."""
    code, out, err = run_main("fit", "--config", UNET, *TINY, "--trainer.fast_dev_run", "1",
                              "--trainer.default_root_dir", tmp_path / "runs", cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    assert "Traceback" not in err
    assert all(p.is_relative_to(tmp_path / "runs") for p in written_files(tmp_path))


def test_console_script_parser_error_is_one_line(tmp_path):
    run = subprocess.run([LANGSEG, "fit", "--config", UNET, "--model.init_args.bogus", "1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    line = the_error(run.returncode, run.stderr)
    assert "--model.init_args.bogus: UNetBaseline has no such option" in line


# --- which model is evaluated --------------------------------------------------------------------------

def test_evaluation_needs_a_checkpoint_unless_untrained_is_asked_for(tmp_path, capsys):
    for command in ("test", "predict", "validate"):
        line = the_error(*run_main(command, "--config", UNET, *TINY, cwd=tmp_path, capsys=capsys)[::2])
        assert f"langseg {command} needs --ckpt_path" in line and "--untrained true" in line
    assert written_files(tmp_path) == []
    code, out, err = run_main("test", "--config", UNET, *TINY, "--untrained", "true", cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    assert (tmp_path / "runs" / "unet" / "version_0" / "results" / "test_summary.json").is_file()


@pytest.mark.parametrize("case", ["last", "best", "missing", "folder", "truncated", "not-a-checkpoint",
                                  "no-weights"])
def test_bad_checkpoint_is_refused_by_name(trained, tmp_path, capsys, case):
    source = (trained / "unet.ckpt").read_bytes()
    path = {"last": "last", "best": "best", "missing": "nothere.ckpt", "folder": str(tmp_path)}.get(case, "x.ckpt")
    if case == "truncated":  # what a full disk left behind before checkpoints were written atomically
        (tmp_path / path).write_bytes(source[:65536])
    elif case == "not-a-checkpoint":
        (tmp_path / path).write_text("model: {}\n")
    elif case == "no-weights":
        torch.save({"epoch": 1}, tmp_path / path)
    expected = {"last": "--ckpt_path last: each run writes to its own folder", "best": "--ckpt_path best:",
                "missing": "--ckpt_path nothere.ckpt does not exist", "folder": f"--ckpt_path {tmp_path} is a folder",
                "truncated": "--ckpt_path x.ckpt: not a readable checkpoint", "not-a-checkpoint": "not a readable",
                "no-weights": "--ckpt_path x.ckpt: holds no model weights"}[case]
    before = written_files(tmp_path)
    for command in ("test", "fit"):  # fit: resuming from it
        line = the_error(*run_main(command, "--config", UNET, *TINY, "--ckpt_path", path, cwd=tmp_path,
                                   capsys=capsys)[::2])
        assert expected in line
    assert written_files(tmp_path) == before


def test_evaluation_options_apply_and_training_options_are_refused(trained, tmp_path, capsys):
    ckpt = str(trained / "unet.ckpt")

    def test_run(*extra: str) -> dict:
        code, _, err = run_main("test", "--config", UNET, *TINY, "--ckpt_path", ckpt, *extra,
                                "--test_report.output_dir", "report", cwd=tmp_path, capsys=capsys)
        assert code == 0, err[-2000:]
        return json.loads((tmp_path / "report" / "test_summary.json").read_text())

    default, strict = test_run(), test_run("--model.init_args.threshold", "0.999999")
    assert strict["dice_pooled"] != default["dice_pooled"]  # the command line's threshold is the one used
    line = the_error(*run_main("test", "--config", UNET, *TINY, "--ckpt_path", ckpt, "--model.init_args.dice_weight",
                               "2", cwd=tmp_path, capsys=capsys)[::2])
    assert "--model.init_args.dice_weight 2.0: the model's options come from --ckpt_path" in line
    assert "only threshold, text_encoder can be changed" in line


# --- the disk ------------------------------------------------------------------------------------------

def _limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_full_disk_during_fit_leaves_no_truncated_checkpoint(tmp_path):
    """A 1 MB file-size limit (``RLIMIT_FSIZE``, what a full disk does to a large write): the checkpoint
    cannot be written; the run stops with one line naming it, and no partial checkpoint is left."""
    run = subprocess.run([LANGSEG, "fit", "--config", UNET, *TINY], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, preexec_fn=_limit_file_size(1 << 20))
    line = the_error(run.returncode, run.stderr)
    assert "checkpoints/" in line and ".ckpt: cannot write (File too large); nothing was written" in line
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob(".*.ckpt"))


def test_prediction_folder_that_cannot_be_written_midway_is_one_line(trained, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "masks").write_text("a file where the masks folder goes")
    line = the_error(*run_main("predict", "--config", UNET, *TINY, "--ckpt_path", trained / "unet.ckpt",
                               "--prediction_writer.output_dir", "out", cwd=tmp_path, capsys=capsys)[::2])
    assert "out/masks/synthetic_2_00000.png: cannot write" in line
    assert written_files(tmp_path / "out") == [tmp_path / "out" / "masks"]


# --- data through the command line ---------------------------------------------------------------------

def _rewrite_csv(path: Path, edit) -> None:
    rows = list(csv.reader(path.open(encoding="utf-8")))
    edit(rows)
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)


def test_colliding_prediction_ids_are_made_unique(trained, tmp_path, capsys):
    data = write_generic_folder(tmp_path / "data", {"train": 2, "val": 2, "test": 3})
    shutil.copy(data / "images" / "test_0.png", data / "images" / "test_0_0.png")
    shutil.copy(data / "masks" / "test_0.png", data / "masks" / "test_0_0.png")

    def collide(rows):  # test_0.png with two texts (ids test_0_0, test_0_1) and a file named test_0_0.png
        rows[2] = ["images/test_0.png", "masks/test_0.png", rows[2][2]]
        rows[3] = ["images/test_0_0.png", "masks/test_0_0.png", rows[3][2]]

    _rewrite_csv(data / "test.csv", collide)
    code, _, err = run_main("predict", "--config", UNET, *TINY, "--ckpt_path", trained / "unet.ckpt", "--data",
                            "langseg.data.ImageTextMaskDataModule", "--data.root", data, "--data.image_size", "32",
                            "--prediction_writer.output_dir", "pred", cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in (tmp_path / "pred" / "masks").iterdir()) == [
        "test_0_0.png", "test_0_0_1.png", "test_0_1.png"]


@pytest.mark.parametrize("text, expected", [
    ("NaN", "text is 'NaN', a spreadsheet's mark for a missing value"),
    ("None", "text is 'None', a spreadsheet's mark"),
    ("\u200b\u200d", "column 'text' is empty (or only invisible characters)"),
])
def test_missing_value_texts_are_refused_with_the_row(tmp_path, capsys, text, expected):
    data = write_generic_folder(tmp_path / "data", {"train": 3, "val": 2, "test": 2})
    _rewrite_csv(data / "train.csv", lambda rows: rows[2].__setitem__(2, text))
    line = the_error(*run_main("fit", "--config", UNET, *TINY, "--data", "langseg.data.ImageTextMaskDataModule",
                               "--data.root", data, "--data.image_size", "32", cwd=tmp_path, capsys=capsys)[::2])
    assert f"{data / 'train.csv'} row 3: {expected}" in line


def test_excel_csv_with_a_bom_and_an_all_empty_test_split_through_the_cli(trained, tmp_path, capsys, caplog):
    data = write_generic_folder(tmp_path / "data", {"train": 2, "val": 2, "test": 2})
    text = (data / "test.csv").read_text(encoding="utf-8")
    (data / "test.csv").write_text("\ufeff" + text.replace("masks/test_1.png", "masks/test_0.png"),
                                   encoding="utf-8")  # Excel's "CSV UTF-8"
    from PIL import Image
    Image.new("L", (40, 40)).save(data / "masks" / "test_0.png")
    code, _, err = run_main("test", "--config", UNET, *TINY, "--ckpt_path", trained / "unet.ckpt", "--data",
                            "langseg.data.ImageTextMaskDataModule", "--data.root", data, "--data.image_size", "32",
                            cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    assert f"{data / 'test.csv'}: every mask of the 2 test images is empty" in caplog.text


# --- new images, without masks or a config ---------------------------------------------------------------

def test_predict_new_images_from_the_command_line_and_python(trained, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    import langseg

    rng = np.random.default_rng(0)
    pixels = (rng.random((50, 70)) * 255).astype(np.uint8)
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "film.jpg", quality=95)
    Image.fromarray(pixels).save(tmp_path / "film.png")
    code, out, err = run_main("predict", "--ckpt_path", trained / "unet.ckpt", "--image", "film.png", "film.jpg",
                              "--text", "the lesion in the left lung", "--output", "new", cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    assert "2 mask(s) written to new/masks, overlays to new/overlays" in out
    masks = sorted((tmp_path / "new" / "masks").iterdir())
    assert [m.name for m in masks] == ["film_0.png", "film_1.png"]  # one stem, two files: unique ids
    assert all(Image.open(m).size == (70, 50) for m in masks)
    assert Image.open(tmp_path / "new" / "overlays" / "film_0.png").width >= 256  # enlarged: caption readable
    model = langseg.load(trained / "unet.ckpt")
    assert not model.training and model.preprocessing["image_size"] == 32
    from_path = model.segment_image(tmp_path / "film.png")
    assert from_path.shape == (50, 70) and from_path.dtype == bool
    assert np.array_equal(model.segment_image(Image.open(tmp_path / "film.png")), from_path)
    assert np.array_equal(model.segment_image(pixels), from_path)
    assert np.array_equal(np.asarray(Image.open(masks[0])) > 0, from_path)  # the CLI wrote the same mask


@pytest.mark.parametrize("args, expected", [
    (["--image", "nothere.png"], "nothere.png: image file not found"),
    (["--image", ".", "--text", "a", "b", "c"], "3 texts for 2 images; give one text for all or one per image"),
    (["--image", "film.png"], "the following arguments are required: --ckpt_path"),
    (["--image", "bad.png", "--text", "a"], "bad.png: cannot read the image"),
])
def test_predict_new_images_bad_input_is_one_line(trained, tmp_path, capsys, args, expected):
    from PIL import Image

    Image.new("L", (20, 20)).save(tmp_path / "film.png")
    (tmp_path / "bad.png").write_text("not an image")
    ckpt = [] if "--ckpt_path" in expected else ["--ckpt_path", str(trained / "unet.ckpt")]
    line = the_error(*run_main("predict", *ckpt, *args, "--output", "new", cwd=tmp_path, capsys=capsys)[::2])
    assert expected in line and not (tmp_path / "new").exists()


def test_the_command_line_starts_without_importing_torch():
    """``langseg --help`` and the parsers load no model code (it was 17 s)."""
    run = subprocess.run([shutil.which("python") or "python", "-c",
                          "import sys, langseg.cli; langseg.cli.tools_parser().format_help(); "
                          "assert 'torch' not in sys.modules, 'torch imported'"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_predict_a_csv_of_new_images_without_masks(trained, tmp_path, capsys):
    data = write_generic_folder(tmp_path / "data", {"train": 2, "val": 2, "test": 3})
    rows = list(csv.reader((data / "test.csv").open(encoding="utf-8")))
    with (data / "new.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["image", "text"]] + [[r[0], r[2]] for r in rows[1:]])
    code, _, err = run_main("predict", "--config", UNET, *TINY, "--ckpt_path", trained / "unet.ckpt", "--data",
                            "langseg.data.ImageTextMaskDataModule", "--data.root", data, "--data.image_size", "32",
                            "--data.predict_csv", "new.csv", "--prediction_writer.output_dir", "pred",
                            cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in (tmp_path / "pred" / "masks").iterdir()) == ["test_0.png", "test_1.png", "test_2.png"]
    (data / "bad.csv").write_text("image,caption\nimages/test_0.png,x\n")
    line = the_error(*run_main("predict", "--config", UNET, *TINY, "--ckpt_path", trained / "unet.ckpt", "--data",
                               "langseg.data.ImageTextMaskDataModule", "--data.root", data, "--data.image_size", "32",
                               "--data.predict_csv", "bad.csv", cwd=tmp_path, capsys=capsys)[::2])
    assert "bad.csv: missing column(s) text; found ['image', 'caption'], expected image,mask,text (mask optional)" in line


# --- text-robustness protocols -------------------------------------------------------------------------

def _logged(stdout: str) -> dict[str, float]:
    """The metrics of Lightning's test table."""
    return {k: float(v) for k, v in re.findall(r"│\s+(test/\S+)\s+│\s+([0-9.e-]+)\s+│", stdout)}


def test_the_documented_protocol_command_prints_and_writes_every_protocol(trained, tmp_path, capsys):
    from tests.test_documented_commands import documented_commands

    (command,) = [c for s, c in documented_commands() if s == "evaluation.md" and "--data.alt_text_columns" in c]
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "runs" / "unet" / "version_0" / "checkpoints").mkdir(parents=True)
    shutil.copy(trained / "unet.ckpt", tmp_path / "runs" / "unet" / "version_0" / "checkpoints" / "last.ckpt")
    code, out, err = run_main(*shlex.split(command)[1:], *TINY, cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    logged = _logged(out)
    for key in ("test/dice_swapped_text", "test/dice_no_text", "test/dice@text_short"):
        assert logged[key] == logged["test/dice"]  # the image-only U-Net: one prediction whatever the text
    summary = json.loads((tmp_path / "runs" / "unet" / "version_1" / "results" / "test_summary.json").read_text())
    by_category = summary["dice_by_category"]["category"]
    assert sum(entry["images"] for entry in by_category.values()) == 8 and len(by_category) > 1
    for value, entry in by_category.items():
        assert logged[f"test/dice_by_category/category={value}"] == pytest.approx(entry["dice"], abs=1e-6)
        assert f"dice_by_category/category={value}=" in err  # the report's summary line


def test_extra_csv_columns_reach_the_test_report_and_the_predictions(trained, tmp_path, capsys):
    data = write_generic_folder(tmp_path / "data", {"train": 2, "val": 2, "test": 4})

    def add_columns(rows):
        rows[0] += ["finding", "text_free"]
        for k, row in enumerate(rows[1:]):
            row += ["small" if k % 2 else "large", f"the lesion of film {k}"]

    _rewrite_csv(data / "test.csv", add_columns)
    folder = [*TINY, "--ckpt_path", trained / "unet.ckpt", "--data", "langseg.data.ImageTextMaskDataModule",
              "--data.root", data, "--data.image_size", "32"]
    code, out, err = run_main("test", "--config", UNET, *folder, "--data.category_columns", "[finding]",
                              "--test_report.output_dir", "report", cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    logged = _logged(out)
    assert {"test/dice@text_free", "test/dice_by_category/finding=large", "test/dice_by_category/finding=small"} <= set(logged)
    summary = json.loads((tmp_path / "report" / "test_summary.json").read_text())
    assert {k: v["images"] for k, v in summary["dice_by_category"]["finding"].items()} == {"large": 2, "small": 2}
    with (tmp_path / "report" / "test_per_image.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["finding"] for r in rows] == ["large", "small"] * 2 and rows[1]["text_free"] == "the lesion of film 1"
    code, _, err = run_main("predict", "--config", UNET, *folder, "--prediction_writer.output_dir", "pred",
                            cwd=tmp_path, capsys=capsys)
    assert code == 0, err[-2000:]
    with (tmp_path / "pred" / "predictions.csv").open(newline="") as fh:
        predicted = list(csv.DictReader(fh))
    assert [(r["id"], r["mask"], r["finding"]) for r in predicted] == [
        (f"test_{k}", f"masks/test_{k}.png", "small" if k % 2 else "large") for k in range(4)]
    assert all((tmp_path / "pred" / r["mask"]).is_file() for r in predicted)


@pytest.mark.parametrize("option, edit, expected", [
    ("--data.alt_text_columns=[text_other]", None, "test.csv: no column 'text_other' (named by data.alt_text_columns)"),
    ("--data.category_columns=[finding]", None, "test.csv: no column 'finding' (named by data.category_columns); "
                                                 "the columns besides image and mask are text, text_free"),
    ("--data.alt_text_columns=[text_free]", 2, "test.csv row 3: column 'text_free' is empty"),
])
def test_a_missing_or_empty_protocol_column_is_one_line(trained, tmp_path, capsys, option, edit, expected):
    data = write_generic_folder(tmp_path / "data", {"train": 2, "val": 2, "test": 3})

    def add_text_free(rows):
        rows[0].append("text_free")
        for k, row in enumerate(rows[1:], start=1):
            row.append("" if k == edit else f"film {k}")

    _rewrite_csv(data / "test.csv", add_text_free)
    line = the_error(*run_main("test", "--config", UNET, *TINY, "--ckpt_path", trained / "unet.ckpt", "--data",
                               "langseg.data.ImageTextMaskDataModule", "--data.root", data, "--data.image_size", "32",
                               option, cwd=tmp_path, capsys=capsys)[::2])
    assert f"{data}/{expected}" in line
