"""Batch size against cost: the evaluator's trace and the whole evaluator, per sample.

Samples have different image sizes and prompts of different lengths, so every batch is
left-padded as in a real dataset. Two tables, CPU seconds per sample (wall on CUDA):

- **trace**: :func:`mmxai.trace.generate_traces` with the logit-lens group's needs
  (logit-lens, TAM, ARC), ``--batches`` samples per call; median of ``--rounds`` after a
  warm-up, batch sizes interleaved within each round;
- **evaluator**: :meth:`mmxai.evaluation.Evaluator.run` with TAM and logit-lens, once with
  the cost metric only (generation-bound, like the localisation metrics) and once adding
  deletion (its teacher-forced passes dominate); one run per batch size.

``python benchmarks/batching.py --shape qwen2-vl-mini`` (about 5 CPU minutes); the default is
the tiny Qwen2-VL (seconds).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from evaluator import SHAPES, qwen2vl_shaped
from PIL import Image
from rich.console import Console

from mmxai.api import make_method
from mmxai.commands.common import open_model
from mmxai.dataset import Dataset, Sample
from mmxai.evaluation import (
    ConsoleReporter,
    Evaluator,
    Generation,
    NamedMetric,
    ResultStore,
    RunSpec,
)
from mmxai.registry import manager
from mmxai.trace import Needs, generate_traces

SIZES = [(224, 224), (160, 200), (256, 180), (200, 120), (224, 224), (180, 240), (240, 160),
         (200, 200)]
PROMPTS = ["Describe the image.", "What is in this picture?",
           "Describe the image in one short sentence.", "Caption it."]


def picture(width: int, height: int, seed: int) -> Image.Image:
    """Colour ramps plus noise: every sample looks different."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    pixels = np.stack([x, y, 255 - x], axis=-1)
    pixels = pixels + np.random.default_rng(seed).normal(0, 25, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


class Pictures(Dataset):
    """The samples, in memory (no masks: the localisation metrics do not apply)."""

    name = "pictures"

    def __iter__(self):
        for i, (width, height) in enumerate(SIZES):
            yield Sample(str(i), picture(width, height, i), PROMPTS[i % len(PROMPTS)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:qwen2-vl")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="instead of --model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = (qwen2vl_shaped(args.shape, device, torch.float32) if args.shape
             else open_model(args.model, device))
    batches = [int(b) for b in args.batches.split(",")]
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    tokens = dict(max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
    samples = list(Pictures())
    inputs = [model.build_inputs([s.image], s.prompt) for s in samples]
    print(f"model: {model.model_id}, {sum(p.numel() for p in model.hf.parameters()) / 1e6:.1f}M "
          f"parameters, on {device}; {len(samples)} samples, prompt lengths "
          f"{[int(x.input_ids.shape[0]) for x in inputs]}, image tokens "
          f"{[len(x.image_positions) for x in inputs]}, {args.max_new_tokens} new tokens")

    needs = Needs()
    for name in ("logit-lens", "tam", "arc"):
        needs = needs | make_method(name).needs
    times: dict[int, list[float]] = {b: [] for b in batches}
    for round_ in range(args.rounds + 1):
        for b in batches:
            start = clock()
            for i in range(0, len(inputs), b):
                generate_traces(model, inputs[i:i + b], needs, **tokens)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            if round_:
                times[b].append((clock() - start) / len(inputs))
    base = statistics.median(times[batches[0]])
    print(f"\ntrace, median of {args.rounds}:\n\n| batch | s / sample | x batch {batches[0]} |")
    print("|---|---|---|")
    for b, values in times.items():
        print(f"| {b} | {statistics.median(values):.3f} | {statistics.median(values) / base:.2f} |")

    def metric(name: str, **options) -> NamedMetric:
        return NamedMetric.make(manager().get("metrics", name), options or None)

    configs = {"seconds-per-token only": [metric("seconds-per-token")],
               "+ deletion (8 steps, 4 tokens)": [metric("seconds-per-token"), metric("deletion")]}
    print("\nevaluator (tam, logit-lens), one run each:\n")
    print("| metrics | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---|" * len(batches))
    for label, metrics in configs.items():
        cells = []
        for b in batches:
            with tempfile.TemporaryDirectory() as folder, \
                    ResultStore(Path(folder) / "results.sqlite") as store:
                spec = RunSpec(generation=Generation(**tokens), batch_size=b)
                evaluator = Evaluator(Pictures(), [make_method("tam"), make_method("logit-lens")],
                                      metrics, store, spec,
                                      reporter=ConsoleReporter(Console(stderr=True), bars=False))
                start = clock()
                evaluator.run(model, "benchmark")
                cells.append((clock() - start) / len(samples))
        print(f"| {label} | " + " | ".join(f"{c:.3f} ({c / cells[0]:.2f})" for c in cells) + " |")


if __name__ == "__main__":
    main()
