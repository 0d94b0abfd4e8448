"""Fake traces with hand-made hidden states, and a plain loop restatement of TAM.

The fake model's unembedding is the identity unless given, so the logit of class c at
position q is simply ``hidden[q, c]``: tests write the logits they want.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from mmxai.model import ImageGrid, Inputs, stack_grids
from mmxai.trace import Trace

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    """benchmarks/tam_postprocess.py, home of the per-cell loop implementation."""
    spec = importlib.util.spec_from_file_location("tam_postprocess",
                                                  ROOT / "benchmarks" / "tam_postprocess.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeTokenizer:
    """Token ``i`` is the string ``"t{i}"``, except those named in ``names``."""

    def __init__(self, names: dict[int, str] | None = None) -> None:
        self.names = names or {}

    def convert_ids_to_tokens(self, ids):
        return [self.names.get(int(i), f"t{int(i)}") for i in ids]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(self.convert_ids_to_tokens(ids)).replace("Ġ", " ")


class FakeModel:
    def __init__(self, unembedding: torch.Tensor, names: dict[int, str] | None = None) -> None:
        self.w = unembedding
        self.tokenizer = FakeTokenizer(names)
        self.norm = torch.nn.RMSNorm(unembedding.shape[1], eps=1e-6)

    def unembedding(self) -> torch.Tensor:
        return self.w

    def final_norm(self) -> torch.nn.Module:
        return self.norm


class Layout:
    """Positions of a fake sample: [bos, image grid, sep, prompt (n), template (2), answer]."""

    def __init__(self, shape=(4, 5), n_prompt=3, n_generated=4) -> None:
        self.shape = shape
        self.n_image = shape[0] * shape[1]
        self.image = np.arange(1, 1 + self.n_image)
        self.prompt = np.arange(2 + self.n_image, 2 + self.n_image + n_prompt)
        self.prompt_len = int(self.prompt[-1] + 3) if n_prompt else 2 + self.n_image + 2
        self.n_generated = n_generated
        self.length = self.prompt_len + n_generated

    def generated(self, j: int) -> int:
        """The position of generated token j."""
        return self.prompt_len + j


def fake_trace(layout: Layout, sequence, hidden, unembedding=None, names=None) -> Trace:
    """A Trace over ``sequence`` (T,) with ``hidden`` (T-1, d) and one image grid."""
    sequence = torch.as_tensor(sequence, dtype=torch.long)
    hidden = torch.as_tensor(hidden, dtype=torch.float32)
    if unembedding is None:
        unembedding = torch.eye(hidden.shape[1])
    grids = stack_grids([ImageGrid(0, layout.image, layout.shape)])
    features = {"input_ids": sequence[:layout.prompt_len][None]}
    inputs = Inputs(features, [], "", grids, layout.prompt)
    return Trace(FakeModel(torch.as_tensor(unembedding, dtype=torch.float32), names),
                 inputs, sequence, hidden)


def random_trace(seed: int, layout: Layout, vocab: int = 12, d: int = 16,
                 names=None) -> Trace:
    """Random ids from a small vocabulary (so tokens repeat) and random hidden states."""
    rng = np.random.default_rng(seed)
    sequence = rng.integers(0, vocab, layout.length)
    hidden = rng.normal(size=(layout.length - 1, d))
    unembedding = rng.normal(size=(vocab, d))
    return fake_trace(layout, sequence, hidden, unembedding, names)


def loop_tam(trace: Trace, reference: bool, kernel_size: int = 3) -> np.ndarray:
    """TAM for every generated token, item by item as docs/tam.md and the spec state it.

    ``reference``: the reference's rules (Q1-Q3, Q7, string exclusion); otherwise the
    defaults (own classes, relevance at the predicting position, id exclusion, constants).
    The text list is the sequence's own tokens (no decode/re-tokenize round trip, Q12).
    """
    bench = load_benchmark()
    z = (trace.hidden.double() @ trace.model.unembedding().double().T).numpy()
    seq = trace.sequence.tolist()
    L, G = trace.prompt_len, trace.n_generated
    prompt = [int(p) for p in trace.inputs.prompt_positions]
    n = len(prompt)
    items = prompt + [L + j for j in range(G)]
    keys = (trace.model.tokenizer.convert_ids_to_tokens([seq[p] for p in items]) if reference
            else [seq[p] for p in items])
    image = list(trace.image_positions)
    constant = "reference" if reference else "value"

    def item_class(k: int) -> int:
        if reference and k == 0 and n:
            return int(np.argmax(z[prompt[0]]))
        if reference and k == n:
            return seq[L - 1]
        return seq[items[k]]

    def relevance_position(i: int) -> int:
        return items[i] if reference and i < n else items[i] - 1

    history = [np.maximum([z[v, item_class(k)] for v in image], 0) for k in range(n + G)]

    def run(k: int) -> np.ndarray:
        c = item_class(k)
        text = [max(0.0, z[relevance_position(i), c]) for i in range(n + G)]
        context = [i for i in range(k) if keys[i] != keys[k]] if k > 0 else []
        raw = bench.loop_eci(history[k], np.array(history), np.array(text), context)
        shown = [text[i] for i in range(max(k, n))]
        scores = np.concatenate([raw, shown])
        lo, hi = scores.min(), scores.max()
        raw = (raw - lo) / (hi - lo) if hi > lo else np.zeros_like(raw)
        return bench.loop_rgf(raw.reshape(trace.grids[0].shape), kernel_size, constant).ravel()

    first = 0 if reference and n else n
    return np.stack([run(first if j == 0 else n + j) for j in range(G)])
