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
text corpus). Run with ``nice -n 19 python -m mmxai.testbed.train --out DIR``;
CPU, one thread, deterministic for a seed; :class:`Recipe` holds the steps and rates.
``--geometry 16`` trains the 16x16-token model on 128-px scenes
(:data:`mmxai.testbed.scenes.GEOMETRY_16`) with :data:`RECIPES` ``["16"]``.

The run checkpoints (model, optimiser, step, every RNG state, stage, data-stream
position) into ``--checkpoint DIR`` every few minutes and at each stage's end; running the
same command again continues where it stopped, and gives the same weights, bit for bit on
one device, as a run that never stopped.

The measurements (:func:`caption_accuracy`, :func:`readout`) are also what the tests use.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from PIL import Image

from mmxai.testbed.scenes import (
    COLOURS,
    DISTRACTOR_COLOURS,
    EVAL_SEED,
    EVAL_SIZE,
    GEOMETRIES,
    GEOMETRY_8,
    PROMPT,
    SHAPES,
    SIZE,
    Geometry,
    Scene,
    caption_for,
    generate_scene,
    resolve_geometry,
)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
#: Background words of the text corpus: they stand where an image has no object.
FILLER = ("the", "is", "and", "this", "there", "in", "on", "with", "it", "some")
WORDS = (("user", "assistant", ":", "describe", "image", ".", "a", "left", "of")
         + FILLER + tuple(COLOURS) + tuple(DISTRACTOR_COLOURS) + SHAPES)
PATCH = GEOMETRY_8.patch  # the shipped 8x8 testbed's; GEOMETRY_16 has its own
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


def build_processor(geometry: Geometry | str = GEOMETRY_8):
    """LlavaProcessor: a PIL CLIP image processor at the scene size and the tokenizer."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    geometry = resolve_geometry(geometry)
    size = geometry.size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=build_tokenizer(), patch_size=geometry.patch,
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )


def processor_geometry(processor) -> Geometry:
    """The scene geometry a processor was built for (by its crop size and patch size)."""
    size, patch = processor.image_processor.crop_size["height"], processor.patch_size
    for geometry in GEOMETRIES.values():
        if (geometry.size, geometry.patch) == (size, patch):
            return geometry
    raise ValueError(f"no scene geometry of {size} px with {patch}-px patches")


def build_model(tokenizer, seed: int, geometry: Geometry | str = GEOMETRY_8) -> torch.nn.Module:
    """``LlavaForConditionalGeneration`` with random weights: CLIP 3x128, Llama 4x128, tied."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    geometry = resolve_geometry(geometry)
    grid = geometry.grid
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                              num_attention_heads=4, image_size=geometry.size,
                              patch_size=geometry.patch)
    # Room for the image tokens, the chat layout and the longest caption (16 tokens).
    positions = max(256, 2 * grid * grid)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=positions, tie_word_embeddings=True,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=grid * grid, tie_word_embeddings=True)
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
        self.geometry = processor_geometry(processor)
        ip = processor.image_processor
        self.mean = torch.tensor(ip.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(ip.image_std).view(1, 3, 1, 1)
        blank = Image.new("RGB", (self.geometry.size, self.geometry.size))
        self.prompt_ids = self.image_features([blank])["input_ids"][0]

    def prompt_features(self, scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
        """The processor's features for the chat prompt of each scene, (B, L) ids."""
        return self.image_features([Image.fromarray(s.image) for s in scenes])

    def image_features(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": PROMPT}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        return dict(self.processor(images=list(images), text=[text] * len(images),
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
                batch_size: int, start: int = 0) -> Iterator[dict]:
    """Stage-0 batches of stream ``seed`` from scene ``start`` on."""
    index = start
    while True:
        scenes = [generate_scene(seed, index + i, batcher.geometry) for i in range(batch_size)]
        index += batch_size
        labels = torch.tensor([[float(w in s.word_labels()) for w in words] for s in scenes])
        yield {"pixel_values": batcher.pixels(scenes), "labels": labels}


def scene_batches(batcher: Batcher, seed: int, batch_size: int,
                  start: int = 0) -> Iterator[dict]:
    """Captioning batches of stream ``seed`` from scene ``start`` on."""
    index = start
    while True:
        scenes = [generate_scene(seed, index + i, batcher.geometry) for i in range(batch_size)]
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


def patch_coverage(mask: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """(grid*grid,) fraction of each ``patch``-px patch (row-major) covered by a boolean
    (H, W) mask, grid = H / patch."""
    rows, cols = mask.shape[0] // patch, mask.shape[1] // patch
    return mask.reshape(rows, patch, cols, patch).mean(axis=(1, 3)).reshape(-1)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` separating ``positive`` (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


@torch.no_grad()
def readout(model: torch.nn.Module, processor, scenes: Sequence[Scene]) -> dict[str, float]:
    """How well ``lm_head`` reads the object words off the last layer at image positions.

    For each scene and each content word of its caption, the word's logit at the grid*grid
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
            states = hidden[row, positions]  # (grid*grid, d)
            for word, label in scene.word_labels().items():
                column = model.lm_head.weight[tokenizer.convert_tokens_to_ids(word)]
                scores = (states @ column).float().cpu().numpy()
                inside = patch_coverage(scene.mask == label, processor.patch_size) > 0
                aurocs.append(auroc(scores, inside))
                hits.append(bool(inside[int(scores.argmax())]))
                chance.append(float(inside.mean()))
    return {"auroc": float(np.mean(aurocs)), "pointing": float(np.mean(hits)),
            "pointing_chance": float(np.mean(chance)), "n_words": len(aurocs)}


def eval_scenes(n: int = EVAL_SIZE, geometry: Geometry | str = GEOMETRY_8) -> list[Scene]:
    """The first ``n`` scenes of the held-out stream in ``geometry``."""
    return [generate_scene(EVAL_SEED, i, geometry) for i in range(n)]


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


#: The recipe of each geometry (``--geometry``); the 8x8 one made the shipped testbed. The
#: 16x16 one doubles joint fine-tuning: with the 8x8 recipe its captions reached 93.5%
#: exact match, with the loss still falling (docs/benchmark.md).
RECIPES: dict[str, Recipe] = {"8": Recipe(), "16": Recipe(joint_steps=6000)}
#: Stage-0 targets: the colour and shape words a scene's caption contains.
TAG_WORDS = tuple(COLOURS) + SHAPES
CHECKPOINT = "latest.pt"


def stage_plan(recipe: Recipe) -> list[tuple[str, int]]:
    """(name, steps) of each stage in order; ``2 check`` is the held-out look after
    alignment (no steps). Names up to the first space are the stages of ``final_losses``."""
    return [("0 vision", recipe.vision_steps), ("1 copy", recipe.copy_steps),
            ("1 text", recipe.text_steps), ("2 align", recipe.align_steps), ("2 check", 0),
            ("3 joint", recipe.joint_steps)]


def loss_key(stage: str) -> str:
    return "1 text" if stage == "1 copy" else stage


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Trainer:
    """Runs the recipe's stages with checkpoints; :meth:`run` continues a stopped run.

    Everything a step depends on is in the checkpoint: model and stage-0 head weights, the
    optimiser of the current stage, the stage and step, the RNG states (torch, CUDA,
    numpy's global and the text corpus's generator, python's) and the scene streams'
    positions. Resuming restores them, so the remaining steps compute what they would have
    computed without the stop.
    """

    def __init__(self, seed: int, recipe: Recipe, geometry: Geometry | str = GEOMETRY_8,
                 device: str = "cpu", checkpoint: Path | None = None,
                 checkpoint_minutes: float = 5.0, stop_after: int | None = None,
                 log_minutes: float = 2.0, check_size: int = 100,
                 start_from: Path | None = None) -> None:
        self.seed, self.recipe = seed, recipe
        self.geometry = resolve_geometry(geometry)
        self.device = torch.device(device)
        self.streams = {"align": seed, "joint": seed + 10_000, "vision": seed + 20_000}
        if EVAL_SEED in self.streams.values():
            raise ValueError(f"seed {seed} would train on the evaluation split's stream")
        self.checkpoint = checkpoint
        self.checkpoint_seconds = 60 * checkpoint_minutes
        self.stop_after = stop_after
        self.log_seconds = 60 * log_minutes
        self.check_size = check_size
        self.processor = build_processor(self.geometry)
        self.batcher = Batcher(self.processor)
        # The order of the random draws is the original script's: model, then stage-0 head.
        self.model = build_model(self.processor.tokenizer, seed, self.geometry).to(self.device)
        self.tagger = Tagger(self.model, TAG_WORDS).to(self.device)
        self.text_rng = np.random.default_rng(seed)
        self.parts: dict[str, list[torch.nn.Parameter]] = {"language": [], "tower": [],
                                                           "projector": []}
        for name, param in self.model.named_parameters():  # the tied lm_head is the embedding
            key = ("language" if name.startswith("model.language_model")
                   else "tower" if name.startswith("model.vision_tower") else "projector")
            self.parts[key].append(param)
        self.plan = stage_plan(recipe)
        self.stage, self.step = 0, 0
        self.losses: dict[str, list[float]] = {}
        self.record: dict = {"seed": seed, "geometry": asdict(self.geometry) | {
            "grid": self.geometry.grid}, "recipe": asdict(recipe)}
        self.seconds = 0.0  # time spent in training steps, over every session
        self.sessions: list[dict] = []
        self.optimizer_state: dict | None = None
        if checkpoint is not None and (checkpoint / CHECKPOINT).is_file():
            self.load(checkpoint / CHECKPOINT)
        elif start_from is not None:
            self.load(start_from, stage_end=True)
        if not self.done:
            self.sessions.append({"device": self.device_name(), "torch": torch.__version__,
                                  "from": self.position(), "seconds": 0.0})

    # -- state --------------------------------------------------------------------------
    def config(self) -> dict:
        """What a checkpoint must match to be continued by this run."""
        return {"seed": self.seed, "recipe": asdict(self.recipe),
                "geometry": asdict(self.geometry)}

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    def position(self) -> str:
        return f"{self.plan[self.stage][0]} step {self.step}" if not self.done else "done"

    @property
    def done(self) -> bool:
        return self.stage >= len(self.plan)

    def global_step(self) -> int:
        return sum(steps for _, steps in self.plan[:self.stage]) + self.step

    def stream_position(self) -> int | None:
        """Index of the next scene the current stage's stream yields (None: text stages,
        whose position is their generator's state)."""
        if self.done:
            return None
        name = self.plan[self.stage][0]
        per_step = {"0 vision": 2 * self.recipe.batch_size, "2 align": self.recipe.batch_size,
                    "3 joint": self.recipe.batch_size}.get(name)
        return None if per_step is None else self.step * per_step

    def save(self, optimizer: torch.optim.Optimizer | None = None,
             copy_as: str | None = None) -> None:
        """Write the checkpoint atomically (a stop mid-write leaves the previous one)."""
        if self.checkpoint is None:
            return
        self.checkpoint.mkdir(parents=True, exist_ok=True)
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
               "python": random.getstate(), "text": self.text_rng.bit_generator.state}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {
            "config": self.config(), "stage": self.stage, "step": self.step,
            "stage_name": self.plan[self.stage][0] if not self.done else "done",
            "stream_position": self.stream_position(),
            "model": self.model.state_dict(), "head": self.tagger.head.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "rng": rng, "losses": self.losses, "record": self.record,
            "seconds": self.seconds, "sessions": self.sessions,
        }
        path = self.checkpoint / CHECKPOINT
        temporary = path.with_suffix(".tmp")
        torch.save(state, temporary)
        os.replace(temporary, path)
        if copy_as is not None:  # what a stage left, to restart a later stage from
            shutil.copyfile(path, self.checkpoint / copy_as)
        self.last_save = time.monotonic()

    def load(self, path: Path, stage_end: bool = False) -> None:
        """Continue from the checkpoint ``path`` of this run; with ``stage_end``, start from
        what a stage of another run of this seed and geometry left (an ``end-*.pt`` file),
        whatever recipe made it, and run the remaining stages of this run's recipe."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        config = self.config()
        if stage_end:
            same = all(state["config"][k] == config[k] for k in ("seed", "geometry"))
            if not same or state["optimizer"] is not None or state["step"]:
                raise SystemExit(f"{path} is not what a stage of a run of seed {self.seed} "
                                 f"in geometry {self.geometry.name} left at its end")
        elif state["config"] != config:
            raise SystemExit(f"{path} is a checkpoint of another run ({state['config']}), "
                             f"not of this one ({config}): use another --checkpoint "
                             "folder, or delete it to start again")
        self.model.load_state_dict(state["model"])
        self.tagger.head.load_state_dict(state["head"])
        self.stage, self.step = state["stage"], state["step"]
        self.optimizer_state = state["optimizer"]
        self.losses, self.record = state["losses"], state["record"]
        self.seconds, self.sessions = state["seconds"], state["sessions"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.text_rng.bit_generator.state = rng["text"]
        if stage_end:  # the stages before this one followed the recipe recorded here
            self.record["recipe"] = config["recipe"]
            self.record["started_from"] = {"checkpoint": path.name, "stage": self.position(),
                                           "recipe": state["config"]["recipe"]}
        print(f"{'started' if stage_end else 'resumed'} from {path}: {self.position()} "
              f"({duration(self.seconds)} trained so far)", flush=True)

    # -- stages -------------------------------------------------------------------------
    def setup(self, name: str) -> tuple[torch.nn.Module, list, Iterator[dict]]:
        """The module, (parameters, peak lr) groups and batches (from the current step) of
        stage ``name``; sets which parameters need gradients."""
        recipe, batch, step = self.recipe, self.recipe.batch_size, self.step
        frozen_tower = name == "3 joint" and not recipe.tower_scale[1]
        for key, params in self.parts.items():
            # Alignment freezes the decoder; joint training the tower, as LLaVA-1.5 does.
            trained = not ((name == "2 align" and key == "language")
                           or (frozen_tower and key == "tower"))
            for param in params:
                param.requires_grad_(trained)
        if name == "0 vision":
            return (self.tagger, [(list(self.tagger.parameters()), recipe.vision_lr)],
                    tag_batches(self.batcher, TAG_WORDS, self.streams["vision"], 2 * batch,
                                start=step * 2 * batch))
        if name == "1 copy":  # the text stream is the generator's state: no offset
            return (self.model, [(self.parts["language"], recipe.text_lrs[0])],
                    text_batches(self.batcher, self.text_rng, batch, kinds=(0, 1)))
        if name == "1 text":
            return (self.model, [(self.parts["language"], recipe.text_lrs[1])],
                    text_batches(self.batcher, self.text_rng, batch))
        if name == "2 align":
            return (self.model, [(self.parts["projector"], recipe.align_lr),
                                 (self.parts["tower"], recipe.align_lr * recipe.tower_scale[0])],
                    scene_batches(self.batcher, self.streams["align"], batch, start=step * batch))
        if name == "3 joint":
            groups = [(self.parts["language"] + self.parts["projector"], recipe.joint_lr)]
            if not frozen_tower:
                groups.append((self.parts["tower"], recipe.joint_lr * recipe.tower_scale[1]))
            return (self.model, groups,
                    scene_batches(self.batcher, self.streams["joint"], batch, start=step * batch))
        raise ValueError(f"unknown stage {name!r}")

    def step_cost(self, name: str) -> float:
        """A rough relative cost of one step (token-layer passes), for the ETA."""
        config = self.model.config
        vision = (self.geometry.grid ** 2 + 1) * config.vision_config.num_hidden_layers
        text = config.text_config.num_hidden_layers
        batch = self.recipe.batch_size
        prompt = len(self.batcher.prompt_ids) + 12
        return {"0 vision": 2 * batch * vision * 3, "1 copy": batch * 30 * text * 3,
                "1 text": batch * 45 * text * 3, "2 align": batch * (vision + prompt * text) * 3,
                "2 check": 0.0, "3 joint": batch * (vision + prompt * text * 3)}[name]

    def remaining_cost(self) -> float:
        name, steps = self.plan[self.stage]
        later = sum(self.step_cost(n) * s for n, s in self.plan[self.stage + 1:])
        return self.step_cost(name) * (steps - self.step) + later

    def train_stage(self, name: str, steps: int) -> bool:
        """Train stage ``name`` from the current step; False when stopped early."""
        module, groups, batches = self.setup(name)
        optimizer = torch.optim.AdamW([{"params": p, "lr": lr} for p, lr in groups],
                                      weight_decay=0.01)
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
            self.optimizer_state = None
        params = [p for group, _ in groups for p in group]
        losses = self.losses.setdefault(loss_key(name), [])
        module.train()
        last_log, logged, session_start = time.monotonic(), self.step, time.monotonic()
        session_steps_start = self.step
        while self.step < steps:
            if self.stop_after is not None and self.global_step() >= self.stop_after:
                self.save(optimizer)
                module.eval()
                return False
            started = time.monotonic()
            for group, (_, lr) in zip(optimizer.param_groups, groups, strict=True):
                group["lr"] = schedule(self.step, steps, lr)
            batch = {k: v.to(self.device) for k, v in next(batches).items()}
            loss = module(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            self.step += 1
            now = time.monotonic()
            self.seconds += now - started
            self.sessions[-1]["seconds"] = round(self.sessions[-1]["seconds"] + now - started, 1)
            if self.step < steps and now - self.last_save >= self.checkpoint_seconds:
                self.save(optimizer)
            if self.step == steps or now - last_log >= self.log_seconds:
                rate = (now - session_start) / (self.step - session_steps_start)
                eta_stage = rate * (steps - self.step)
                eta_run = rate / self.step_cost(name) * self.remaining_cost()
                print(f"[{self.geometry.grid}x{self.geometry.grid} {name}] step "
                      f"{self.step}/{steps} loss {np.mean(losses[-(self.step - logged):]):.4f}"
                      f" | {rate:.2f} s/step | trained {duration(self.seconds)} | ETA stage "
                      f"{duration(eta_stage)}, run ~{duration(eta_run)}", flush=True)
                last_log, logged = now, self.step
        module.eval()
        return True

    def run(self) -> bool:
        """Run (or continue) every stage; True when the recipe is done, False when stopped
        by ``stop_after``."""
        self.last_save = time.monotonic()
        while not self.done:
            name, steps = self.plan[self.stage]
            if name == "2 check":  # a look at held-out captions, not counted as training
                scenes = eval_scenes(self.check_size, self.geometry)
                self.record["after_align"] = {
                    "exact_match": caption_accuracy(self.model, self.processor, scenes),
                    "scenes": len(scenes)}
                print(f"[{name}] held-out exact match after alignment: "
                      f"{self.record['after_align']['exact_match']:.1%}", flush=True)
            else:
                print(f"[{self.geometry.grid}x{self.geometry.grid} {name}] "
                      f"{'continuing at' if self.step else 'starting'} step {self.step} "
                      f"of {steps}", flush=True)
                if not self.train_stage(name, steps):
                    print(f"stopped at global step {self.global_step()} ({self.position()}); "
                          "the same command continues from the checkpoint", flush=True)
                    return False
            self.stage, self.step = self.stage + 1, 0
            self.save(copy_as=f"end-{name.replace(' ', '-')}.pt" if steps else None)
        return True

    def result(self) -> tuple[torch.nn.Module, object, dict]:
        """The trained model (on the CPU), the processor and the run's record."""
        record = dict(self.record)
        record["train_seconds"] = round(self.seconds, 1)
        devices = list(dict.fromkeys(s["device"] for s in self.sessions))
        record["device"] = ", ".join(devices)
        record["sessions"] = self.sessions
        record["final_losses"] = {k: round(float(np.mean(v[-50:])), 4)
                                  for k, v in self.losses.items()}
        return self.model.to("cpu"), self.processor, record


def train(seed: int, recipe: Recipe = Recipe(), device: str = "cpu",
          geometry: Geometry | str = GEOMETRY_8, checkpoint: Path | None = None,
          **options) -> tuple[torch.nn.Module, object, dict] | None:
    """Run (or continue, from ``checkpoint``) the four stages on ``device``; returns the
    model (back on the CPU), the processor and the run's record, or None when stopped
    early (``stop_after``; see :class:`Trainer` for the other options)."""
    trainer = Trainer(seed, recipe, geometry, device, checkpoint, **options)
    return trainer.result() if trainer.run() else None


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
    g = record.get("geometry", asdict(GEOMETRY_8) | {"grid": GEOMETRY_8.grid})
    size, patch, grid = g["size"], g["patch"], g["grid"]
    title = "mmxai testbed" if g["name"] == "8" else f"mmxai testbed ({grid}x{grid} token grid)"
    flag = "" if g["name"] == "8" else f" --geometry {g['name']}"
    sessions = record.get("sessions", [])
    resumed = (f" It ran in {len(sessions)} sessions, each continuing from the previous "
               "one's checkpoint (bit-identical to an uninterrupted run on one device)."
               if len(sessions) > 1 else "")
    if "started_from" in record:
        start = record["started_from"]
        resumed += (f" The stages before `{start['stage']}` come from another run's "
                    f"`{start['checkpoint']}`, made with the recipe "
                    f"`{json.dumps(start['recipe'])}`.")
    joint = ("decoder and projector, the vision tower frozen (as LLaVA-1.5 keeps its encoder "
             "frozen)" if not r["tower_scale"][1]
             else f"everything, the vision tower at {r['tower_scale'][1]:g}x")
    return f"""# {title}: a tiny LLaVA that captions the synthetic scenes

A real `LlavaForConditionalGeneration` (CLIP vision tower + Llama decoder), small enough to
ship with mmxai ({record["parameters"]:,} parameters, {record["weights_bytes"] / 1e6:.1f} MB of
float32 safetensors) and trained here, on CPU, to caption the scenes of
`mmxai.testbed.scenes`. It is the default model of `mmxai compare`: the bundled benchmark
measures attribution methods on it against exact object masks (see `docs/benchmark.md`).
It is not a general-purpose model: it knows {len(WORDS)} words and one prompt.

## Architecture
- Vision: CLIP, {size}x{size} input, {patch}-px patches (a {grid}x{grid} grid, CLS dropped as
  LLaVA-1.5 does), 3 layers, width 128, 4 heads; the last layer feeds a 2-layer GELU
  projector. Scenes: objects of half-extent {g["radius"][0]}-{g["radius"][1]} px, at least
  {g["gap"]} px apart.
- Decoder: Llama, 4 layers, width 128, 4 heads, MLP 256, RoPE; input and output embeddings
  tied (`tie_word_embeddings=True`).
- Tokenizer: word-level (`tokenizers` WordLevel in `PreTrainedTokenizerFast`), lower-cased,
  one word or punctuation mark per token; special tokens `<pad> <unk> <s> </s> <image>`.
- Processor: `LlavaProcessor` with `CLIPImageProcessorPil` at {size} px; chat template
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
   {record["after_align"]["exact_match"]:.1%} ({record["after_align"].get("scenes", 100)} scenes).
3. Joint fine-tuning ({r["joint_steps"]} steps, batch {batch}, lr {r["joint_lr"]:g}): {joint}, on
   captioning (LLaVA's stage 2).

AdamW (weight decay 0.01), linear warm-up over 50 steps then cosine decay to a tenth, per
stage; gradient clipping at 1. Training scenes come from generator streams
{record["seed"]}, {record["seed"] + 10_000} and {record["seed"] + 20_000}, never the held-out
stream {EVAL_SEED}. Final training losses (mean of the last 50 steps):
{", ".join(f"{k} {v}" for k, v in record["final_losses"].items())}. Versions:
{", ".join(f"{k} {v}" for k, v in record["versions"].items())}.{resumed}

Reproduce (bit-identical on the same versions and device, one thread):
`nice -n 19 python -m mmxai.testbed.train{flag} --out DIR --seed {record["seed"]}`.

## Evaluation ({record["eval_size"]} held-out scenes, the shipped split)
| measure | value |
|---|---|
| caption exact match (greedy) | {record["exact_match"]:.1%} |
| lm_head read-out AUROC, object patches vs the rest | {readout_["auroc"]:.3f} |
| lm_head read-out pointing (arg-max patch on the object) | {readout_["pointing"]:.1%} |

The read-out takes, for each scene and each colour or shape word of its caption, that
word's logit at the {grid * grid} image positions (last-layer states, final norm, `lm_head`) and
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
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES, key=int), default="8",
                        help="scene geometry by its token grid: 8 (64 px, the shipped "
                             "testbed) or 16 (128 px); each has its recipe in RECIPES")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every stage's steps (e.g. 0.05 for a smoke run)")
    parser.add_argument("--eval-size", type=int, default=EVAL_SIZE)
    parser.add_argument("--device", default="cpu",
                        help="torch device for training, e.g. cuda (default cpu: the bundled "
                             "weights were trained there; another device gives other weights)")
    parser.add_argument("--checkpoint", type=Path, metavar="DIR",
                        help="checkpoint folder (default OUT/checkpoint); a run finding its "
                             "own checkpoint there continues from it")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0,
                        help="write a checkpoint this often (and at every stage's end)")
    parser.add_argument("--log-minutes", type=float, default=2.0,
                        help="print progress at least this often (and at every stage's end)")
    parser.add_argument("--start-from", type=Path, metavar="END_PT",
                        help="when the checkpoint folder has no checkpoint yet: start from "
                             "an end-of-stage checkpoint (end-*.pt) of another run of this "
                             "seed and geometry, made with any recipe, and run the rest of "
                             "this one (e.g. a longer stage 3 from end-2-align.pt)")
    parser.add_argument("--stop-after", type=int, metavar="STEPS",
                        help="stop (with a checkpoint) once this many steps of the whole "
                             "recipe are done; the same command without it continues")
    args = parser.parse_args(argv)
    if args.scores:
        add_scores(args.out, args.scores, args.command, args.seconds, args.machine)
        return
    torch.set_num_threads(1)  # deterministic, and the machine is shared
    if torch.device(args.device).type == "cuda":  # deterministic kernels, as far as they go
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    geometry = resolve_geometry(args.geometry)
    recipe = RECIPES[geometry.name].scaled(args.scale)
    checkpoint = args.checkpoint if args.checkpoint is not None else args.out / "checkpoint"
    result = train(args.seed, recipe, args.device, geometry, checkpoint,
                   checkpoint_minutes=args.checkpoint_minutes, log_minutes=args.log_minutes,
                   stop_after=args.stop_after, check_size=min(100, args.eval_size),
                   start_from=args.start_from)
    if result is None:
        return
    model, processor, record = result
    scenes = eval_scenes(args.eval_size, geometry)
    record["eval_size"] = len(scenes)
    record["exact_match"] = caption_accuracy(model, processor, scenes)
    record["readout"] = readout(model, processor, scenes)
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "numpy": np.__version__}
    record["machine"] = {"platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    record["weights_bytes"] = (args.out / "model.safetensors").stat().st_size
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "README.md").write_text(model_card(record))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
