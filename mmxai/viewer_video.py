"""A video's maps for display: one map per generated token per temporal patch.

Qwen merges consecutive sampled frames (two) into one temporal patch; the clip's grid
``t`` (``ImageGrid(kind="video", frame=t)``) is that patch's map, and the clip
(:class:`mmxai.video.Clip`, ``inputs.clips[k]``) says which frames patch ``t`` covers
(``clip.patches[t]``, positions in ``clip.frames``). A patch is shown over its first
frame. :func:`clip_page` is the viewer page of a clip; ``mmxai explain``'s PNGs and
``--save-maps`` files (:mod:`mmxai.saved_maps`) use the same helpers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from mmxai.errors import MMXAIError
from mmxai.maps import to_image
from mmxai.model import ImageGrid
from mmxai.viewer import HEATMAP_SIDE, PageMethod, fit, html_page, token_gaps
from mmxai.words import token_pieces

if TYPE_CHECKING:
    from mmxai.api import Explanation


def clip_grids(grids: Sequence[ImageGrid], index: int) -> list[ImageGrid]:
    """The video grids of clip ``index`` (input ``index``), in temporal-patch order."""
    return sorted((g for g in grids if g.kind == "video" and g.image == index),
                  key=lambda g: g.frame)


def patch_sources(clip: Any) -> np.ndarray:
    """(T, k) int64: the source frame indices each temporal patch covers (k frames a
    patch; a patch padded with its last frame repeats it, as Qwen pads)."""
    if not clip.patches:
        raise MMXAIError(f"video {clip.name or '<frames>'}: the clip lists no temporal patches")
    width = max(len(p) for p in clip.patches)
    indices = np.asarray(clip.indices, dtype=np.int64)
    return np.asarray([[indices[k] for k in (*p, *(p[-1:] * (width - len(p))))]
                       for p in clip.patches], dtype=np.int64)


def patch_frames(clip: Any) -> list[Image.Image]:
    """Each temporal patch's first frame: what its map is shown over."""
    return [clip.frames[p[0]] for p in clip.patches]


def patch_labels(clip: Any, seconds: bool = True) -> list[str]:
    """``t3: frames 90-105 (3.00 s)``: each patch, the source frames it covers, and (with
    ``seconds``) when its first frame is, in seconds from the start of the source."""
    labels = []
    for t, sources in enumerate(patch_sources(clip)):
        first, last = int(sources[0]), int(sources[-1])
        frames = f"frame {first}" if first == last else f"frames {first}-{last}"
        labels.append(f"t{t}: {frames}" + (f" ({first / clip.fps:.2f} s)" if seconds else ""))
    return labels


def check_clip(grids: Sequence[ImageGrid], index: int, clip: Any) -> list[ImageGrid]:
    """Clip ``index``'s grids, one per temporal patch of ``clip``, or one line why not."""
    found = clip_grids(grids, index)
    if [g.frame for g in found] != list(range(len(clip.patches))):
        raise MMXAIError(f"video {clip.name or '<frames>'}: {len(found)} video grids (frames "
                         f"{[g.frame for g in found]}) for {len(clip.patches)} temporal "
                         "patches")
    return found


def clip_map(flat_map: np.ndarray, grids: Sequence[ImageGrid], index: int,
             size: tuple[int, int]) -> np.ndarray:
    """One token's flat map on clip ``index``: (T, H, W), patch ``t``'s grid painted at
    ``size`` = (H, W) over the frame (:func:`mmxai.maps.to_image`)."""
    # each patch painted from its own grid: one pass per patch, not a scan of all of them
    return np.stack([to_image(flat_map, [g], index, size, frame=g.frame)
                     for g in clip_grids(grids, index)])


def clip_page(explanations: Mapping[str, Explanation], index: int, title: str = "mmxai",
              text: Mapping[str, np.ndarray] | None = None) -> str:
    """The viewer page (:func:`mmxai.viewer.html_page`) of ``explanations`` (method name ->
    :class:`~mmxai.api.Explanation` of one traced sample) on its input ``index``, a clip:
    each token's map on every temporal patch, over the patch's first frame, labelled with
    the source frames it covers."""
    first = next(iter(explanations.values()))
    trace = first.trace
    clip = trace.inputs.clips[index]
    check_clip(trace.grids, index, clip)
    frames = patch_frames(clip)
    # T maps a token: smaller than an image's, the browser smooths them as it scales
    width, height = fit(frames[0].size, HEATMAP_SIDE * 2 // 3, HEATMAP_SIDE * 2 // 3)
    methods = [PageMethod.from_maps(name, [clip_map(e.maps[i], e.trace.grids, index,
                                                    (height, width))
                                           for i in range(len(e.tokens))],
                                    (text or {}).get(name))
               for name, e in explanations.items()]
    pieces, _ = token_pieces(trace.model.tokenizer, trace.generated_ids.tolist())
    subtitle = (f"prompt: {trace.inputs.prompt!r} | answer: {first.text!r} | "
                f"{len(frames)} temporal patches of {clip.name or 'the clip'}")
    return html_page(title, frames, first.words, methods, subtitle,
                     gaps=token_gaps([pieces[t] for t in first.tokens], first.words),
                     frame_labels=patch_labels(clip))
