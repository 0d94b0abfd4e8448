"""What explaining costs on top of generating: bare generate vs the shared trace vs each method.

On one model and the same samples, in one run:

- **bare**: ``model.hf.generate`` (greedy, exactly ``--max-new-tokens`` tokens), no hooks;
- **bare, batch B** (``--batch B > 1``): the same samples generated B at a time;
- **trace**: :func:`mmxai.trace.generate_trace` with the union of the logit-lens group's
  needs (what the evaluator records once per sample);
- **trace, batch B** (``--batch B > 1``): :func:`mmxai.trace.generate_traces`, B samples
  per call, with the same needs (what ``mmxai compare --batch B`` records);
- **logit-lens group**: that trace plus every method of the group explaining all tokens;
  the group is every method whose needs ask for no attentions, gradients or extra passes
  (they read the final hidden states only), unless ``--lens`` names it; with ``--batch``,
  also on the batched traces;
- **each method**: a trace with that method's own needs, plus its ``explain``.

Each line is the median over ``--repeats`` rounds (after one warm-up round; the runs are
interleaved within a round), per sample, and its ratio to bare generation. Target: the
logit-lens group adds at most 10% to bare generation.
On CPU the clock is process CPU time with torch on ``--threads`` threads (a shared machine
would put other jobs into wall time); on CUDA it is wall time with synchronisation.

``--shape qwen2-vl-2b`` builds a random model of Qwen2-VL-2B's shape (text hidden 1536,
28 layers, vocabulary 151,936; vision depth 32, width 1280) around the tiny Qwen2-VL
tokenizer and processor, for GPUs: ``python benchmarks/evaluator.py --shape qwen2-vl-2b
--device cuda --dtype bfloat16 --image-size 448``. ``--shape qwen2-vl-mini`` keeps the
full vocabulary on a narrow, shallow body (about 90M parameters) for CPUs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from mmxai.api import make_method
from mmxai.commands.common import open_model
from mmxai.commands.tiny import find_family
from mmxai.method import Method
from mmxai.model import Model
from mmxai.registry import manager
from mmxai.trace import Needs, generate_trace, generate_traces

PROMPT = "Describe the image."

#: Qwen2-VL-2B-Instruct's config, the parts that set the cost, and a CPU-sized "mini" with
#: the same vocabulary (so the unembedding, the trace's logsumexp and top-k cost what they
#: cost at full size) but a narrow, shallow body.
SHAPES = {
    "qwen2-vl-2b": (
        dict(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
             num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
             rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                              "mrope_section": [16, 24, 24]}),
        dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)),
    "qwen2-vl-mini": (
        dict(vocab_size=151_936, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
             num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True,
             rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                              "mrope_section": [8, 12, 12]}),
        dict(depth=6, embed_dim=256, hidden_size=512, num_heads=4, mlp_ratio=4)),
}


def qwen2vl_shaped(shape: str, device: torch.device, dtype: torch.dtype,
                   seed: int = 0) -> Model:
    """A random Qwen2-VL of ``shape`` with the tiny model's tokenizer and processor.

    Ids beyond the tiny tokenizer are suppressed so every generated token decodes; images
    may reach 1024 LLM tokens.
    """
    import transformers

    tiny = find_family("qwen2-vl").tiny()
    config = tiny.hf.config.to_dict()
    text_shape, vision_shape = SHAPES[shape]
    text = {k: v for k, v in config["text_config"].items() if k != "layer_types"}
    text.update(text_shape)  # layer_types is derived from the layer count
    vision = {**config["vision_config"], **vision_shape}
    config = transformers.Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=config["image_token_id"],
        video_token_id=config["video_token_id"],
        vision_start_token_id=config["vision_start_token_id"],
        vision_end_token_id=config["vision_end_token_id"],
        tie_word_embeddings=text["tie_word_embeddings"])
    config._attn_implementation = "eager"
    default = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            hf = transformers.Qwen2VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default)
    known = len(tiny.tokenizer)
    hf.generation_config = tiny.hf.generation_config
    hf.generation_config.suppress_tokens = sorted(
        set(hf.generation_config.suppress_tokens or []) | set(range(known, text["vocab_size"])))
    return type(tiny)(hf, tiny.processor, model_id=f"random {shape} shape",
                      max_pixels=28 * 28 * 1024)


def images(n: int, size: int) -> list[Image.Image]:
    """Colour ramps plus noise, one seed per sample: different images of the same size."""
    x = np.linspace(0, 255, size)[None, :].repeat(size, 0)
    out = []
    for seed in range(n):
        noise = np.random.default_rng(seed).normal(0, 25, (size, size, 3))
        pixels = np.stack([x, x.T, 255 - x], axis=-1) + noise
        out.append(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
    return out


def lens_group(methods: list[Method]) -> list[Method]:
    """Methods that read only the shared final hidden states (and top-k logits)."""
    return [m for m in methods
            if not (m.needs.attentions or m.needs.gradients or m.needs.extra_passes)]


class Timer:
    """Times several runs interleaved (round robin), so slow drifts of a shared machine hit
    them all alike; reports each run's median after one warm-up round."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clock = time.perf_counter if device.type == "cuda" else time.process_time

    def _once(self, fn: Callable[[], object]) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = self.clock()
        fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return self.clock() - start

    def __call__(self, runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
        times: dict[str, list[float]] = {name: [] for name in runs}
        failed: dict[str, str] = {}
        for round_ in range(repeats + 1):
            for name, fn in runs.items():
                if name in failed:
                    continue
                try:
                    seconds = self._once(fn)
                except Exception as exc:  # one method's problem must not hide the others
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    continue
                if round_:
                    times[name].append(seconds)
        return {(f"{name} (failed: {failed[name]})" if name in failed else name):
                statistics.median(times[name]) if name not in failed else float("nan")
                for name in runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:qwen2-vl",
                        help="hub name, folder or tiny:<family> (default tiny:qwen2-vl)")
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="instead of --model: a random model of this shape")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1,
                        help="also time bare generation and the trace B samples at a time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--methods", help="comma-separated (default: every registered one)")
    parser.add_argument("--lens", help="comma-separated logit-lens group (default: inferred)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = (qwen2vl_shaped(args.shape, device, dtype) if args.shape
             else open_model(args.model, device, dtype))
    names = args.methods.split(",") if args.methods else manager().names("methods")
    methods = [make_method(name) for name in names]
    group = ([m for m in methods if m.name in args.lens.split(",")] if args.lens
             else lens_group(methods))
    pictures = images(args.samples, args.image_size)
    inputs = [model.build_inputs([im], PROMPT) for im in pictures]
    tokens = args.max_new_tokens
    generate = dict(max_new_tokens=tokens, min_new_tokens=tokens)
    # what generate_trace passes too, so "bare" differs from "trace" by the recording only
    plain = dict(do_sample=False, num_beams=1, return_dict_in_generate=True, **generate)
    timer = Timer(device)

    def bare() -> None:
        with torch.no_grad():
            for x in inputs:
                model.hf.generate(**x.features, **plain)

    chunks = [inputs[i:i + args.batch] for i in range(0, len(inputs), args.batch)]

    def bare_batched() -> None:
        with torch.no_grad():
            for chunk in chunks:
                batch = model.collate([x.features for x in chunk])
                model.hf.generate(**batch, **plain, pad_token_id=model.pad_token_id())

    def traced(chosen: list[Method], explain: bool = True,
               batched: bool = False) -> Callable[[], None]:
        needs = Needs()
        for method in chosen:
            needs = needs | method.needs

        def run() -> None:
            for chunk in (chunks if batched else [[x] for x in inputs]):
                traces = (generate_traces(model, chunk, needs, **generate) if batched
                          else [generate_trace(model, chunk[0], needs, **generate)])
                for trace in traces if explain else ():
                    for method in chosen:
                        method.explain(trace, list(range(trace.n_generated)))
        return run

    runs = {"bare generate": bare}
    if args.batch > 1:
        runs[f"bare generate, batch {args.batch}"] = bare_batched
    runs["trace (logit-lens group's needs)"] = traced(group, explain=False)
    if args.batch > 1:
        runs[f"trace, batch {args.batch}"] = traced(group, explain=False, batched=True)
    runs[f"logit-lens group ({len(group)} methods)"] = traced(group)
    if args.batch > 1:
        runs[f"logit-lens group, batch {args.batch}"] = traced(group, batched=True)
    runs.update({method.name: traced([method]) for method in methods})
    n = len(inputs)
    seconds = {name: t / n for name, t in timer(runs, args.repeats).items()}
    base = seconds["bare generate"]

    grids = [g.shape for g in inputs[0].grids]
    clock = "wall" if device.type == "cuda" else f"CPU ({args.threads} thread(s))"
    print(f"model: {model.model_id} ({type(model.hf).__name__}, "
          f"{sum(p.numel() for p in model.hf.parameters()) / 1e6:.1f}M parameters, "
          f"{args.dtype}) on {device}; {n} samples of {args.image_size}px, image grids "
          f"{grids}, {tokens} new tokens; median of {args.repeats}, {clock} seconds")
    print(f"logit-lens group: {', '.join(m.name for m in group)}")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print()
    print("| run | s / sample | x bare |")
    print("|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.4f} | {value / base:.2f} |")


if __name__ == "__main__":
    main()
