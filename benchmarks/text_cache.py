"""Bounded frozen-text cache: memory and step time on 10k distinct texts, cached speed on repeating texts, and
the effect of storing fp16 on a model's output.

    PYTHONPATH=. python benchmarks/text_cache.py            # full run, writes its section of docs/benchmarks.md
    PYTHONPATH=. python benchmarks/text_cache.py --quick    # 500 texts, prints only

The encoder is the packaged all-MiniLM-L6-v2 with every hidden state (as HiMix asks for: 7 x 384-d per token).
Two caches run side by side in one process on the same batches, alternating which goes first: the unbounded
fp32 cache langseg had before (``cache_mb=None, cache_dtype="float32"``) and the default (512 MiB, fp16).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
SIDES = ["left", "right", "both"]
ZONES = ["upper", "middle", "lower", "all", "upper and middle", "middle and lower"]
COUNTS = ["one", "two", "three", "four", "multiple"]


def distinct_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` different report-like texts (a case number makes each unique, as free-text reports are)."""
    rng = random.Random(seed)
    return [f"Case {k}: {rng.choice(COUNTS)} infected areas, {rng.choice(ZONES)} {rng.choice(SIDES)} lung, "
            f"{rng.choice(['patchy', 'diffuse', 'nodular'])} opacity." for k in range(n)]


def templated_texts(seed: int = 0) -> list[str]:
    """QaTa-COV19-like templated texts: count, zone and side (90 distinct)."""
    return [f"{'Bilateral' if side == 'both' else 'Unilateral'} pulmonary infection, {count} infected areas, "
            f"{zone} {side} lung." for side in SIDES for zone in ZONES for count in COUNTS]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _pair(old, new, batches: list[list[str]], start: int = 0) -> tuple[list[float], list[float]]:
    """Seconds per call of ``old`` and ``new`` on each batch, alternating which runs first."""
    t_old, t_new = [], []
    for k, batch in enumerate(batches, start):
        if k % 2:
            t_new.append(_timed(lambda: new(batch)))
            t_old.append(_timed(lambda: old(batch)))
        else:
            t_old.append(_timed(lambda: old(batch)))
            t_new.append(_timed(lambda: new(batch)))
    return t_old, t_new


def _encoders():
    from langseg.blocks.text_encoder import TextEncoder

    old = TextEncoder("minilm", output_hidden_states=True, cache_mb=None, cache_dtype="float32")
    new = TextEncoder("minilm", output_hidden_states=True)
    return old, new


def distinct_run(n: int, batch: int) -> dict:
    """Memory and per-batch time of both caches fed ``n`` distinct texts (every text is new: misses only).

    Each batch is encoded once, outside the timers, and handed to both caches: the timers measure what the
    caches add (splitting, rounding, storing, evicting, assembling); the encoding is timed on its own."""
    import resource

    old, new = _encoders()
    texts = distinct_texts(n)
    batches = [texts[i:i + batch] for i in range(0, n, batch)]
    t_encode, t_old, t_new = [], [], []
    with torch.no_grad():
        for chunk in batches:
            start = time.perf_counter()
            feats = type(old)._encode(old, chunk)  # the class method: the instance one is replaced below
            t_encode.append(time.perf_counter() - start)
            old._encode = new._encode = lambda texts, feats=feats: feats
            o, w = _pair(old, new, [chunk], start=len(t_old))
            t_old += o
            t_new += w
    return {"texts": n, "batch": batch, "old_bytes": old.cached_bytes, "new_bytes": new.cached_bytes,
            "new_entries": len(new._cache), "new_bound": new.cache_bytes, "old_ms": 1000 * statistics.median(t_old),
            "new_ms": 1000 * statistics.median(t_new), "encode_ms": 1000 * statistics.median(t_encode),
            "tokens_per_text": statistics.mean(old._cache[t].length for t in texts),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def repeat_run(steps: int, batch: int) -> dict:
    """Cached speed on templated texts drawn with QaTa-like skewed frequencies: the text-encoder call alone and a
    whole HiMix training step (``himix_small``, 64x64) with each cache."""
    import langseg

    pool = templated_texts()
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, len(pool) + 1) ** 1.1  # Zipf-like: a few templates are most of the reports
    draws = rng.choice(len(pool), size=(steps, batch), p=weights / weights.sum())
    batches = [[pool[i] for i in row] for row in draws]
    old, new = _encoders()
    with torch.no_grad():
        old(pool), new(pool)  # warm: every text cached in both
        t_old, t_new = _pair(old, new, batches)
    ratios = [o / n for o, n in zip(t_old, t_new)]

    torch.manual_seed(0)
    model = langseg.create_model("himix_small")
    image = torch.randn(batch, 1, 64, 64)
    mask = (torch.rand(batch, 1, 64, 64) > 0.8).float()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    caches = {"old": (old._cache, old._cached_bytes, None, torch.float32), "new": (new._cache, new._cached_bytes,
                                                                                  new.cache_bytes, new.cache_dtype)}

    def step(kind: str, texts: list[str]) -> None:
        enc = model.text_encoder
        enc._cache, enc._cached_bytes, enc.cache_bytes, enc.cache_dtype = caches[kind]
        text = model.encode_text(texts)
        loss = model.compute_loss(model(image, text), mask, text)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_batches = batches[: max(6, steps // 20)]
    s_old, s_new = _pair(lambda b: step("old", b), lambda b: step("new", b), step_batches)
    return {"pool": len(pool), "steps": steps, "batch": batch, "old_ms": 1000 * statistics.median(t_old),
            "new_ms": 1000 * statistics.median(t_new), "speed": statistics.median(ratios),
            "step_old_ms": 1000 * statistics.median(s_old), "step_new_ms": 1000 * statistics.median(s_new),
            "step_speed": statistics.median(o / n for o, n in zip(s_old, s_new)), "step_batches": len(step_batches)}


@torch.no_grad()
def output_effect() -> dict:
    """Max |logit difference| of fp16-cached vs fp32-cached text features: the trained demo model (LSMS-small,
    synthetic data) on 64 synthetic test samples, and a random-initialised paper-size HiMix (every hidden state)."""
    import langseg
    from langseg.data import SyntheticReferringDataModule
    from langseg.demo import DEMO_CHECKPOINT

    result = {}
    model = langseg.load(str(DEMO_CHECKPOINT)).eval()
    dm = SyntheticReferringDataModule(num_test=64, image_size=model.preprocessing["image_size"], batch_size=64,
                                      num_workers=0)
    dm.setup("test")
    sample = next(iter(dm.test_dataloader()))
    torch.manual_seed(0)
    himix = langseg.create_model("himix").eval()
    himix_image = torch.randn(4, 1, 224, 224)
    cases = {"lsms_small (trained demo)": (model, sample["image"], sample["text"]),
             "himix (random init)": (himix, himix_image, sample["text"][:4])}
    for name, (net, image, texts) in cases.items():
        enc = net.text_encoder
        logits = {}
        for dtype in (torch.float32, torch.float16):
            enc.clear_cache()
            enc.cache_dtype = dtype
            logits[dtype] = net.segment(image, texts)["logits"]
        diff = (logits[torch.float16] - logits[torch.float32]).abs()
        flips = ((logits[torch.float16] > 0) != (logits[torch.float32] > 0)).float().mean()
        result[name] = {"max_abs": float(diff.max()), "logit_range": float(logits[torch.float32].abs().max()),
                        "flipped": float(flips)}
    return result


def render(distinct: dict, repeat: dict, effect: dict, command: str, machine: str, load: str) -> str:
    per_text_old = distinct["old_bytes"] / distinct["texts"]
    bert_base = per_text_old * (13 * 768) / (7 * 384)
    lines = [
        "## Frozen-text cache: memory bound and fp16\n",
        f"Command: `{command}` ({machine}; {load} at the end of the run). Encoder: all-MiniLM-L6-v2 with every "
        f"hidden state (7 x 384-d per token, as HiMix reads them); before = unbounded fp32 cache, after = the "
        f"default (`text_cache_mb=512`, `text_cache_dtype=float16`). Both run in one process on the same batches, "
        f"alternating which goes first; times are medians.\n",
        f"| {distinct['texts']} distinct texts (batch {distinct['batch']}, all new) | before | after |",
        "|---|---|---|",
        f"| cache memory (bytes of features held) | {distinct['old_bytes'] / 2**20:.0f} MiB | "
        f"{distinct['new_bytes'] / 2**20:.0f} MiB ({distinct['new_entries']} texts kept; bound "
        f"{distinct['new_bound'] / 2**20:.0f} MiB) |",
        f"| cache work per batch (split, round, store, evict, assemble) | {distinct['old_ms']:.2f} ms | "
        f"{distinct['new_ms']:.2f} ms |",
        f"| encoding per batch (the same for both, timed once) | {distinct['encode_ms']:.0f} ms | "
        f"{distinct['encode_ms']:.0f} ms |",
        "",
        f"Texts average {distinct['tokens_per_text']:.1f} tokens, {per_text_old / 1024:.0f} KiB each in fp32 "
        f"(unpadded, 7 layers). With a BERT-base-size encoder (CXR-BERT, HiMix's: 13 x 768-d hidden states) the "
        f"same texts would take {bert_base / 1024:.0f} KiB each, {bert_base * distinct['texts'] / 2**30:.1f} GiB for "
        f"{distinct['texts']} texts before; after, the 512 MiB bound holds the {int(512 * 2**20 // (bert_base / 2))} "
        f"most recently used in fp16. Peak resident memory of the process: {distinct['rss_mb']:.0f} MB.\n",
        f"**Repeating texts** (QaTa-COV19-like: {repeat['pool']} templated texts drawn with Zipf-like frequencies, "
        f"batch {repeat['batch']}, cache warm): text-encoder call {repeat['old_ms']:.2f} ms before vs "
        f"{repeat['new_ms']:.2f} ms after, median per-batch speed ratio **{repeat['speed']:.2f}x** of the unbounded "
        f"fp32 cache over {repeat['steps']} batches; a whole `himix_small` training step (64x64): "
        f"{repeat['step_old_ms']:.0f} ms vs {repeat['step_new_ms']:.0f} ms, **{repeat['step_speed']:.2f}x** "
        f"(median of {repeat['step_batches']}; target >= 0.95x).\n",
        "**Effect of fp16 storage on outputs** (features are rounded to fp16 and returned as fp32; the same text "
        "gives the same features whether cached or just encoded):\n",
        "| model | max abs logit difference | largest abs logit | mask pixels flipped |",
        "|---|---|---|---|",
    ]
    for name, e in effect.items():
        lines.append(f"| {name} | {e['max_abs']:.2e} | {e['logit_range']:.1f} | {e['flipped'] * 100:.4f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 texts, few steps; prints instead of writing docs")
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    opts = parser.parse_args()
    from benchmarks.common import load_average, machine, write_section

    torch.manual_seed(0)
    distinct = distinct_run(500 if opts.quick else 10_000, 16)
    repeat = repeat_run(40 if opts.quick else 400, 16)
    effect = output_effect()
    command = "PYTHONPATH=. python benchmarks/text_cache.py" + (" --quick" if opts.quick else "")
    text = render(distinct, repeat, effect, command, machine(), load_average())
    sys.stdout.write(text)
    if not opts.quick:
        write_section(Path(opts.output), "text_cache", text)


if __name__ == "__main__":
    main()
