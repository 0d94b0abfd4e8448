"""Numeric helpers that attribution methods share, vectorised over tokens and grid cells.

- :func:`rank_gaussian_filter`: TAM's rank Gaussian filter over a batch of grids;
- :func:`lstsq_scale`: the least-squares scale of one map onto another, batched;
- :func:`estimated_causal_inference`: TAM's ECI, removing each token's context interference;
- :func:`joint_minmax`: min-max scaling of image and text scores together, per token;
- :func:`reflect_index`: reflect padding (no edge repeat) as an index map, for any size;
- :func:`sorting_network`: compare-exchange pairs that sort a fixed number of values.

Every function takes numpy arrays or torch tensors and returns the kind it was given.
"""

from __future__ import annotations

from functools import cache
from typing import TypeVar

import numpy as np
import torch

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)
CHUNK_CELLS = 32768
#: The widest rank Gaussian filter window accepted as an option: a window sorts k^2 shifted
#: copies of the grids (31 x 31: 961 copies, ~0.5 s for four 24 x 24 grids on one core);
#: wider windows only repeat the reflection on the grids mmxai sees (24 to 64 cells a side).
MAX_KERNEL_SIZE = 31


def check_kernel_size(kernel_size: int) -> None:
    """A ValueError (one line) unless ``kernel_size`` is odd and in [1, MAX_KERNEL_SIZE]:
    what an Options dataclass's ``__post_init__`` calls, before any model loads."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if kernel_size > MAX_KERNEL_SIZE:
        raise ValueError(f"kernel_size must be at most {MAX_KERNEL_SIZE}, got {kernel_size}")


def _tensor(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.to(torch.float32)


def _like(t: torch.Tensor, ref) -> ArrayLike:
    return t if isinstance(ref, torch.Tensor) else t.cpu().numpy()


def reflect_index(size: int, pad: int) -> torch.Tensor:
    """Indices into an axis of ``size`` cells padded by ``pad`` on each side, (size + 2 pad,).

    Reflection does not repeat the edge (numpy "reflect", OpenCV BORDER_REFLECT_101, torch
    "reflect"): [a b c] padded by 2 reads [c b a b c b a]. Unlike ``torch.nn.functional.pad``
    it works when ``pad >= size`` (the reflection repeats; a single cell repeats itself).
    """
    idx = torch.arange(-pad, size + pad)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx < size, idx, period - idx)


@cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for ``n`` inputs: compare-exchange pairs (i < j).

    Truncated to n (as if padded with +inf), so any n works; 9 inputs take 28 pairs.
    """
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def rank_gaussian_filter(maps: ArrayLike, kernel_size: int = 3,
                         constant: str = "value") -> ArrayLike:
    """TAM's rank Gaussian filter on a batch of grids (n, h, w) -> (n, h, w).

    For each cell, take its ``kernel_size`` x ``kernel_size`` window (reflect padding) and sort
    it. With mean mu and population std sd, the coefficient of variation ``cv = sd / mu`` is
    the width of a Gaussian over *rank offsets* d from the median: the output is
    ``sum_d g_d x_(median + d)`` with ``g_d ~ exp(-d^2 / (2 cv^2))``, normalised. A
    homogeneous window gives its median, a scattered one tends to its mean, so isolated
    spikes are suppressed without blurring region edges. Windows with ``mu <= 0`` give 0.

    ``constant`` decides a constant positive window (sd = 0, cv = 0, where the formula is
    0/0): "value" returns the constant (the formula's limit); "reference" returns 0, what
    the reference's NaN becomes after its uint8 cast (TAM quirk Q7).

    Vectorised over all cells of a chunk of grids: the k^2 shifted views of the padded
    chunk go through a sorting network (elementwise min/max), so each rank is one (n, h, w)
    tensor and the statistics are elementwise sums over ranks. No loop over cells.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if constant not in ("value", "reference"):
        raise ValueError(f"constant must be 'value' or 'reference', got {constant!r}")
    x = _tensor(maps)
    # chunks of about 32k cells keep the k^2 rank tensors in cache (3x faster than one pass)
    step = max(1, CHUNK_CELLS // max(1, x.shape[1] * x.shape[2]))
    out = torch.cat([_rank_gaussian(x[i:i + step], kernel_size, constant)
                     for i in range(0, x.shape[0], step)]) if x.shape[0] else x.clone()
    return _like(out, maps)


def _rank_gaussian(x: torch.Tensor, kernel_size: int, constant: str) -> torch.Tensor:
    """:func:`rank_gaussian_filter` on one chunk (n, h, w) of grids."""
    _, h, w = x.shape
    pad = kernel_size // 2
    padded = x[:, reflect_index(h, pad).to(x.device)][:, :, reflect_index(w, pad).to(x.device)]
    ranks = [padded[:, i:i + h, j:j + w] for i in range(kernel_size) for j in range(kernel_size)]
    for a, b in sorting_network(len(ranks)):
        ranks[a], ranks[b] = torch.minimum(ranks[a], ranks[b]), torch.maximum(ranks[a], ranks[b])
    size, mid = len(ranks), len(ranks) // 2
    mean = sum(ranks) / size
    std = torch.sqrt(sum((r - mean) ** 2 for r in ranks) / size)
    cv = std / mean.clamp_min(torch.finfo(x.dtype).tiny)
    # cv = 0 only for constant windows; a finite stand-in keeps their weights NaN-free.
    # (d / cv)^2 rather than d^2 / cv^2: a tiny cv must not underflow cv^2 to 0 (0/0 at d = 0)
    safe_cv = torch.where(cv > 0, cv, torch.ones_like(cv))
    total, norm = ranks[mid].clone(), torch.ones_like(mean)
    for d in range(1, mid + 1):  # g_d = g_-d; g_0 = 1
        g = torch.exp(-0.5 * (d / safe_cv) ** 2)
        total += g * (ranks[mid - d] + ranks[mid + d])
        norm += 2 * g
    out = total / norm
    is_constant = ranks[0] == ranks[-1]
    out = torch.where(is_constant, mean if constant == "value" else torch.zeros_like(mean), out)
    out = torch.where(mean > 0, out, torch.zeros_like(out))
    return out


def lstsq_scale(target: ArrayLike, basis: ArrayLike) -> ArrayLike:
    """The scale s minimising ||target - s basis||^2 along the last axis: (..., N) -> (...).

    Closed form ``<target, basis> / <basis, basis>``; 0 where the basis is all zeros (any s
    fits equally, and 0 leaves the target unchanged).
    """
    t, b = _tensor(target), _tensor(basis).to(_tensor(target).device)
    num = (t * b).sum(dim=-1)
    den = (b * b).sum(dim=-1)
    scale = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                        torch.zeros_like(den))
    return _like(scale, target)


def estimated_causal_inference(maps: ArrayLike, history: ArrayLike, relevance: ArrayLike,
                               context: ArrayLike, eps: float = 1e-8) -> ArrayLike:
    """TAM's ECI for J tokens at once: remove each token's estimated context interference.

    - ``maps`` (J, N): the raw maps M_j of the explained tokens;
    - ``history`` (K, N): the raw maps of every token that may be context;
    - ``relevance`` (J, K): r_ji >= 0, how strongly context token i relates to token j;
    - ``context`` (J, K) bool: which history rows are token j's context.

    Weights ``w_ji = r_ji / (sum_i r_ji + eps)`` over the context give the interference
    ``E_j = sum_i w_ji H_i`` (one masked matrix product); with the least-squares scale s_j the
    result is ``max(0, M_j - s_j E_j)``, (J, N). A token with no context, or whose context
    is irrelevant (E_j = 0), keeps its map.
    """
    m, h = _tensor(maps), _tensor(history)
    r = _tensor(relevance).clamp_min(0)
    r = r * torch.as_tensor(context, dtype=torch.bool, device=r.device)
    weights = r / (r.sum(dim=-1, keepdim=True) + eps)
    interference = weights.to(h.dtype) @ h
    scale = lstsq_scale(m, interference)
    return _like((m - scale[..., None] * interference).clamp_min(0), maps)


def joint_minmax(image: ArrayLike, text: ArrayLike,
                 text_mask: ArrayLike | None = None) -> tuple[ArrayLike, ArrayLike]:
    """Scale each token's image and text scores to [0, 1] together (row-wise).

    ``image`` (J, N) and ``text`` (J, K); ``text_mask`` (J, K) bool marks the text entries
    that belong to each row (rows may hold different numbers of context tokens). A row whose
    scores are all equal maps to 0 (the reference divides by zero there: TAM quirk Q8).
    Returns (image, text) scaled; masked-out text entries are 0.
    """
    img, txt = _tensor(image), _tensor(text).to(_tensor(image).dtype)
    mask = (torch.ones_like(txt, dtype=torch.bool) if text_mask is None
            else torch.as_tensor(text_mask, dtype=torch.bool, device=txt.device))
    inf = torch.tensor(float("inf"), dtype=img.dtype, device=img.device)
    if img.shape[-1] + txt.shape[-1] == 0:
        return _like(img.clone(), image), _like(txt.clone(), text)
    lo = torch.cat([img, torch.where(mask, txt, inf)], dim=-1).amin(dim=-1, keepdim=True)
    hi = torch.cat([img, torch.where(mask, txt, -inf)], dim=-1).amax(dim=-1, keepdim=True)
    span = hi - lo
    ok = span > 0
    safe = torch.where(ok, span, torch.ones_like(span))
    img_out = torch.where(ok, (img - lo) / safe, torch.zeros_like(img))
    txt_out = torch.where(ok & mask, (txt - lo) / safe, torch.zeros_like(txt))
    return _like(img_out, image), _like(txt_out, text)
