"""What a perfect token-level map scores on the bundled benchmark: the localisation ceiling.

Methods attribute to the decoder's image tokens (a 16x16 grid on the default benchmark's
testbed, 8x8 on the first one), while the masks are pixel-exact. So even a map that is
exactly right at token level scores below 1.
This script builds, for every held-out scene the testbed captions, the *oracle* map: for a
colour or shape word, the share of each grid cell its object's mask covers; for every other
word, zeros. It scores those maps with the localisation metrics the leaderboard uses and
prints the ceiling each metric can reach, next to which the leaderboard's numbers read.

The oracle uses the masks, so it is not a method and is never registered as one.
``python benchmarks/oracle_ceiling.py [--dataset synthetic16|synthetic] [--limit N]``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mmxai.dataset import load_image, load_mask
from mmxai.metric import EvalItem
from mmxai.model import load_model
from mmxai.plugins.metrics.localisation import F1IoU, FuncIoU, ObjIoU, Precision, Recall
from mmxai.registry import manager
from mmxai.testbed.train import patch_coverage
from mmxai.trace import Needs, generate_trace
from mmxai.words import words_from_trace


def oracle_maps(words, mask: np.ndarray, n_tokens: int) -> np.ndarray:
    """(G, grid*grid) maps: each labelled word's tokens get its object's patch coverage."""
    maps = np.zeros((n_tokens, patch_coverage(mask > 0).size), dtype=np.float32)
    for word in words:
        if word.label is not None:
            for token in word.tokens:
                maps[token] = patch_coverage(mask == word.label)
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synthetic16", choices=("synthetic16", "synthetic"))
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    benchmark = manager().get("datasets", args.dataset)
    model = load_model(benchmark.default_model)
    metrics = [ObjIoU(), FuncIoU(), F1IoU(), Precision(), Recall()]
    parts: dict[str, list] = {m.name: [] for m in metrics}
    dataset = benchmark(limit=args.limit)
    for sample in dataset:
        image = load_image(sample)
        trace = generate_trace(model, model.build_inputs([image], sample.prompt), Needs(),
                               max_new_tokens=32)
        words = words_from_trace(trace, sample)
        mask = load_mask(sample, image.size)
        maps = oracle_maps(words, mask, trace.n_generated)
        item = EvalItem(sample, model, None, trace, maps, words, mask)
        for metric in metrics:
            parts[metric.name].append(metric.measure(item))
    print(f"oracle token-level maps on {len(dataset)} scenes (the localisation ceiling):")
    for metric in metrics:
        print(f"  {metric.name:10s} {metric.aggregate(parts[metric.name]):.3f}")


if __name__ == "__main__":
    main()
