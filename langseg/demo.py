"""``langseg demo``: a local web page (Gradio) that segments an image from one or several typed texts.

The backend (``split_texts``, ``segment_overlays``, ``demo_examples``) is plain Python; ``build_app`` wires it
into a ``gradio.Blocks`` page whose ``segment`` endpoint is also an HTTP API (``gradio_client``). Gradio is an
optional extra (``pip install -e ".[demo]"``) and is imported only by ``build_app`` and ``serve``.
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from langseg.errors import ConfigError, LangsegError

DEMO_CHECKPOINT = Path(__file__).with_name("assets") / "demo" / "lsms_small_synthetic.ckpt"
EXAMPLE_SEED = (0, 2)  # (data seed, split id) of the synthetic test split: the examples are test films
MAX_TEXTS = 8


def split_texts(texts: str | Sequence[str]) -> list[str]:
    """The non-empty texts of a box holding one text per line (or of a list), stripped; a ConfigError if none."""
    lines = texts.splitlines() if isinstance(texts, str) else list(texts)
    found = [line.strip() for line in lines if line and line.strip()]
    if not found:
        raise ConfigError("no text: type what to segment, one text per line")
    if len(found) > MAX_TEXTS:
        raise ConfigError(f"{len(found)} texts; the demo segments at most {MAX_TEXTS} at once")
    return found


def segment_overlays(model: Any, image: str | Path | Image.Image | np.ndarray,
                     texts: str | Sequence[str]) -> list[Image.Image]:
    """One overlay per text (``langseg.callbacks.overlay_image``: the mask of ``model.segment_image(image, text)``
    tinted red with a yellow contour, the text as caption), in the order of the texts."""
    from langseg.callbacks import overlay_image
    from langseg.data.datasets import image_array

    pixels = image_array(image)
    base = Image.fromarray(pixels if pixels.dtype == np.uint8 else _to_uint8(pixels)).convert("RGB")
    return [overlay_image(base, model.segment_image(pixels, text), text) for text in split_texts(texts)]


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit display copy of 16-bit or float pixels (scaled by their range)."""
    pixels = pixels.astype(np.float32)
    span = max(float(pixels.max() - pixels.min()), 1e-6)
    return ((pixels - pixels.min()) / span * 255).astype(np.uint8)


def demo_examples(folder: str | Path, count: int = 4, image_size: int = 64,
                  texts_per_image: int = 4) -> list[tuple[Path, list[str]]]:
    """``count`` films of the embedded synthetic test split with three lesions, written as PNG files to ``folder``,
    each with ``texts_per_image`` of its referring texts whose masks differ (zones first, then a side and all
    lesions; ``langseg.data.synthetic.referring_variants``)."""
    from langseg.data.synthetic import referring_variants

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    examples, index = [], 0
    while len(examples) < count:
        variants = referring_variants(image_size, np.random.default_rng([*EXAMPLE_SEED, index]))
        distinct: dict[bytes, str] = {}
        for variant in variants:  # the first text of each mask
            distinct.setdefault(variant.mask.tobytes(), variant.text)
        texts = list(distinct.values())
        if len(texts) > texts_per_image:  # three lesions: keep two zones, a side and all lesions
            half = texts_per_image // 2
            path = folder / f"synthetic_test_{index:05d}.png"
            Image.fromarray((variants[0].image * 255).round().astype(np.uint8)).save(path)
            examples.append((path, texts[:half] + texts[half - texts_per_image:]))
        index += 1
    return examples


def require_gradio() -> None:
    """A ConfigError with the install command when gradio (the optional ``demo`` extra) is missing."""
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError('langseg demo needs gradio, which is not installed: pip install -e ".[demo]"')


def build_app(model: Any, examples: list[tuple[Path, list[str]]], title: str = "langseg demo") -> Any:
    """The Gradio page: an image (upload or a preloaded example), a box of texts (one per line), and a gallery
    with one overlay per text; its ``segment`` endpoint is callable over HTTP (``/gradio_api/``)."""
    import gradio as gr

    def segment(image: Image.Image | None, texts: str) -> list[Image.Image]:
        if image is None:
            raise gr.Error("no image: upload one or pick an example below")
        try:
            return segment_overlays(model, image, texts)
        except LangsegError as err:
            raise gr.Error(str(err)) from err

    first_image, first_texts = examples[0] if examples else (None, [])
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}: the mask follows the text\n"
                    f"Model: **{type(model).__name__}** ({getattr(model, 'demo_source', 'checkpoint')}). "
                    "Type one text per line: each text gets its own overlay (prediction in red, contour in yellow). "
                    "The shipped demo model was trained on the embedded synthetic films only and knows their "
                    "phrasings; for real images pass a checkpoint trained on them with `--ckpt_path`.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(value=str(first_image) if first_image else None, type="pil", image_mode="RGB",
                                 label="Image", sources=["upload", "clipboard"], height=256)
                texts = gr.Textbox(value="\n".join(first_texts), lines=4, max_lines=MAX_TEXTS,
                                   label="Texts, one per line")
                button = gr.Button("Segment", variant="primary")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="One overlay per text", columns=4, format="png", object_fit="contain",
                                     height="auto")
        triggers = [button.click, texts.submit] + ([app.load] if first_image else [])  # the first example on load
        gr.on(triggers, segment, inputs=[image, texts], outputs=gallery, api_name="segment")  # named before Examples
        gr.Examples([[str(path), "\n".join(lines)] for path, lines in examples], inputs=[image, texts],
                    outputs=gallery, fn=segment, run_on_click=True, cache_examples=False,
                    label="Synthetic test films (click one to segment it)")
    return app


def load_demo_model(ckpt_path: str | Path | None) -> Any:
    """The model of ``ckpt_path`` (default: the shipped demo checkpoint), with ``demo_source`` naming it."""
    from langseg.inference import load

    path = Path(ckpt_path) if ckpt_path is not None else DEMO_CHECKPOINT
    model = load(path)
    model.demo_source = str(path) if ckpt_path is not None else "the shipped demo checkpoint, docs/demo.md"
    return model


def serve(ckpt_path: str | Path | None = None, port: int | None = None, share: bool = False,
          host: str = "127.0.0.1") -> None:
    """Loads the model, writes the example films to a temporary folder and serves the page until interrupted."""
    if ckpt_path is not None and not Path(ckpt_path).is_file():  # refused before torch and gradio load (seconds)
        what = "is a folder" if Path(ckpt_path).is_dir() else "does not exist"
        raise ConfigError(f"--ckpt_path {ckpt_path} {what}; expected a checkpoint file written by langseg fit")
    require_gradio()
    model = load_demo_model(ckpt_path)
    with tempfile.TemporaryDirectory(prefix="langseg-demo-") as folder:
        app = build_app(model, demo_examples(folder))
        app.launch(server_name=host, server_port=port, share=share, allowed_paths=[folder])


def slim_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """A copy of a langseg checkpoint with only what ``langseg.load`` needs (weights in float16, hyperparameters,
    preprocessing, model class): no optimiser state, loops or callbacks. The demo checkpoint is made with it."""
    import torch

    from langseg.files import atomic_write
    from langseg.inference import read_checkpoint

    ckpt = read_checkpoint(src, option="checkpoint")
    keep = {k: v for k, v in ckpt.items() if k.startswith("langseg_") or k in (
        "state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version", "epoch", "global_step")}
    keep["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    return atomic_write(Path(dst), lambda tmp: torch.save(keep, tmp))
