"""The Python API: one image (or several) and a prompt in, one map per generated token out.

:func:`open_pretrained` (``mmxai.load_model``) opens a checkpoint, with Qwen's pixel budget
(:mod:`mmxai.pixels`); :func:`explain` and :func:`explain_many` trace once and run the
methods; comparing and the viewer page: :mod:`mmxai.compare_api`. docs/api.md: all of it.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmxai import hub, loading
from mmxai import maps as mapsmod
from mmxai.device_map import placement
from mmxai.errors import InputError, MMXAIError, UnsupportedModelError
from mmxai.images import read_image
from mmxai.method import InvalidMapsError, Method, default_methods, token_indices
from mmxai.model import Model, load_model
from mmxai.options import OptionError
from mmxai.pixels import pixel_bounds, set_pixel_budget
from mmxai.registry import manager
from mmxai.trace import Needs, Trace, generate_trace
from mmxai.video import Video, VideoFile, as_video, build_video_inputs, open_video

#: An image as the API takes it: a path, a PIL image, or an RGB(A)/grey uint8 numpy array.
ImageLike = str | os.PathLike | Image.Image | np.ndarray

#: The longest answer ``max_new_tokens`` may ask for: every generated token gets a map per
#: method (and a PNG per image in ``mmxai explain``), and real MLLMs' context windows are a
#: few thousand tokens; a larger value is a typo, not a request (10**20 used to hang).
MAX_NEW_TOKENS = 4096


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
                  frame: int | None = None) -> np.ndarray:
        """Token ``i``'s (H, W) map on image ``image``; a clip's on temporal patch ``frame``."""
        if frame is None and image in self.trace.inputs.clips:  # never silently patch 0
            raise InputError(f"image_map: image {image} is a video; give frame=t (temporal patch)")
        size = size or self.trace.inputs.images[image].size[::-1]  # (height, width)
        return mapsmod.to_image(self.maps[i], self.trace.grids, image, size, frame or 0)

    @property
    def text(self) -> str:
        return self.trace.model.tokenizer.decode(self.trace.generated_ids,
                                                 skip_special_tokens=True)


def load_image(image: ImageLike) -> Image.Image:
    """An upright RGB image (:func:`mmxai.images.read_image`: EXIF orientation, every PIL
    mode converted faithfully or refused), or one line naming the file and the cause.

    Takes a path (``str`` or ``os.PathLike``), a PIL image, or a numpy ``uint8`` array of
    shape (H, W) (grey), (H, W, 3) (RGB, the order PIL and transformers use: an OpenCV
    BGR array must be flipped first) or (H, W, 4) (RGBA). Bytes are refused: they may be a
    path or a file's contents, and mmxai does not guess (``os.fsdecode(path)`` or
    ``PIL.Image.open(io.BytesIO(data))``)."""
    if isinstance(image, Image.Image):
        return read_image(image, "PIL image")
    if isinstance(image, np.ndarray):
        return read_image(array_image(image), "numpy image")
    if isinstance(image, (bytes, bytearray, memoryview)):
        raise InputError(f"image: got {type(image).__name__}; pass a path as str or "
                         f"pathlib.Path (os.fsdecode(path)), or file contents as a PIL image "
                         f"(PIL.Image.open(io.BytesIO(data)))")
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
        if isinstance(image, bytes):
            image = os.fsdecode(image)
    if not isinstance(image, str):
        raise InputError(f"image: expected a path, a PIL image or a uint8 numpy array, got "
                         f"{type(image).__name__}")
    if not image.strip():
        raise InputError("image '': an empty path")
    return read_image(image, f"image {image!r}")


def array_image(array: np.ndarray) -> Image.Image:
    """A numpy uint8 array (H, W), (H, W, 3) or (H, W, 4) as a PIL image (grey, RGB, RGBA);
    any other dtype or shape is one line naming it."""
    shape = tuple(array.shape)
    fits = array.ndim == 2 or (array.ndim == 3 and shape[2] in (3, 4))
    if array.dtype != np.uint8 or not fits:
        raise InputError(f"numpy image: expected a uint8 array of shape (H, W), (H, W, 3) or "
                         f"(H, W, 4), got {array.dtype} {shape}")
    return Image.fromarray(np.ascontiguousarray(array))


def image_list(images: Any) -> list[ImageLike]:
    """``images`` as a non-empty list: one image (path, PIL image, array) or a list or tuple
    of them; anything else, or no image at all, is one line."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, bytes, bytearray)):
        return [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("images: none given (an empty list); expected at least one "
                             "image: a path, a PIL image or a uint8 numpy array")
        return list(images)
    raise InputError(f"images: expected an image (a path, a PIL image or a uint8 numpy array) "
                     f"or a list of them, got {type(images).__name__}")


def check_max_new_tokens(value: Any, what: str = "max_new_tokens") -> int:
    """``value`` as an int in ``[1, MAX_NEW_TOKENS]``, or one line naming ``what``: a bool,
    a float (even a whole one), a string, 0, a negative or a huge number is refused."""
    if isinstance(value, (bool, np.bool_)):
        index = None
    else:
        try:
            index = operator.index(value)
        except TypeError:
            index = None
    if index is None:
        shown = " ".join(repr(value).split())[:40]
        raise InputError(f"{what} {shown}: expected a whole number from 1 to {MAX_NEW_TOKENS}, "
                         f"got {type(value).__name__}")
    if not 1 <= index <= MAX_NEW_TOKENS:
        raise InputError(f"{what} {index}: must be from 1 to {MAX_NEW_TOKENS} (the number of "
                         f"tokens to generate and explain)")
    return index


def make_method(spec: str | Method | type[Method], **options: Any) -> Method:
    """A method instance from a registered name or a Method subclass (with its options), or
    an instance as it is. An instance is already configured: options given with one are
    refused in one line (:class:`~mmxai.options.OptionError`), never dropped."""
    if isinstance(spec, Method):
        if options:
            raise OptionError(f"method {spec.name!r}: options {', '.join(sorted(options))} "
                              f"given with a Method instance, which is already configured; "
                              f"pass the name {spec.name!r} with the options, or build the "
                              f"instance with them")
        return spec
    if isinstance(spec, type) and issubclass(spec, Method):
        return spec(**options)
    if not isinstance(spec, str):
        raise InputError(f"method: expected a method name or a Method instance, got "
                         f"{type(spec).__name__}")
    return manager().get("methods", spec)(**options)


def failure_message(method: str, exc: BaseException) -> str:
    """One line saying why ``method`` failed: its own message for an mmxai error, else the
    exception's type and message (an unexpected type is a bug, named as such)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, InvalidMapsError):
        return text
    if isinstance(exc, MMXAIError):  # its own "method 'x': ..." is not said twice
        return f"method {method!r} failed: {text.removeprefix(f'method {method!r}: ')}"
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
                 methods: str | Method | Sequence[str | Method] = ("tam",), *,
                 max_new_tokens: int = 32,
                 method_options: dict[str, dict[str, Any]] | None = None,
                 tokens: Sequence[int] | None = None,
                 on_step: Callable[[str], None] | None = None,
                 generate_kwargs: dict[str, Any] | None = None,
                 failures: dict[str, BaseException] | None = None,
                 image_names: Sequence[str] | None = None,
                 video: Any = None) -> dict[str, Explanation]:
    """Trace once, then run every method on the shared trace.

    ``methods``: names, Method classes or instances (a single one is one method).
    ``tokens`` selects generated-token indices (all by default). ``method_options`` maps a
    method name of this run to its options (a key naming no method of the run, or options
    for an already-built instance, is refused). ``max_new_tokens``: 1 to
    :data:`MAX_NEW_TOKENS`. ``images``: see :func:`load_image`. All of it is checked before
    the model loads (``model`` as a name or folder: :func:`open_pretrained`) and before
    anything generates; a decoder layer a method needs that the model lacks is refused
    (with ``failures``: that method's failure) before generating. ``on_step`` (for
    progress displays) is called with ``"trace"`` before generating and with each method's
    name before it runs.
    ``generate_kwargs`` go to ``generate`` (e.g. ``min_new_tokens``).

    Every method's maps are checked: (len(tokens), N_image) and finite, else
    :class:`InvalidMapsError`. With ``failures`` (a dict) a method that raises or returns
    bad maps is left out of the result and its exception stored there under its name
    (:func:`failure_message` says it in one line), so the other methods still give maps;
    without it the first failure is raised. A processor or ``generate`` that refuses the
    images or prompt (``ValueError``), or runs out of memory, is an :class:`InputError`
    naming the images (as ``image_names`` gives them, by default their paths).
    ``video`` (with ``images`` None): a clip instead, a path, a folder of frames, a list of
    PIL frames or a :class:`mmxai.video.Video` (``fps``/``frames``): docs/video.md.
    """
    # Everything the caller gave is checked before the (slow) model load and generation.
    check_prompt(prompt)
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    instances = _methods(methods, method_options)
    opened = None  # the clip's source, opened once: checked now, sampled by the adapter
    if video is not None:  # opened now: a file PyAV cannot read is one line before loading
        images, video, opened = _one_clip(images, video)
    else:
        images = image_list(images)
    pil = [] if video is not None else [load_image(im) for im in images]
    tokens = token_indices(tokens, None)  # types and signs now, the range once generated
    if not isinstance(model, Model):
        model = open_pretrained(model)
    instances = _check_layers(model, instances, failures)
    if not instances:  # every method was refused (its failure is recorded)
        return {}
    needs = Needs()
    for method in instances:
        needs = needs | method.needs
    named = _image_names(images, image_names)
    try:
        inputs = (build_video_inputs(model, video, prompt, opened) if video is not None
                  else model.build_inputs(pil, prompt))
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
            tokens: Sequence[int] | None = None, video: Any = None,
            **options: Any) -> Explanation:
    """Explain every generated token with one method. ``options`` go to the method (given
    by name; a Method instance is already configured and takes none). ``video``: a clip
    instead of ``images`` (None), as :func:`explain_many` takes it."""
    instance = make_method(method, **options)
    return explain_many(model, images, prompt, [instance], max_new_tokens=max_new_tokens,
                        tokens=tokens, video=video)[instance.name]


def open_pretrained(spec: Any, *, chat_template: Any = None, min_pixels: int | None = None,
                    max_pixels: int | None = None, device_map: Any = None,
                    max_memory: Any = None, **kwargs: Any) -> Model:
    """A model from a hub name, a local folder or a bundled model's name (``testbed``):
    :func:`mmxai.hub.resolve` checks which, in one line, before transformers is asked; a
    bundled name that is also a folder here is said as a :class:`mmxai.loading.LoadNote`
    warning. A checkpoint that cannot be loaded, or whose processor or model cannot run on a
    test image, is one line ``cannot load model 'X': ...`` (``cannot run model ...``). What
    a partial checkpoint lacks is filled in from its config, each thing a ``LoadNote``
    warning (``model.load_notes``). ``chat_template``: a Jinja template's text, or a path
    (``pathlib.Path``) to a file holding one, used instead of the checkpoint's (or the
    family's default). ``min_pixels``/``max_pixels``: the pixel budget of each image, for
    the families that resize to one (:func:`mmxai.pixels.set_pixel_budget`). ``kwargs`` go
    to :func:`mmxai.model.load_model` (``device``, ``dtype``, ``revision`` ...); ``device_map``
    and ``max_memory`` split it over devices instead (docs/scaling.md). Hugging Face's
    progress bars are hidden unless ``MMXAI_VERBOSE=1`` (:func:`mmxai.hub.quiet`).

    ``mmxai.load_model`` is this function; :func:`mmxai.model.load_model` the bare loader
    under it."""
    chat_template = loading.chat_template_text(chat_template)  # before the hub is asked
    budget = pixel_bounds(min_pixels, max_pixels)  # before the (slow) load, as far as it can
    kwargs.update(placement(device_map, max_memory, kwargs.get("device"), cli=False))
    source = hub.resolve(spec)
    if source.note is not None:
        warnings.warn(source.note, loading.LoadNote, stacklevel=2)
    try:  # load_model hides Hugging Face's output itself (hub.quiet)
        model = load_model(source.spec, source=source, chat_template=chat_template, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"cannot load model {spec!r}: {first}") from exc
    set_pixel_budget(model, *budget)
    return model


def _one_clip(images: Any, video: Any) -> tuple[list[str], Video, VideoFile]:
    """The clip's name, the clip and its source, opened once to check it; images: one line."""
    if images is not None and not (isinstance(images, (list, tuple)) and not images):
        raise InputError("images and video given: explain one clip, or images (not both)")
    video = as_video(video)
    return [video.name.strip("'")], video, open_video(video)


def _methods(methods: Any, method_options: Any) -> list[Method]:
    """The run's method instances: names (with their ``method_options``), Method classes or
    instances; a single name or instance is one method. Options for a method that is not in
    the run, or given twice over, are refused in one line, as on the command line."""
    if isinstance(methods, (str, Method)) or (isinstance(methods, type)
                                              and issubclass(methods, Method)):
        methods = [methods]
    if not isinstance(methods, (list, tuple)):
        raise InputError(f"methods: expected a method name, a Method instance or a list of "
                         f"them, got {type(methods).__name__}")
    if not methods:
        raise InputError("methods: none given; expected at least one method name or instance")
    if "all" in methods:  # every registered method, as on the command line
        methods = [x for m in methods for x in (default_methods(["all"]) if m == "all" else [m])]
    if method_options is None:
        method_options = {}
    if not isinstance(method_options, dict):
        raise OptionError(f"method_options: expected a dict of method name -> options dict, "
                          f"got {type(method_options).__name__}")
    names = [m if isinstance(m, str) else getattr(m, "name", None) for m in methods]
    stray = [key for key in method_options if key not in names]
    if stray:
        raise OptionError(f"method_options: {', '.join(map(repr, stray))} not run here: no "
                          f"method of this run has that name (options apply to: "
                          f"{', '.join(str(n) for n in names)})")
    for key, value in method_options.items():
        if not isinstance(value, dict):
            raise OptionError(f"method_options[{key!r}]: expected a dict of option -> value, "
                              f"got {type(value).__name__}")
    instances = [make_method(m, **method_options.get(name, {}))
                 for m, name in zip(methods, names, strict=True)]
    names = [method.name for method in instances]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"methods: {', '.join(map(repr, twice))} given twice (one result "
                         f"per name)")
    return instances


def _check_layers(model: Model, instances: list[Method],
                  failures: dict[str, BaseException] | None) -> list[Method]:
    """Decoder layers a method asks the shared pass to record (``Needs.layers``, e.g.
    ``logit-lens.layer``) must exist in this model: a method asking for one that does not
    is that method's failure (with ``failures``), or raised, before anything generates."""
    try:
        n_layers = len(model.decoder_layers())
    except Exception:  # an adapter without the hook: the trace will say
        return instances
    kept = []
    for method in instances:
        bad = [i for i in method.needs.layers if not -n_layers <= i < n_layers]
        if not bad:
            kept.append(method)
            continue
        cause = (f"decoder layer {bad[0]} is out of range: the model has {n_layers} decoder "
                 f"layers (0 to {n_layers - 1}, or -{n_layers} to -1 from the end)")
        if failures is None:
            raise OptionError(f"method {method.name!r}: {cause}")
        failures[method.name] = OptionError(cause)  # failure_message names the method
    return kept
