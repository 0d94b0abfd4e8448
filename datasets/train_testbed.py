"""Train the bundled testbed: a tiny LLaVA (CLIP vision tower + Llama decoder) that captions
the synthetic scenes, the way real MLLMs are trained.

0. **Vision pretraining.** The CLIP tower alone tags scenes with their caption's colour and
   shape words (a stand-in for the pretrained encoder a real MLLM starts from).
1. **Text pretraining.** The decoder alone, input and output embeddings tied, on a corpus
   where words must be copied from context (``red circle . the circle is red .``; then
   ``colour shape`` pairs among filler words and a caption that copies them in order), so
   that copy circuits exist before any image is seen.
2. **Alignment** (LLaVA stage 1). The decoder frozen, the projector (and, slowly, the
   vision tower) learn to caption scenes: image tokens must become something the frozen
   copy circuits read.
3. **Joint fine-tuning** of everything on captioning.

No loss touches an attribution map or a mask: the only targets are caption words (and the
text corpus). Run with ``nice -n 19 python -m mmxai.datasets.train_testbed --out DIR``;
CPU, one thread, deterministic for a seed; :class:`Recipe` holds the steps and rates.

The measurements (:func:`caption_accuracy`, :func:`readout`) are also what the tests use.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from PIL import Image

from mmxai.datasets.scenes import (
    COLOURS,
    DISTRACTOR_COLOURS,
    EVAL_SEED,
    EVAL_SIZE,
    PROMPT,
    SHAPES,
    SIZE,
    Scene,
    caption_for,
    generate_scene,
)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
#: Background words of the text corpus: they stand where an image has no object.
FILLER = ("the", "is", "and", "this", "there", "in", "on", "with", "it", "some")
WORDS = (("user", "assistant", ":", "describe", "image", ".", "a", "left", "of")
         + FILLER + tuple(COLOURS) + tuple(DISTRACTOR_COLOURS) + SHAPES)
PATCH = 8
GRID = SIZE // PATCH
MAX_NEW_TOKENS = 16
#: The LLaVA-1.5 chat layout: ``USER: <image>\\n{prompt} ASSISTANT:``.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


# -- the model ---------------------------------------------------------------------------
def build_tokenizer():
    """A word-level tokenizer: one word (or punctuation mark), one token, lower-cased."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL_TOKENS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
    )


def build_processor():
    """LlavaProcessor: a PIL CLIP image processor at the scene size and the tokenizer."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=PATCH,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def build_model(tokenizer, seed: int) -> torch.nn.Module:
    """``LlavaForConditionalGeneration`` with random weights: CLIP 3x128, Llama 4x128, tied."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                              num_attention_heads=4, image_size=SIZE, patch_size=PATCH)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=256, tie_word_embeddings=True,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=GRID * GRID, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# -- batches ------------------------------------------------------------------------------
class Batcher:
    """Turns scenes and text into padded training batches (ids, attention, labels)."""

    def __init__(self, processor) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        self.prompt_ids = self.prompt_features([generate_scene(EVAL_SEED, 0)])["input_ids"][0]

    def prompt_features(self, scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
        """The processor's features for the chat prompt of each scene, (B, L) ids."""
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": PROMPT}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        images = [Image.fromarray(s.image) for s in scenes]
        return dict(self.processor(images=images, text=[text] * len(scenes),
                                   return_tensors="pt"))

    def pixels(self, scenes: Sequence[Scene]) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels, what the processor computes, without PIL."""
        images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2)
        return (images.float() / 255.0 - self.mean) / self.std

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def pad(self, rows: Sequence[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        """Right-pad (ids, labels) rows; labels of -100 are not trained on."""
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad)
        labels = torch.full((len(rows), width), -100)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row_ids, row_labels) in enumerate(rows):
            ids[i, :len(row_ids)] = torch.tensor(row_ids)
            labels[i, :len(row_labels)] = torch.tensor(row_labels)
            attention[i, :len(row_ids)] = 1
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}

    def captioning(self, scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
        """Image + prompt, then the caption and ``</s>``: the loss is on the answer only."""
        prompt = self.prompt_ids.tolist()
        rows = []
        for scene in scenes:
            answer = self.ids(scene.caption) + [self.tokenizer.eos_token_id]
            rows.append((prompt + answer, [-100] * len(prompt) + answer))
        batch = self.pad(rows)
        batch["pixel_values"] = self.pixels(scenes)
        return batch

    def text(self, examples: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Text-only ``(context, answer)`` pairs: ``<s>`` + context + answer + ``</s>``."""
        rows = []
        for context, answer in examples:
            head = [self.tokenizer.bos_token_id] + self.ids(context)
            tail = self.ids(answer) + [self.tokenizer.eos_token_id]
            rows.append((head + tail, [-100] * len(head) + tail))
        return self.pad(rows)


def copy_example(rng: np.random.Generator, kinds: Sequence[int] = (0, 1, 2)) -> tuple[str, str]:
    """A short text whose answer copies attribute words from its context."""
    n = int(rng.integers(1, 4))
    colours = [str(c) for c in rng.choice(list(COLOURS), size=n, replace=False)]
    shapes = [str(s) for s in rng.choice(SHAPES, size=n, replace=False)]
    pairs = list(zip(colours, shapes, strict=True))
    kind = int(rng.choice(kinds))
    if kind == 0:  # "red circle . the circle is red ."
        context = " and ".join(f"{c} {s}" for c, s in pairs) + " ."
        answer = " ".join(f"the {s} is {c} ." for c, s in pairs)
    elif kind == 1:  # "the circle is red . a red circle ."
        context = " ".join(f"the {s} is {c} ." for c, s in pairs)
        answer = caption_for(pairs)
    else:  # pairs among filler words, then a caption copying them in order
        words = [str(w) for w in rng.choice(FILLER, size=int(rng.integers(0, 24)))]
        slots = np.sort(rng.integers(0, len(words) + 1, size=n))
        for offset, (slot, (c, s)) in enumerate(zip(slots, pairs, strict=True)):
            words[slot + 2 * offset:slot + 2 * offset] = [c, s]
        if rng.random() < 0.3:  # an achromatic pair the caption must not copy
            c, s = str(rng.choice(list(DISTRACTOR_COLOURS))), str(rng.choice(SHAPES))
            slot = int(rng.integers(0, len(words) + 1))
            words[slot:slot] = [c, s]
        context = "user : " + " ".join(words) + " describe the image . assistant :"
        answer = caption_for(pairs)
    return context, answer


# -- training -----------------------------------------------------------------------------
def schedule(step: int, steps: int, lr: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train_stage(model: torch.nn.Module, groups: Sequence[tuple[list[torch.nn.Parameter], float]],
                batches: Iterator[dict[str, torch.Tensor]], steps: int, name: str,
                log_every: int = 100) -> list[float]:
    """AdamW over parameter ``groups`` of (parameters, peak lr) for ``steps`` batches;
    returns the loss curve."""
    optimizer = torch.optim.AdamW([{"params": p, "lr": lr} for p, lr in groups],
                                  weight_decay=0.01)
    params = [p for group, _ in groups for p in group]
    model.train()
    losses = []
    start = time.time()
    for step in range(steps):
        for group, (_, lr) in zip(optimizer.param_groups, groups, strict=True):
            group["lr"] = schedule(step, steps, lr)
        device = next(model.parameters()).device
        loss = model(**{k: v.to(device) for k, v in next(batches).items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % log_every == 0:
            recent = float(np.mean(losses[-log_every:]))
            print(f"[{name}] step {step + 1}/{steps} loss {recent:.4f} "
                  f"({time.time() - start:.0f}s)", flush=True)
    model.eval()
    return losses


class Tagger(torch.nn.Module):
    """Stage 0: the vision tower predicts which caption words a scene has (multi-label).

    It stands in for the vision encoder's own pretraining (CLIP's, on image-text pairs):
    the target is the bag of colour and shape words of the caption, read from the maximum
    over the patch tokens that LLaVA passes on; the linear head is discarded afterwards.
    """

    def __init__(self, model: torch.nn.Module, words: Sequence[str]) -> None:
        super().__init__()
        self.tower = model.model.vision_tower
        self.words = list(words)
        self.head = torch.nn.Linear(self.tower.config.hidden_size, len(self.words))

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        states = self.tower(pixel_values=pixel_values, output_hidden_states=True)
        patches = states.hidden_states[-1][:, 1:]  # (B, N, d), CLS dropped as LLaVA does
        logits = self.head(patches.max(dim=1).values)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return SimpleNamespace(loss=loss)


def tag_batches(batcher: Batcher, words: Sequence[str], seed: int,
                batch_size: int) -> Iterator[dict]:
    index = 0
    while True:
        scenes = [generate_scene(seed, index + i) for i in range(batch_size)]
        index += batch_size
        labels = torch.tensor([[float(w in s.word_labels()) for w in words] for s in scenes])
        yield {"pixel_values": batcher.pixels(scenes), "labels": labels}


def scene_batches(batcher: Batcher, seed: int, batch_size: int) -> Iterator[dict]:
    index = 0
    while True:
        scenes = [generate_scene(seed, index + i) for i in range(batch_size)]
        index += batch_size
        yield batcher.captioning(scenes)


def text_batches(batcher: Batcher, rng: np.random.Generator, batch_size: int,
                 kinds: Sequence[int] = (0, 1, 2)) -> Iterator[dict]:
    while True:
        yield batcher.text([copy_example(rng, kinds) for _ in range(batch_size)])


# -- measurements -------------------------------------------------------------------------
@torch.no_grad()
def captions(model: torch.nn.Module, processor, scenes: Sequence[Scene],
             batch_size: int = 50) -> list[str]:
    """Greedy captions of ``scenes`` through the processor (every prompt has one length)."""
    batcher = Batcher(processor)
    out = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start:start + batch_size]
        features = to_device(batcher.prompt_features(chunk), model)
        generated = model.generate(**features, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                   num_beams=1)
        answers = generated[:, features["input_ids"].shape[1]:]
        out += processor.tokenizer.batch_decode(answers, skip_special_tokens=True)
    return [" ".join(text.split()) for text in out]


def to_device(features: dict, model: torch.nn.Module) -> dict:
    device = next(model.parameters()).device
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in features.items()}


def caption_accuracy(model: torch.nn.Module, processor, scenes: Sequence[Scene]) -> float:
    """Exact-match rate of greedy captions against the scenes' captions."""
    predicted = captions(model, processor, scenes)
    return float(np.mean([p == s.caption for p, s in zip(predicted, scenes, strict=True)]))


def patch_coverage(mask: np.ndarray) -> np.ndarray:
    """(GRID*GRID,) fraction of each patch (row-major) covered by a boolean (H, W) mask."""
    return mask.reshape(GRID, PATCH, GRID, PATCH).mean(axis=(1, 3)).reshape(-1)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating ``positive`` (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


@torch.no_grad()
def readout(model: torch.nn.Module, processor, scenes: Sequence[Scene]) -> dict[str, float]:
    """How well ``lm_head`` reads the object words off the last layer at image positions.

    For each scene and each content word of its caption, the word's logit at the GRID*GRID
    image positions (final-normed last-layer states through ``lm_head``) is scored against
    the patches the object touches: ``auroc`` (object patches vs all other patches, mean
    over words) and ``pointing`` (the arg-max patch touches the object; ``pointing_chance``
    is the mean fraction of patches an object touches, what a random patch would score).
    """
    batcher = Batcher(processor)
    tokenizer = processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    aurocs, hits, chance = [], [], []
    for start in range(0, len(scenes), 50):
        chunk = scenes[start:start + 50]
        features = to_device(batcher.prompt_features(chunk), model)
        out = model(**features, output_hidden_states=True)
        hidden = model.model.language_model.norm(out.hidden_states[-1])
        for row, scene in enumerate(chunk):
            positions = (features["input_ids"][row] == image_id).nonzero()[:, 0].cpu()
            states = hidden[row, positions]  # (GRID*GRID, d)
            for word, label in scene.word_labels().items():
                column = model.lm_head.weight[tokenizer.convert_tokens_to_ids(word)]
                scores = (states @ column).float().cpu().numpy()
                inside = patch_coverage(scene.mask == label) > 0
                aurocs.append(auroc(scores, inside))
                hits.append(bool(inside[int(scores.argmax())]))
                chance.append(float(inside.mean()))
    return {"auroc": float(np.mean(aurocs)), "pointing": float(np.mean(hits)),
            "pointing_chance": float(np.mean(chance)), "n_words": len(aurocs)}


def eval_scenes(n: int = EVAL_SIZE) -> list[Scene]:
    return [generate_scene(EVAL_SEED, i) for i in range(n)]


# -- the recipe ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """Steps and peak learning rates of each stage. After stage 0 the vision tower trains
    only slowly during alignment and is frozen in joint fine-tuning, as LLaVA-1.5 keeps its
    CLIP encoder frozen: captioning gradients otherwise wash out what stage 0 learned
    (docs/benchmark.md gives the runs)."""

    vision_steps: int = 2000
    vision_lr: float = 5e-3
    copy_steps: int = 800  # text stage, part 1: the short copy texts only
    text_steps: int = 1000  # text stage, part 2: all texts, filler contexts included
    text_lrs: tuple[float, float] = (3e-3, 2e-3)
    align_steps: int = 600
    align_lr: float = 2e-3
    joint_steps: int = 3000
    joint_lr: float = 2e-3
    tower_scale: tuple[float, float] = (0.1, 0.0)  # vision-tower lr factor in stages 2, 3
    batch_size: int = 32

    def scaled(self, factor: float) -> Recipe:
        """The same recipe with every step count multiplied (short smoke runs)."""
        counts = ("vision_steps", "copy_steps", "text_steps", "align_steps", "joint_steps")
        return replace(self, **{k: max(1, round(getattr(self, k) * factor)) for k in counts})


def train(seed: int, recipe: Recipe = Recipe(),
          device: str = "cpu") -> tuple[torch.nn.Module, object, dict]:
    """Run the four stages on ``device``; returns the model (back on the CPU), the
    processor and the run's record."""
    streams = {"align": seed, "joint": seed + 10_000, "vision": seed + 20_000}
    if EVAL_SEED in streams.values():
        raise ValueError(f"seed {seed} would train on the evaluation split's stream")
    processor = build_processor()
    model = build_model(processor.tokenizer, seed).to(device)
    batcher = Batcher(processor)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[torch.nn.Parameter]] = {"language": [], "tower": [], "projector": []}
    for name, param in model.named_parameters():  # the tied lm_head is the embedding
        key = ("language" if name.startswith("model.language_model")
               else "tower" if name.startswith("model.vision_tower") else "projector")
        parts[key].append(param)
    record: dict = {"seed": seed, "recipe": asdict(recipe)}
    batch = recipe.batch_size
    losses = {}
    start = time.time()

    words = tuple(COLOURS) + SHAPES
    tagger = Tagger(model, words).to(device)
    losses["0 vision"] = train_stage(
        tagger, [(list(tagger.parameters()), recipe.vision_lr)],
        tag_batches(batcher, words, streams["vision"], 2 * batch), recipe.vision_steps,
        "0 vision")

    losses["1 text"] = train_stage(
        model, [(parts["language"], recipe.text_lrs[0])],
        text_batches(batcher, rng, batch, kinds=(0, 1)), recipe.copy_steps, "1 text")
    losses["1 text"] += train_stage(
        model, [(parts["language"], recipe.text_lrs[1])],
        text_batches(batcher, rng, batch), recipe.text_steps, "1 text")

    for param in parts["language"]:
        param.requires_grad_(False)
    losses["2 align"] = train_stage(
        model, [(parts["projector"], recipe.align_lr),
                (parts["tower"], recipe.align_lr * recipe.tower_scale[0])],
        scene_batches(batcher, streams["align"], batch), recipe.align_steps, "2 align")
    pause = time.time()  # a look at held-out captions, not counted as training time
    record["after_align"] = {"exact_match": caption_accuracy(model, processor, eval_scenes(100))}
    start += time.time() - pause
    for param in parts["language"]:
        param.requires_grad_(True)
    groups = [(parts["language"] + parts["projector"], recipe.joint_lr)]
    if recipe.tower_scale[1] > 0:
        groups.append((parts["tower"], recipe.joint_lr * recipe.tower_scale[1]))
    else:  # frozen: no gradients computed, as in LLaVA-1.5's second stage
        for param in parts["tower"]:
            param.requires_grad_(False)

    losses["3 joint"] = train_stage(
        model, groups,
        scene_batches(batcher, streams["joint"], batch), recipe.joint_steps, "3 joint")
    record["train_seconds"] = round(time.time() - start, 1)
    record["device"] = str(device)
    model.to("cpu")
    record["final_losses"] = {k: round(float(np.mean(v[-50:])), 4) for k, v in losses.items()}
    return model, processor, record


# -- the model card -----------------------------------------------------------------------
def scores_section(record: dict) -> str:
    """The card's table of method scores: the default ``mmxai compare`` run's leaderboard."""
    scores = record.get("scores")
    if not scores:
        return ""
    return f"""
## Attribution methods on the held-out split
`{scores["command"]}`: {scores["seconds"]:.0f} s on {scores["machine"]}. The table is
that run's `leaderboard.md`, metrics as in `docs/evaluation.md`, discussion in
`docs/benchmark.md`.

{scores["table"].strip()}
"""


def model_card(record: dict) -> str:
    """The bundled model's README: what it is, how it was trained, what it scores."""
    r = record["recipe"]
    batch = r["batch_size"]
    readout_ = record["readout"]
    minutes = record["train_seconds"] / 60
    where = ("one CPU thread" if record.get("device", "cpu") == "cpu"
             else f"`{record['device']}`")
    joint = ("decoder and projector, the vision tower frozen (as LLaVA-1.5 keeps its encoder "
             "frozen)" if not r["tower_scale"][1]
             else f"everything, the vision tower at {r['tower_scale'][1]:g}x")
    return f"""# mmxai testbed: a tiny LLaVA that captions the synthetic scenes

A real `LlavaForConditionalGeneration` (CLIP vision tower + Llama decoder), small enough to
ship with mmxai ({record["parameters"]:,} parameters, {record["weights_bytes"] / 1e6:.1f} MB of
float32 safetensors) and trained here, on CPU, to caption the scenes of
`mmxai.datasets.scenes`. It is the default model of `mmxai compare`: the bundled benchmark
measures attribution methods on it against exact object masks (see `docs/benchmark.md`).
It is not a general-purpose model: it knows {len(WORDS)} words and one prompt.

## Architecture
- Vision: CLIP, 64x64 input, 8-px patches (an 8x8 grid, CLS dropped as LLaVA-1.5 does),
  3 layers, width 128, 4 heads; the last layer feeds a 2-layer GELU projector.
- Decoder: Llama, 4 layers, width 128, 4 heads, MLP 256, RoPE; input and output embeddings
  tied (`tie_word_embeddings=True`).
- Tokenizer: word-level (`tokenizers` WordLevel in `PreTrainedTokenizerFast`), lower-cased,
  one word or punctuation mark per token; special tokens `<pad> <unk> <s> </s> <image>`.
- Processor: `LlavaProcessor` with `CLIPImageProcessorPil` at 64 px; chat template
  `USER: <image>\\n{{prompt}} ASSISTANT:`; the prompt is always `{PROMPT}`.

## Training (seed {record["seed"]}, {minutes:.1f} min on {where})
No loss touches a mask or an attribution map: the targets are caption words only.
0. Vision pretraining ({r["vision_steps"]} steps, batch {2 * batch}, lr {r["vision_lr"]:g}): the
   CLIP tower with a linear head (discarded) predicts which colour and shape words a
   scene's caption has, from the maximum over its patch tokens. It stands in for the
   vision encoder's own pretraining (CLIP's, in LLaVA).
1. Text pretraining (batch {batch}): the decoder alone, on text that must be copied from
   context: {r["copy_steps"]} steps at lr {r["text_lrs"][0]:g} on `red circle . the circle is red .`
   and `the circle is red . a red circle .` texts, then {r["text_steps"]} steps at lr
   {r["text_lrs"][1]:g} adding captions of `colour shape` pairs scattered among filler words
   (and an achromatic pair the caption must skip), so that copy circuits exist.
2. Alignment ({r["align_steps"]} steps, batch {batch}, lr {r["align_lr"]:g}, the vision tower at
   {r["tower_scale"][0]:g}x): decoder frozen; projector and vision tower learn to caption scenes
   (LLaVA's stage 1). Held-out exact match after this stage:
   {record["after_align"]["exact_match"]:.1%} (100 scenes).
3. Joint fine-tuning ({r["joint_steps"]} steps, batch {batch}, lr {r["joint_lr"]:g}): {joint}, on
   captioning (LLaVA's stage 2).

AdamW (weight decay 0.01), linear warm-up over 50 steps then cosine decay to a tenth, per
stage; gradient clipping at 1. Training scenes come from generator streams
{record["seed"]}, {record["seed"] + 10_000} and {record["seed"] + 20_000}, never the held-out
stream {EVAL_SEED}. Final training losses (mean of the last 50 steps):
{", ".join(f"{k} {v}" for k, v in record["final_losses"].items())}. Versions:
{", ".join(f"{k} {v}" for k, v in record["versions"].items())}.

Reproduce (bit-identical on the same versions, one thread):
`nice -n 19 python -m mmxai.datasets.train_testbed --out DIR --seed {record["seed"]}`.

## Evaluation ({record["eval_size"]} held-out scenes, the shipped split)
| measure | value |
|---|---|
| caption exact match (greedy) | {record["exact_match"]:.1%} |
| lm_head read-out AUROC, object patches vs the rest | {readout_["auroc"]:.3f} |
| lm_head read-out pointing (arg-max patch on the object) | {readout_["pointing"]:.1%} |

The read-out takes, for each scene and each colour or shape word of its caption, that
word's logit at the 64 image positions (last-layer states, final norm, `lm_head`) and
scores it against the patches the object's mask touches ({readout_["n_words"]} words).
Chance is 0.5 AUROC; a random patch lands on the object {readout_["pointing_chance"]:.1%} of
the time.

{scores_section(record)}
## Limitations
Trained on one synthetic distribution; captions outside the grammar, other prompts and
other image sizes are out of scope. Its internals are shaped by this small recipe and need
not resemble a large MLLM's; the benchmark's documentation says what that allows.
"""


def add_scores(folder: Path, leaderboard_md: Path, command: str, seconds: float,
               machine: str) -> None:
    """Record a default run's leaderboard in ``training.json`` and rewrite the card."""
    record = json.loads((folder / "training.json").read_text())
    record["scores"] = {"command": command, "seconds": seconds, "machine": machine,
                        "table": leaderboard_md.read_text()}
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(record))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scores", type=Path, metavar="LEADERBOARD_MD",
                        help="do not train: add this default run's leaderboard to the card "
                             "in --out (with --command, --seconds, --machine)")
    parser.add_argument("--command", default="mmxai compare")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--machine", default="2 CPU cores")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every stage's steps (e.g. 0.05 for a smoke run)")
    parser.add_argument("--eval-size", type=int, default=EVAL_SIZE)
    parser.add_argument("--device", default="cpu",
                        help="torch device for training, e.g. cuda (default cpu: the bundled "
                             "weights were trained there; another device gives other weights)")
    args = parser.parse_args(argv)
    if args.scores:
        add_scores(args.out, args.scores, args.command, args.seconds, args.machine)
        return
    torch.set_num_threads(1)  # deterministic, and the machine is shared
    model, processor, record = train(args.seed, Recipe().scaled(args.scale), args.device)
    scenes = eval_scenes(args.eval_size)
    record["eval_size"] = len(scenes)
    record["exact_match"] = caption_accuracy(model, processor, scenes)
    record["readout"] = readout(model, processor, scenes)
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "numpy": np.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    record["weights_bytes"] = (args.out / "model.safetensors").stat().st_size
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "README.md").write_text(model_card(record))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
