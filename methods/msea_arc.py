"""MSEA and ARC (Liang et al. 2025, "Explaining multimodal LLMs via intra-modal token
interactions"), and their compositions with the logit lens and TAM.

- **MSEA** (Eq. 3-5): the logit-lens maps of the same answer, teacher-forced on the image
  at several scales, resampled into the frame of the unscaled input's grids and fused.
- **ARC** (Eq. 6-9): context tokens whose top-k predictions rank unlike the explained
  token's (rank-biased overlap r_j) are interference; their maps, weighted by 1 - r_j with a
  base map A_0, are removed with a least-squares scale, then the rank Gaussian filter.

Registered: "arc", "msea" (logit lens + MSEA), "msea-tam" (TAM on MSEA maps) and "msea-arc"
(the paper's method): the combinations the paper's tables use.
Every choice the paper leaves open is an option; docs/methods.md lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from mmxai.citations import cite
from mmxai.hookspecs import hookimpl
from mmxai.maps import per_grid, resample
from mmxai.method import Method
from mmxai.methods.rbo import rbo
from mmxai.methods.tam import TAM, TAMOptions
from mmxai.methods.tam_ops import check_kernel_size, lstsq_scale, rank_gaussian_filter
from mmxai.trace import Needs, Trace, forced_trace
from mmxai.video import still_images_only

Box = tuple[float, float, float, float]
#: The largest MSEA scale: 1 is the image as given; the paper's scales are 0.5 to 1.
MAX_SCALE = 1.0


# -- MSEA: scaled inputs ---------------------------------------------------------------------
def scale_image(image: Image.Image, alpha: float, canvas: tuple[int, int] | None,
                pad_position: Literal["centre", "top-left"] = "centre") -> tuple[Image.Image, Box]:
    """Eq. 3: the image at scale ``alpha`` and the box it occupies in what the model sees.

    Native-resolution models get ``Resize(I, alpha)``: the box is the whole input. Fixed-size
    models (``canvas`` = (H, W)) get the image fitted into the canvas, scaled by ``alpha`` and
    pasted on a blank (black) canvas: the box is its region, as fractions of the canvas.
    """
    width, height = image.size
    if canvas is None:
        size = (max(1, round(width * alpha)), max(1, round(height * alpha)))
        return image.resize(size, Image.BICUBIC), (0.0, 0.0, 1.0, 1.0)
    canvas_h, canvas_w = canvas
    fit = min(canvas_w / width, canvas_h / height) * alpha
    w, h = max(1, round(width * fit)), max(1, round(height * fit))
    if pad_position == "centre":
        left, top = (canvas_w - w) // 2, (canvas_h - h) // 2
    elif pad_position == "top-left":
        left, top = 0, 0
    else:
        raise ValueError(f"pad_position must be 'centre' or 'top-left', got {pad_position!r}")
    board = Image.new("RGB", (canvas_w, canvas_h))
    board.paste(image.resize((w, h), Image.BICUBIC), (left, top))
    return board, (left / canvas_w, top / canvas_h, (left + w) / canvas_w, (top + h) / canvas_h)


def to_original(box: Box, region: Box) -> Box:
    """A box in canvas fractions -> fractions of the original image occupying ``region``."""
    rx0, ry0, rx1, ry1 = region
    sx, sy = rx1 - rx0, ry1 - ry0
    return ((box[0] - rx0) / sx, (box[1] - ry0) / sy, (box[2] - rx0) / sx, (box[3] - ry0) / sy)


@dataclass
class MSEAOptions:
    scales: tuple[float, ...] = (0.5, 0.75, 1.0)
    fusion: Literal["mean", "max"] = "mean"  # "mean" (Eq. 5) or "max" (the paper's ablation)
    #: Where fixed-size models get the scaled image on the canvas.
    pad_position: Literal["centre", "top-left"] = "centre"

    def __post_init__(self) -> None:
        if not self.scales:
            raise ValueError("scales must name at least one scale")
        bad = [s for s in self.scales if not 0 < s <= MAX_SCALE]
        if bad:
            raise ValueError(f"every scale must be in (0, {MAX_SCALE:g}] (a share of the "
                             f"image's size; above 1 it would overflow a fixed-size model's "
                             f"canvas), got {', '.join(f'{s:g}' for s in bad)}")
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


def scaled_traces(trace: Trace, options: MSEAOptions) -> list[tuple[Trace, Box]]:
    """One teacher-forced trace per scale, cached on the base trace (shared by methods).

    Scale 1.0 is the base trace itself, so MSEA with scales [1.0] is its base method. Every
    other scale teacher-forces the ORIGINAL answer, so every scale explains the same tokens.
    """
    model, inputs = trace.model, trace.inputs
    still_images_only(inputs, "MSEA rescales still images (the scales of its passes)")
    canvas = getattr(model, "fixed_size", None)
    out = []
    for alpha in options.scales:
        if alpha == 1.0:
            out.append((trace, (0.0, 0.0, 1.0, 1.0)))
            continue
        key = ("msea", float(alpha), canvas, options.pad_position)
        if key not in trace.cache:
            scaled = [scale_image(im, alpha, canvas, options.pad_position) for im in inputs.images]
            scaled_inputs = model.build_inputs([s[0] for s in scaled], inputs.prompt)
            regions = [s[1] for s in scaled]
            scaled_trace = forced_trace(model, scaled_inputs, trace.generated_ids)
            trace.cache[key] = (scaled_trace, regions)
        scaled_trace, regions = trace.cache[key]
        out.append((scaled_trace, regions))
    return out


def msea_maps(trace: Trace, classes: Sequence[int], options: MSEAOptions) -> torch.Tensor:
    """Eq. 5: raw logit-lens maps of ``classes`` fused over scales, (C, N_image) in the layout
    of ``trace``'s grids. A destination cell averages (or maxes) the scales that cover it."""
    dst_grids = trace.grids
    n = sum(g.size for g in dst_grids)
    total = torch.zeros(len(classes), n)
    count = torch.zeros(n)
    best = torch.full((len(classes), n), -torch.inf)
    for scaled, regions in scaled_traces(trace, options):
        raw = scaled.image_logits(classes).cpu()  # (C, N_s)
        for dst in dst_grids:
            cells = slice(dst.offset, dst.offset + dst.size)
            for src in scaled.grids:
                if src.image != dst.image or src.frame != dst.frame:
                    continue
                region = (0.0, 0.0, 1.0, 1.0) if scaled is trace else regions[src.image]
                src_map = raw[:, src.offset:src.offset + src.size].reshape(-1, *src.shape)
                src_box = to_original(src.box, region) if scaled is not trace else src.box
                values, covered = resample(src_map, src_box, dst.box, dst.shape)
                values, covered = values.reshape(len(classes), -1), covered.reshape(-1)
                total[:, cells] += values * covered
                count[cells] += covered
                best[:, cells] = torch.where(covered, torch.maximum(best[:, cells], values),
                                             best[:, cells])
    if options.fusion == "max":
        return torch.where(count > 0, best, torch.zeros_like(best))
    if options.fusion != "mean":
        raise ValueError(f"fusion must be 'mean' or 'max', got {options.fusion!r}")
    return total / count.clamp_min(1)


# -- ARC -------------------------------------------------------------------------------------
@dataclass
class ARCOptions:
    k: int = 50  # top-k predictions compared (Eq. 7)
    p: float = 0.9  # RBO persistence (the paper does not give it)
    rbo_form: Literal["extrapolated", "truncated"] = "extrapolated"
    base_weight: float = 1.0  # weight of the base map A_0 in Eq. 8 (as if r_0 = 0)
    kernel_size: int = 3
    filter: bool = True  # the rank Gaussian filter G of Eq. 9

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if not 0 < self.p < 1:
            raise ValueError(f"p must be in (0, 1) (RBO persistence), got {self.p}")
        if self.base_weight < 0:
            raise ValueError(f"base_weight must be at least 0, got {self.base_weight}")
        check_kernel_size(self.kernel_size)
        parent = getattr(super(), "__post_init__", None)  # MSEAARCOptions: MSEA's checks too
        if parent is not None:
            parent()


def topk_at(trace: Trace, positions: np.ndarray, k: int, chunk: int = 64) -> torch.Tensor:
    """Top-k predicted ids at ``positions``, (P, k).

    Generating positions read the trace's top-k (recorded during generation, ARC declares
    it); the others (the prompt's) get full-vocabulary logits a chunk at a time.
    """
    positions = np.asarray(positions, dtype=np.int64)
    out = torch.zeros(len(positions), k, dtype=torch.long)
    recorded = trace.topk_ids
    first = trace.prompt_len - 1
    known = positions >= first
    if recorded is not None and recorded.shape[1] >= k:
        out[known] = recorded[positions[known] - first, :k].cpu()
    else:
        known[:] = False
    missing = np.flatnonzero(~known)
    w = trace.model.unembedding()
    for start in range(0, len(missing), chunk):
        rows = missing[start:start + chunk]
        h = trace.hidden[torch.as_tensor(positions[rows], dtype=torch.long)]
        with torch.no_grad():
            out[rows] = (h.to(w.device, w.dtype) @ w.T).float().topk(k, dim=-1).indices.cpu()
    return out


def arc_context(trace: Trace, tokens: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Context token ids and the positions that predicted them: prompt then answer tokens.

    Convention: token j is represented by the hidden state that PREDICTED it (position
    pos(j) - 1), for prompt and answer tokens alike, and so is the explained token (its
    generating position). The TAM reference mixes the two conventions (its quirk Q3).
    """
    prompt = trace.inputs.prompt_positions
    answer = np.arange(max(tokens, default=-1)) + trace.prompt_len
    positions = np.concatenate([prompt, answer]).astype(np.int64)
    ids = trace.sequence[torch.as_tensor(positions, dtype=torch.long)].numpy()
    return ids, positions - 1


def base_class(trace: Trace) -> int:
    """k0 = argmin_k sum_i a_i(k): the token with the least total visual activation."""
    image_states = trace.hidden[torch.as_tensor(trace.image_positions, dtype=torch.long)]
    w = trace.model.unembedding()
    return int((w.float() @ image_states.sum(dim=0).float().to(w.device)).argmin())


def arc(trace: Trace, tokens: Sequence[int], maps_of, options: ARCOptions) -> np.ndarray:
    """Eq. 6-9 for ``tokens``; ``maps_of(classes)`` gives raw maps (C, N_image)."""
    tokens = [int(t) for t in tokens]
    ctx_ids, ctx_pred = arc_context(trace, tokens)
    n_prompt = len(trace.inputs.prompt_positions)
    target_ids = trace.generated_ids[tokens].numpy()
    target_pred = np.array([trace.generating_position(t) for t in tokens], dtype=np.int64)
    k0 = base_class(trace)
    classes = list(dict.fromkeys([*target_ids.tolist(), *ctx_ids.tolist(), k0]))
    column = {c: i for i, c in enumerate(classes)}
    raw = maps_of(classes).float()
    k = min(options.k, trace.model.unembedding().shape[0])
    ranked = topk_at(trace, np.concatenate([ctx_pred, target_pred]), k)
    ctx_ranked, target_ranked = ranked[:len(ctx_pred)], ranked[len(ctx_pred):]
    weights = torch.zeros(len(tokens), len(ctx_ids) + 1, dtype=torch.float32)
    for row, t in enumerate(tokens):
        n_ctx = n_prompt + t  # the prompt and the answer tokens before t
        if n_ctx:
            r = rbo(ctx_ranked[:n_ctx], target_ranked[row], p=options.p, form=options.rbo_form)
            weights[row, :n_ctx] = (1 - r).float()
        weights[row, -1] = options.base_weight
    history = raw[[column[c] for c in [*ctx_ids.tolist(), k0]]]  # (K + 1, N)
    norm = weights.sum(dim=1, keepdim=True)
    interference = (weights @ history) / torch.where(norm > 0, norm, torch.ones_like(norm))
    target = raw[[column[int(c)] for c in target_ids]]
    beta = lstsq_scale(target, interference)
    refined = (target - beta[:, None] * interference).clamp_min(0).numpy()
    if not options.filter:
        return refined
    return per_grid(lambda g: rank_gaussian_filter(g, options.kernel_size), refined, trace.grids)


# -- registered methods ----------------------------------------------------------------------
@dataclass
class MSEAARCOptions(ARCOptions, MSEAOptions):
    pass


class ARC(Method):
    name = "arc"
    summary = "Activation ranking correlation: remove maps of tokens that predict unlike this one"
    needs = Needs(topk=ARCOptions.k)
    citation = cite("liang2025intramodal")
    Options = ARCOptions

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        return arc(trace, tokens, lambda c: trace.image_logits(c).cpu(), self.options)


class MSEA(Method):
    name = "msea"
    summary = "Logit lens fused over image scales (multi-scale explanation aggregation)"
    needs = Needs(extra_passes=True)
    citation = cite("liang2025intramodal")
    Options = MSEAOptions

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        classes = trace.generated_ids[list(tokens)].tolist()
        return msea_maps(trace, classes, self.options).clamp_min(0).numpy()


class MSEAARC(Method):
    name = "msea-arc"
    summary = "MSEA maps refined by ARC (the paper's full method)"
    needs = Needs(topk=ARCOptions.k, extra_passes=True)
    citation = cite("liang2025intramodal")
    Options = MSEAARCOptions

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        return arc(trace, tokens, lambda c: msea_maps(trace, c, self.options), self.options)


@dataclass
class MSEATAMOptions(TAMOptions, MSEAOptions):
    pass


class MSEATAM(TAM):
    name = "msea-tam"
    summary = "TAM on MSEA's multi-scale logit maps"
    needs = Needs(extra_passes=True)
    citation = cite("li2025tam", "liang2025intramodal")
    Options = MSEATAMOptions

    def image_logits(self, trace: Trace, classes: list[int]) -> torch.Tensor:
        return msea_maps(trace, classes, self.options)


@hookimpl
def register_methods(register):
    for method in (ARC, MSEA, MSEATAM, MSEAARC):
        register(method)
