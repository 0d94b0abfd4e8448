"""TAM post-processing: mmxai's vectorised ECI + rank Gaussian filter against per-cell loops.

The loop implementation below computes the same algorithm the way the reference does (per
explained token: stack its context maps, weight, scale, subtract, scale jointly with the
text scores, then a Python double loop over cells with a sort and an exp per cell). It is
scipy-free: the scale is the closed form the reference's scalar minimiser converges to.
The tests use these loops as the plain reference for the vectorised code.

Both run on identical random inputs, timed in process CPU seconds (the machine is shared;
wall time would count other jobs), the vectorised side best of ``--repeats``. The script
prints the speed ratio, the largest difference between the maps, and the trace's memory
against full-vocabulary logits at Qwen2-VL-2B sizes.
Run: ``nice python benchmarks/tam_postprocess.py`` (about 40 CPU seconds).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from mmxai.methods.tam import postprocess
from mmxai.model import ImageGrid, stack_grids

# Qwen2-VL-2B-Instruct: hidden size, vocabulary, and the chat template's text around a
# one-line prompt (system prompt, role markers, vision markers): about 35 tokens.
QWEN2VL_2B = {"d": 1536, "vocab": 151_936, "template": 35}


def loop_rgf(grid: np.ndarray, kernel_size: int = 3, constant: str = "value") -> np.ndarray:
    """Rank Gaussian filter of one (h, w) grid, one cell at a time (the reference's loop).

    A constant positive window gives its constant ("value") or 0 ("reference": the
    reference's std of exactly 0 makes 0/0, and its uint8 cast turns the NaN into 0).
    """
    pad = kernel_size // 2
    padded = np.pad(np.asarray(grid, dtype=np.float64), pad, mode="reflect")
    offsets = np.arange(kernel_size * kernel_size) - kernel_size * kernel_size // 2
    out = np.zeros(grid.shape, dtype=np.float64)
    for y in range(grid.shape[0]):
        for x in range(grid.shape[1]):
            window = np.sort(padded[y:y + kernel_size, x:x + kernel_size].ravel())
            mean = window.mean()
            if mean <= 0:
                continue
            if window[0] == window[-1]:
                out[y, x] = mean if constant == "value" else 0.0
                continue
            cv = window.std() / mean
            weights = np.exp(-offsets ** 2 / (2 * cv ** 2))
            out[y, x] = (weights / weights.sum() * window).sum()
    return out


def loop_eci(raw: np.ndarray, history: np.ndarray, relevance: np.ndarray,
             context: list[int]) -> np.ndarray:
    """ECI for one token: raw (N,) minus its scaled, relevance-weighted context maps."""
    if not context:
        return raw
    r = np.maximum(relevance[context], 0)
    weights = r / (r.sum() + 1e-8)
    interference = np.zeros_like(raw)
    for w, i in zip(weights, context, strict=True):
        interference += w * history[i]
    energy = interference @ interference
    scale = raw @ interference / energy if energy > 0 else 0.0
    return np.maximum(raw - scale * interference, 0)


def loop_postprocess(history, explained, text, context, text_mask, shape, kernel_size=3,
                     constant="value") -> np.ndarray:
    """The post-processing of :func:`mmxai.methods.tam.postprocess`, token by token."""
    history, text = np.asarray(history, np.float64), np.asarray(text, np.float64)
    out = []
    for j, k in enumerate(explained):
        ctx = [i for i in range(history.shape[0]) if context[j, i]]
        image = loop_eci(history[k], history, text[j], ctx)
        scores = np.concatenate([image, [text[j, i] for i in range(text.shape[1])
                                         if text_mask[j, i]]])
        lo, hi = scores.min(), scores.max()
        image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
        out.append(loop_rgf(image.reshape(shape), kernel_size, constant).ravel())
    return np.stack(out)


def random_inputs(shape: tuple[int, int], n_tokens: int, n_prompt: int = 10, seed: int = 0):
    """Raw maps, relevances and masks like one sample's: n_prompt + n_tokens items."""
    rng = np.random.default_rng(seed)
    k = n_prompt + n_tokens
    n = shape[0] * shape[1]
    history = np.maximum(rng.normal(size=(k, n)), 0).astype(np.float32)
    explained = n_prompt + np.arange(n_tokens)
    text = np.maximum(rng.normal(size=(n_tokens, k)), 0).astype(np.float32)
    before = np.arange(k)[None, :] < explained[:, None]
    repeated = rng.random((n_tokens, k)) < 0.05  # repeated-token exclusion
    return history, explained, text, before & ~repeated, before


def trace_memory(n_image: int, n_tokens: int, topk: int) -> tuple[int, int]:
    """Bytes at Qwen2-VL-2B sizes: the trace (float32 hidden states, the cached logit
    columns TAM asks for, top-k ids and logits, logsumexp) against float32 logits over the
    full vocabulary at every position."""
    d, vocab = QWEN2VL_2B["d"], QWEN2VL_2B["vocab"]
    positions = n_image + QWEN2VL_2B["template"] + n_tokens - 1
    classes = 10 + n_tokens
    trace = positions * (d + classes) * 4 + n_tokens * (topk * (8 + 4) + 4)
    return trace, positions * vocab * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="17x23,24x24,36x36,64x64")
    parser.add_argument("--tokens", default="20,200")
    parser.add_argument("--topk", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core each: the loop is single-threaded
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads 1, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"{'grid':>6} {'tokens':>6} {'loop s':>8} {'vector s':>9} {'speed-up':>9} "
          f"{'max |diff|':>11} {'trace MB':>9} {'logits MB':>10} {'memory':>7}")
    for spec in args.grids.split(","):
        shape = tuple(int(s) for s in spec.split("x"))
        grids = stack_grids([ImageGrid(0, np.arange(shape[0] * shape[1]), shape)])
        for n_tokens in (int(t) for t in args.tokens.split(",")):
            inputs = random_inputs(shape, n_tokens)
            start = time.process_time()
            slow = loop_postprocess(*inputs, shape)
            loop_s = time.process_time() - start
            vector_s = float("inf")
            for _ in range(args.repeats):
                start = time.process_time()
                fast = postprocess(*inputs, grids)
                vector_s = min(vector_s, time.process_time() - start)
            trace_b, logits_b = trace_memory(shape[0] * shape[1], n_tokens, args.topk)
            print(f"{spec:>6} {n_tokens:>6} {loop_s:8.2f} {vector_s:9.4f} "
                  f"{loop_s / vector_s:8.0f}x {np.abs(fast - slow).max():11.1e} "
                  f"{trace_b / 2**20:9.1f} {logits_b / 2**20:10.1f} "
                  f"{logits_b / trace_b:6.0f}x")


if __name__ == "__main__":
    main()
