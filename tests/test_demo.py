"""``langseg demo``: the shipped checkpoint follows the text, the page answers over HTTP, and errors are one line."""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from langseg.cli import main
from langseg.demo import DEMO_CHECKPOINT, EXAMPLE_SEED, demo_examples, segment_overlays, split_texts
from langseg.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
needs_gradio = pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                  reason='gradio is not installed (the demo extra: pip install -e ".[demo]"; '
                                         '.ci/run installs it in its own environment)')


@pytest.fixture(scope="module")
def demo_model():
    import langseg

    return langseg.load(DEMO_CHECKPOINT)


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[Path, list[str]]:
    return demo_examples(tmp_path_factory.mktemp("examples"), count=1)[0]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_split_texts_keeps_non_empty_lines_and_refuses_none():
    assert split_texts(" left lung \n\n  \nright lung") == ["left lung", "right lung"]
    with pytest.raises(ConfigError, match="no text"):
        split_texts("\n  \n")


def test_the_shipped_model_segments_what_each_text_names(demo_model, example):
    from langseg.data.synthetic import referring_variants

    path, texts = example
    index = int(path.stem.rsplit("_", 1)[1])
    truth = {v.text: v.mask.astype(bool) for v in referring_variants(64, np.random.default_rng([*EXAMPLE_SEED, index]))}
    first, second = texts[:2]  # two single lesions in different zones
    masks = [demo_model.segment_image(path, text) for text in (first, second)]
    assert masks[0].shape == (64, 64) and not np.array_equal(masks[0], masks[1])
    assert dice(masks[0], truth[first]) > dice(masks[0], truth[second])
    assert dice(masks[1], truth[second]) > dice(masks[1], truth[first])
    overlays = segment_overlays(demo_model, Image.open(path), f"{first}\n{second}")
    assert len(overlays) == 2 and overlays[0].width >= 256
    assert not np.array_equal(np.asarray(overlays[0])[:256], np.asarray(overlays[1])[:256])


@needs_gradio
@pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated")  # inside gradio's queue, pandas 3
@pytest.mark.filterwarnings("ignore:The copy keyword is deprecated and will be removed")  # raised inside gradio's payload processing, not langseg's code
def test_the_page_answers_through_its_http_api(demo_model, example):
    from gradio_client import Client, handle_file

    from langseg.demo import build_app

    path, texts = example
    app = build_app(demo_model, [example])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               allowed_paths=[str(path.parent)])
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(handle_file(str(path)), "\n".join(texts[:3]), api_name="/segment")
    finally:
        app.close()
    assert len(result) == 3
    pictures = [np.asarray(Image.open(item["image"]).convert("RGB")) for item in result]
    assert all(p.shape[1] >= 256 for p in pictures)
    assert all(((p[..., 0] > 200) & (p[..., 1] > 200) & (p[..., 2] < 60)).any() for p in pictures)  # yellow contours


def test_missing_checkpoint_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([shutil.which("langseg") or "langseg", "demo", "--ckpt_path", "missing.ckpt"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "langseg: error: --ckpt_path missing.ckpt does not exist; expected a checkpoint file written by langseg fit"]


def test_missing_gradio_names_the_extra(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else find_spec(name, *a))
    with pytest.raises(SystemExit) as done:
        main(["demo"])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip() == ('langseg: error: langseg demo needs gradio, which is not installed: '
                                               'pip install -e ".[demo]"')
