"""The Python API: one image (or several) and a prompt in, one map per generated token out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmxai import maps as mapsmod
from mmxai.images import read_image
from mmxai.method import Method
from mmxai.model import Model, load_model
from mmxai.registry import manager
from mmxai.trace import Needs, Trace, generate_trace

ImageLike = str | Path | Image.Image


@dataclass
class Explanation:
    """One method's maps for the generated tokens of one traced sample."""

    method: str
    options: dict[str, Any]
    trace: Trace
    tokens: list[int]  # indices of the explained generated tokens
    maps: np.ndarray  # (len(tokens), N_image) float32, flat over the grids
    words: list[str] = field(default_factory=list)  # decoded explained tokens

    def grid_maps(self, i: int) -> list[np.ndarray]:
        """The ``i``-th explained token's map on each image-token grid."""
        return mapsmod.split(self.maps[i], self.trace.grids)

    def image_map(self, i: int, image: int = 0, size: tuple[int, int] | None = None,
                  frame: int | None = 0) -> np.ndarray:
        """The ``i``-th explained token's map in the frame of the original image (H, W)."""
        if size is None:
            width, height = self.trace.inputs.images[image].size
            size = (height, width)
        return mapsmod.to_image(self.maps[i], self.trace.grids, image, size, frame)

    @property
    def text(self) -> str:
        return self.trace.model.tokenizer.decode(self.trace.generated_ids,
                                                 skip_special_tokens=True)


def load_image(image: ImageLike) -> Image.Image:
    """An upright RGB image (:func:`mmxai.images.read_image`: EXIF orientation, every PIL
    mode converted faithfully or refused), or one line naming the file and the cause."""
    if isinstance(image, Image.Image):
        return read_image(image, "PIL image")
    return read_image(image, f"image {str(image)!r}")


def make_method(spec: str | Method, **options: Any) -> Method:
    """A method instance from a registered name (with options) or an instance."""
    if isinstance(spec, Method):
        return spec
    return manager().get("methods", spec)(**options)


def explain_many(model: Model | str, images: ImageLike | Sequence[ImageLike], prompt: str,
                 methods: Sequence[str | Method] = ("tam",), *, max_new_tokens: int = 32,
                 method_options: dict[str, dict[str, Any]] | None = None,
                 tokens: Sequence[int] | None = None,
                 on_step: Callable[[str], None] | None = None,
                 generate_kwargs: dict[str, Any] | None = None) -> dict[str, Explanation]:
    """Trace once, then run every method on the shared trace.

    ``tokens`` selects generated-token indices (all by default). ``method_options`` maps a
    method name to its options. ``on_step`` (for progress displays) is called with
    ``"trace"`` before generating and with each method's name before it runs.
    ``generate_kwargs`` go to ``generate`` (e.g. ``min_new_tokens``).
    """
    if isinstance(model, str):
        model = load_model(model)
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    pil = [load_image(im) for im in images]
    method_options = method_options or {}
    instances = [make_method(m, **method_options.get(m if isinstance(m, str) else m.name, {}))
                 for m in methods]
    needs = Needs()
    for method in instances:
        needs = needs | method.needs
    inputs = model.build_inputs(pil, prompt)
    if on_step is not None:
        on_step("trace")
    trace = generate_trace(model, inputs, needs, max_new_tokens=max_new_tokens,
                           **(generate_kwargs or {}))
    selected = list(range(trace.n_generated)) if tokens is None else [int(t) for t in tokens]
    strings = trace.token_strings()
    results = {}
    for method in instances:
        if on_step is not None:
            on_step(method.name)
        maps = np.asarray(method.explain(trace, selected), dtype=np.float32)
        results[method.name] = Explanation(method.name, method.describe_options(), trace,
                                           selected, maps, [strings[t] for t in selected])
    return results


def explain(model: Model | str, images: ImageLike | Sequence[ImageLike], prompt: str,
            method: str | Method = "tam", *, max_new_tokens: int = 32,
            tokens: Sequence[int] | None = None, **options: Any) -> Explanation:
    """Explain every generated token with one method. ``options`` go to the method."""
    instance = make_method(method, **options)
    return explain_many(model, images, prompt, [instance], max_new_tokens=max_new_tokens,
                        tokens=tokens)[instance.name]
