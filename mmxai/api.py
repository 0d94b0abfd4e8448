"""The Python API: one image (or several) and a prompt in, one map per generated token out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmxai import maps as mapsmod
from mmxai.errors import InputError, MMXAIError
from mmxai.images import read_image
from mmxai.method import InvalidMapsError, Method, token_indices
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


def failure_message(method: str, exc: BaseException) -> str:
    """One line saying why ``method`` failed: its own message for an mmxai error, else the
    exception's type and message (an unexpected type is a bug, named as such)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, InvalidMapsError):
        return text
    if isinstance(exc, MMXAIError):
        return f"method {method!r} failed: {text}"
    if isinstance(exc, SystemExit):
        return f"method {method!r} failed: it called sys.exit({exc.code!r})"
    return f"method {method!r} failed: {type(exc).__name__}" + (f": {text}" if text else "")


def _image_names(images: Sequence[ImageLike], names: Sequence[str] | None) -> str:
    if names is None:
        names = [str(im) if isinstance(im, (str, Path))
                 else getattr(im, "filename", "") or f"<image {k}>"
                 for k, im in enumerate(images)]
    return ("image " if len(names) == 1 else "images ") + ", ".join(map(repr, map(str, names)))


def check_prompt(prompt: Any, what: str = "prompt") -> str:
    """``prompt`` if it is text that can be encoded (UTF-8), else one line naming ``what``."""
    if not isinstance(prompt, str):
        raise InputError(f"{what}: expected text, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what}: not valid UTF-8 text (undecodable byte(s) at character "
                         f"{exc.start}: {prompt[exc.start:exc.end]!r})") from exc
    return prompt


def explain_many(model: Model | str, images: ImageLike | Sequence[ImageLike], prompt: str,
                 methods: Sequence[str | Method] = ("tam",), *, max_new_tokens: int = 32,
                 method_options: dict[str, dict[str, Any]] | None = None,
                 tokens: Sequence[int] | None = None,
                 on_step: Callable[[str], None] | None = None,
                 generate_kwargs: dict[str, Any] | None = None,
                 failures: dict[str, BaseException] | None = None,
                 image_names: Sequence[str] | None = None) -> dict[str, Explanation]:
    """Trace once, then run every method on the shared trace.

    ``tokens`` selects generated-token indices (all by default). ``method_options`` maps a
    method name to its options. ``on_step`` (for progress displays) is called with
    ``"trace"`` before generating and with each method's name before it runs.
    ``generate_kwargs`` go to ``generate`` (e.g. ``min_new_tokens``).

    Every method's maps are checked: (len(tokens), N_image) and finite, else
    :class:`InvalidMapsError`. With ``failures`` (a dict) a method that raises or returns
    bad maps is left out of the result and its exception stored there under its name
    (:func:`failure_message` says it in one line), so the other methods still give maps;
    without it the first failure is raised. A processor or ``generate`` that refuses the
    images or prompt (``ValueError``), or runs out of memory, is an :class:`InputError`
    naming the images (as ``image_names`` gives them, by default their paths).
    """
    check_prompt(prompt)
    if isinstance(model, str):
        model = load_model(model)
    if isinstance(images, (str, Path, Image.Image)):
        images = [images]
    pil = [load_image(im) for im in images]
    method_options = method_options or {}
    instances = [make_method(m, **method_options.get(m if isinstance(m, str) else m.name, {}))
                 for m in methods]
    names = [method.name for method in instances]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"methods: {', '.join(map(repr, twice))} given twice (one result "
                         f"per name)")
    needs = Needs()
    for method in instances:
        needs = needs | method.needs
    named = _image_names(images, image_names)
    try:
        inputs = model.build_inputs(pil, prompt)
    except (ValueError, torch.OutOfMemoryError) as exc:
        raise InputError(f"{named}: the model's processor cannot take the image(s) with this "
                         f"prompt: {type(exc).__name__}: {exc}") from exc
    if on_step is not None:
        on_step("trace")
    try:
        trace = generate_trace(model, inputs, needs, max_new_tokens=max_new_tokens,
                               **(generate_kwargs or {}))
    except (ValueError, torch.OutOfMemoryError) as exc:
        raise InputError(f"{named}: generation failed on these inputs: "
                         f"{type(exc).__name__}: {exc}") from exc
    selected = token_indices(tokens, trace.n_generated)  # before any method runs
    strings = trace.token_strings()
    results = {}
    for method in instances:
        if on_step is not None:
            on_step(method.name)
        try:
            maps = method(trace, selected)  # the contract: shape, float32, finite
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # with `failures`, SystemExit & co. are failures too
            if failures is None:
                raise
            failures[method.name] = exc
            continue
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
