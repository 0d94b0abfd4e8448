"""Perturbed passes for perturbation metrics: the same prompt over other pixels, fast.

A faithfulness metric teacher-forces one answer over hundreds of masked copies of a
sample's image. Only the pixels change, so the token sequence, grids and prompt positions
of the traced :class:`~mmxai.model.Inputs` are reused (:func:`swap_images`), the processor
runs once over all copies (:func:`swap_each`), and the forwards, which need logits but no
attention weights, run on fused attention (:func:`fast_attention`);
:func:`answer_log_probs` teacher-forces the answer over many variants at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from mmxai.errors import InputError, MMXAIError
from mmxai.model import Inputs, Model
from mmxai.trace import forced_features
from mmxai.video import still_images_only


def baseline_image(image: Image.Image, kind: str) -> Image.Image:
    """What replaces removed pixels: a strong blur, the mean colour, or black."""
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=max(image.size) / 20))
    if kind == "mean":
        mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return Image.new("RGB", image.size, tuple(int(round(c)) for c in mean))
    if kind == "black":
        return Image.new("RGB", image.size)
    raise MMXAIError(f"baseline must be 'blur', 'mean' or 'black', got {kind!r}")


def swap_images(model: Model, inputs: Inputs, images: Sequence[Image.Image]) -> Inputs:
    """``inputs`` with other images of the same sizes (perturbed copies, say).

    Only the processor runs again: the token sequence, grids and prompt positions depend
    on the image sizes alone, so they are reused (and the token ids checked).
    """
    still_images_only(inputs, "swapping pixels works on still images")
    images = [im.convert("RGB") for im in images]
    if [im.size for im in images] != [im.size for im in inputs.images]:
        raise InputError("swap_images needs images of the original sizes")
    features = model.features(images, model.chat_text(inputs.prompt, len(images)))
    if not torch.equal(features["input_ids"], inputs.features["input_ids"]):
        raise InputError("the processor tokenised the swapped images differently")
    return Inputs(features, images, inputs.prompt, inputs.grids, inputs.prompt_positions,
                  inputs.answer_fill)


def swap_each(model: Model, inputs: Inputs, images: Sequence[Image.Image]) -> list[Inputs]:
    """One ``inputs`` per image, each with that image in place of the single image.

    Equal to ``[swap_images(model, inputs, [im]) for im in images]``, but the processor
    runs once over all of them (its per-call overhead is several times a tiny model's
    forward pass). Families whose outputs do not split into one row per image
    (``Model.rows_per_image`` False: patches or tiles flattened) process each image alone.
    """
    still_images_only(inputs, "swapping pixels works on still images")
    if len(inputs.images) != 1:
        raise InputError(f"swap_each needs inputs with one image, got {len(inputs.images)}")
    images = [im.convert("RGB") for im in images]
    if any(im.size != inputs.images[0].size for im in images):
        raise InputError("swap_each needs images of the original size")
    if not model.rows_per_image:
        return [swap_images(model, inputs, [im]) for im in images]
    if not images:
        return []
    batch = model.features(images, [model.chat_text(inputs.prompt, 1)] * len(images))
    tensors = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    if any(v.dim() == 0 or v.shape[0] != len(images) for v in tensors.values()):
        # an adapter that should say rows_per_image = False: correct, if not fast
        return [swap_images(model, inputs, [im]) for im in images]
    ids = inputs.features["input_ids"]
    out = []
    for row, image in enumerate(images):
        features = {k: v[row:row + 1] if k in tensors else v for k, v in batch.items()}
        if not torch.equal(features["input_ids"], ids):
            raise InputError("the processor tokenised the swapped images differently")
        out.append(Inputs(features, [image], inputs.prompt, inputs.grids,
                          inputs.prompt_positions, inputs.answer_fill))
    return out


@contextmanager
def fast_attention(model: Model) -> Iterator[None]:
    """PyTorch's fused attention (``sdpa``) for passes that need no attention weights.

    Models load with eager attention, which methods that read attention weights need;
    passes that only need logits (perturbation metrics: hundreds of forwards a sample)
    run about a third faster with ``sdpa``. Logits agree to float rounding (~1e-4 on
    float32). A model whose code lacks ``sdpa`` (or refuses it: PaliGemma 2's Gemma 2) keeps
    its kernel.
    """
    current = getattr(model.hf.config, "_attn_implementation", None)
    if current in (None, "sdpa"):
        yield
        return
    try:
        model.hf.set_attn_implementation("sdpa")
    except (ValueError, ImportError, NotImplementedError):
        # a sub-model may refuse after the top config switched (Gemma 2): switch back
        model.hf.set_attn_implementation(current)
        yield
        return
    try:
        yield
    finally:
        model.hf.set_attn_implementation(current)


def answer_log_probs(model: Model, variants: Sequence[Inputs], sequence: torch.Tensor,
                     positions: Sequence[int], batch: int,
                     needed: np.ndarray | None = None) -> np.ndarray:
    """(len(variants), len(positions)) log-probability, under each variant, of
    ``sequence[q + 1]`` read at each generating position ``q``, teacher-forcing ``sequence``.

    ``needed`` ((len(variants), len(positions)) bool, default all): the positions each variant
    is read at; the others are NaN and cost nothing past the decoder (a deletion curve reads
    one position per variant). One forward pass per chunk of ``batch`` variants serves every
    position (a causal model's logits at q do not depend on what follows q, so the sequence
    stops at ``max(positions) + 1``, and only the chunk's needed rows reach the unembedding);
    the softmax's normaliser is taken over the needed (variant, position) pairs alone, ``batch``
    vocabulary rows of float32 at a time. Variants whose features do not stack (tiles,
    patches of other counts) run one by one.
    """
    positions = [int(q) for q in positions]
    if not variants or not positions:
        return np.zeros((len(variants), len(positions)))
    needed = (np.ones((len(variants), len(positions)), dtype=bool) if needed is None
              else np.asarray(needed, dtype=bool))
    if needed.shape != (len(variants), len(positions)):
        raise InputError(f"answer_log_probs: needed has shape {needed.shape}, expected "
                         f"{(len(variants), len(positions))}")
    end = max(positions) + 1
    features = [forced_features(v, sequence[:end]) for v in variants]
    step = max(1, int(batch))
    out = []
    with fast_attention(model):
        for start in range(0, len(features), step):
            chunk, mask = features[start:start + step], needed[start:start + step]
            try:
                # the family's own batching (LLaVA-NeXT pads its patches, ...), as generate's
                out.append(_log_probs(model, model.collate(chunk), sequence, positions, mask))
            except (InputError, RuntimeError, ValueError, IndexError) as exc:  # do not stack
                if _out_of_memory(exc):  # not a stacking problem: one by one would not help
                    raise
                out.extend(_log_probs(model, f, sequence, positions, m[None])
                           for f, m in zip(chunk, mask, strict=True))
    return np.concatenate(out, axis=0)


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _log_probs(model: Model, features: dict[str, Any], sequence: torch.Tensor,
               positions: list[int], needed: np.ndarray) -> np.ndarray:
    """(rows, len(positions)): each row's log-probability of the token after each position
    it needs (``needed``, (rows, len(positions)) bool), NaN elsewhere."""
    rows, columns = np.nonzero(needed)
    out = np.full(needed.shape, np.nan, dtype=np.float32)
    if not rows.size:
        return out
    keep = sorted({positions[c] for c in columns})
    column = torch.tensor([keep.index(positions[c]) for c in columns])
    targets = sequence[torch.tensor([positions[c] for c in columns]) + 1]
    with torch.no_grad():
        # a CPU index: the final norm's output is on the last device of a split model
        logits = model.hf(**features, use_cache=False, logits_to_keep=torch.tensor(keep)).logits
    device = logits.device
    step = needed.shape[0]  # a batch's worth of float32 vocabulary rows at a time
    values = []
    for start in range(0, rows.size, step):
        part = slice(start, start + step)
        picked = logits[torch.as_tensor(rows[part], device=device),
                        column[part].to(device)].float()  # (pairs, V)
        target = picked.gather(-1, targets[part].to(device)[:, None])[:, 0]
        values.append((target - picked.logsumexp(dim=-1)).cpu())
    out[rows, columns] = torch.cat(values).numpy()
    return out
