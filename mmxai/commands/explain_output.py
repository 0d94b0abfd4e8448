"""What ``mmxai explain`` writes for each method and input: PNGs, ``maps.npz`` and pages.

An input is an image, or a clip (``trace.inputs.clips[k]``, :mod:`mmxai.video`), whose
maps have a time axis: one map per generated token per temporal patch, each shown over the
patch's first frame (:mod:`mmxai.viewer_video`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mmxai import viewer, viewer_video
from mmxai.api import Explanation


def clips_of(explanation: Explanation) -> dict:
    """Input index -> :class:`mmxai.video.Clip`, for the inputs that are clips."""
    return getattr(explanation.trace.inputs, "clips", None) or {}


def input_folder(index: int, n_inputs: int) -> str:
    """Where input ``index``'s files go in a method's folder: nowhere deeper for a single
    input (a clip is always alone in its prompt), else ``image<k>``."""
    return "" if n_inputs == 1 else f"image{index}"


def render_overlays(explanation: Explanation, images: list[Image.Image]
                    ) -> list[dict[str, bytes]]:
    """Each input's PNGs, file name -> bytes: each explained token's map over the image
    (``003_cat.png``), or over each temporal patch's first frame for a clip
    (``003_cat_t00.png``, ``_t01`` ...), captioned with the method, the token (and patch)
    and a colour bar of its values (:func:`mmxai.viewer.labelled`). A clip's patches share
    one scale per token, its map's min and max over every patch, as the page shows them.

    Sizes follow :func:`mmxai.viewer.fit`, so big photos shrink and tiny images grow.
    """
    clips = clips_of(explanation)
    rendered = []
    for index, image in enumerate(images):
        pngs = {}
        clip = clips.get(index)
        frames = viewer_video.patch_frames(clip) if clip is not None else [image]
        shown = [f.resize(viewer.fit(f.size), Image.Resampling.BICUBIC) for f in frames]
        size = (shown[0].height, shown[0].width)
        if clip is not None:
            viewer_video.check_clip(explanation.trace.grids, index, clip)
            labels = viewer_video.patch_labels(clip, seconds=False)  # a caption is short
        for i, (token, word) in enumerate(zip(explanation.tokens, explanation.words,
                                              strict=True)):
            name = f"{token:03d}_{viewer.safe_filename(word)}"
            label = f"{explanation.method}: token {token} {json.dumps(word, ensure_ascii=False)}"
            if clip is None:
                heat = explanation.image_map(i, image=index, size=size)
                pngs[f"{name}.png"] = _labelled(shown[0], heat, label, viewer.value_range(heat))
                continue
            heats = viewer_video.clip_map(explanation.maps[i], explanation.trace.grids, index,
                                          size)
            span = viewer.value_range(heats)
            for t, (frame, heat) in enumerate(zip(shown, heats, strict=True)):
                pngs[f"{name}_t{t:02d}.png"] = _labelled(frame, heat, f"{label} {labels[t]}",
                                                         span)
        rendered.append(pngs)
    return rendered


def _labelled(image: Image.Image, heat: np.ndarray, label: str,
              span: tuple[float, float]) -> bytes:
    return viewer.png_bytes(viewer.labelled(viewer.overlay(image, heat, span=span), label,
                                            *span))


def write_method(explanation: Explanation, overlays: list[dict[str, bytes]], out: Path,
                 folder_name: str | None = None) -> None:
    """One method's PNGs (:func:`render_overlays`) and its raw maps as ``maps.npz``, in
    ``out/<folder_name>`` (default: the method's :func:`viewer.safe_filename`)."""
    folder = out / (folder_name or viewer.safe_filename(explanation.method))
    for index, pngs in enumerate(overlays):
        target = folder / input_folder(index, len(overlays))
        target.mkdir(parents=True, exist_ok=True)
        for name, png in pngs.items():
            (target / name).write_bytes(png)
    grids = explanation.trace.grids
    np.savez_compressed(
        folder / "maps.npz",
        maps=explanation.maps,
        tokens=np.asarray(explanation.tokens, dtype=np.int64),
        words=np.asarray(explanation.words, dtype=str),
        generated_ids=explanation.trace.generated_ids.numpy(),
        grid_shapes=np.asarray([g.shape for g in grids], dtype=np.int64).reshape(-1, 2),
        grid_offsets=np.asarray([g.offset for g in grids], dtype=np.int64),
        grid_images=np.asarray([g.image for g in grids], dtype=np.int64),
        grid_frames=np.asarray([g.frame for g in grids], dtype=np.int64),
        grid_kinds=np.asarray([g.kind for g in grids], dtype=str),
        grid_boxes=np.asarray([g.box for g in grids], dtype=np.float32).reshape(-1, 4),
    )


def write_pages(explanations: dict[str, Explanation], images: list[Image.Image], out: Path,
                title: str, image_names: list[str] | None = None,
                text: dict[str, np.ndarray] | None = None) -> list[Path]:
    """One self-contained HTML page per input (``index.html`` for a single one;
    :func:`mmxai.viewer.explanation_page`, or :func:`mmxai.viewer_video.clip_page` for a
    clip); the first path returned is the one to open. ``text``: the text halves
    (:func:`mmxai.commands.explain.text_relevances`)."""
    clips = clips_of(next(iter(explanations.values())))
    paths = []
    for index, image in enumerate(images):  # a clip is always alone: index.html
        path = out / ("index.html" if len(images) == 1 else f"image{index}.html")
        heading = title if len(images) == 1 else f"{title} (image {index})"
        page = viewer_video.clip_page(explanations, index, heading, text) if index in clips \
            else viewer.explanation_page(explanations, image, index, heading, text)
        path.write_text(page, encoding="utf-8")
        paths.append(path)
    if len(images) > 1:
        names = image_names or [""] * len(images)
        links = "".join(
            f'<li><a href="{viewer.html_text(p.name)}">image {i}</a>'
            f"{': ' + viewer.html_text(name) if name else ''}</li>"
            for i, (p, name) in enumerate(zip(paths, names, strict=True)))
        (out / "index.html").write_text(
            f'<!DOCTYPE html><meta charset="utf-8"><title>{viewer.html_text(title)}</title>'
            f"<h1>{viewer.html_text(title)}</h1><ul>{links}</ul>", encoding="utf-8")
        paths.insert(0, out / "index.html")
    return paths
