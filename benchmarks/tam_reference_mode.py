"""TAM's ``reference_compatible`` mode against the default, at Qwen2-VL-2B's vocabulary.

The reference scores generated token 0 by the model's greedy prediction at the first prompt
position (Q2, docs/tam.md): an argmax over the whole vocabulary, one (V, d) product, which
no other part of TAM needs (every other map reads a few logit columns). The mode asks the
shared generation for it (``Needs(prompt_top=True)``): the row is added to the prefill's own
``lm_head`` call, which reads the unembedding once for both. A trace made elsewhere (teacher
forced, or without that need) computes it on first use (:meth:`mmxai.trace.Trace.top_class`),
once per trace, shared by every method.

This script times, on one sample's trace with a random bfloat16 unembedding of Qwen2-VL-2B's
size (151,936 x 1,536) and the tiny Qwen2-VL's sequence and image grid, in process CPU
seconds, median of ``--repeats``:

- the default mode;
- the reference mode on a trace that lacks the argmax (computed by the method);
- the reference mode on a trace whose generation recorded it (or a second method);
- the prefill's ``lm_head`` call with one row (the last position) and with two (plus the
  first prompt position): what recording it costs generation.

Run: ``nice python benchmarks/tam_reference_mode.py`` (about a minute; 1 GB of memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from mmxai.api import make_method
from mmxai.commands.common import open_model
from mmxai.trace import generate_trace

VOCAB, HIDDEN = 151_936, 1_536  # Qwen2-VL-2B-Instruct


class BigVocabulary:
    """The tiny model with a real-size unembedding (only what TAM reads of a model)."""

    def __init__(self, model, weight: torch.Tensor) -> None:
        self._model, self._weight = model, weight

    def unembedding(self) -> torch.Tensor:
        return self._weight

    def __getattr__(self, name):
        return getattr(self._model, name)


def fresh_trace(template, model, hidden):
    return dataclasses.replace(template, model=model, hidden=hidden, cache={}, _columns={})


def seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiny = open_model("tiny:qwen2-vl", torch.device("cpu"))
    from PIL import Image

    template = generate_trace(tiny, tiny.build_inputs([Image.new("RGB", (224, 224), "red")],
                                                      "Describe the image."),
                              make_method("tam").needs, max_new_tokens=16, min_new_tokens=16)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(VOCAB, HIDDEN, generator=generator).to(torch.bfloat16)
    model = BigVocabulary(tiny, weight)
    hidden = torch.randn(template.hidden.shape[0], HIDDEN, generator=generator)
    default, reference = make_method("tam"), make_method("tam", reference_compatible=True)
    no_eci = make_method("tam", reference_compatible=True, eci=False)
    later = list(range(1, template.n_generated))

    shared = fresh_trace(template, model, hidden)
    reference(shared)  # the argmax is now in this trace's cache
    last, both = (torch.randn(1, k, HIDDEN, generator=generator).to(torch.bfloat16)
                  for k in (1, 2))
    rows = [
        ("default mode", seconds(lambda: default(fresh_trace(template, model, hidden)),
                                 args.repeats)),
        ("reference mode, argmax not in the trace (computed)",
         seconds(lambda: reference(fresh_trace(template, model, hidden)), args.repeats)),
        ("reference mode, argmax recorded by generation or shared",
         seconds(lambda: reference(shared), args.repeats)),
        ("reference mode, eci=False, tokens 1.. (no argmax)",
         seconds(lambda: no_eci(fresh_trace(template, model, hidden), later), args.repeats)),
        ("prefill lm_head call, 1 row (generation without the need)",
         seconds(lambda: torch.nn.functional.linear(last, weight), args.repeats)),
        ("prefill lm_head call, 2 rows (generation recording the argmax)",
         seconds(lambda: torch.nn.functional.linear(both, weight), args.repeats)),
    ]
    base = rows[0][1]
    print(f"TAM per image, {template.n_generated} tokens, vocabulary {VOCAB:,} x {HIDDEN:,} "
          f"bfloat16, {args.threads} thread(s), median of {args.repeats} (CPU seconds)")
    for name, value in rows:
        print(f"  {name:<62} {1000 * value:8.1f} ms  {value / base:6.2f}x default")


if __name__ == "__main__":
    main()
