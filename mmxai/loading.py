"""Loading a checkpoint the project never saw: what a partial folder lacks, filled in from
the model's own config, and a check that the result runs.

A folder saved the plain way (the model's, the tokenizer's and the image processor's
``save_pretrained``, nothing else) has no ``processor_config.json`` and often no chat
template. :meth:`mmxai.model.Model.from_pretrained` then calls :func:`finish`:

- the adapter's :meth:`~mmxai.model.Model.complete_processor` fills, from the model's
  config, the processor settings the folder lacks (LLaVA's ``patch_size``, InternVL's image
  tokens per tile, an image token unlike the config's), named in one note;
- the chat template is the one asked for (``--chat-template FILE``, ``chat_template=``),
  else the processor's, else the tokenizer's, else the family's
  :attr:`~mmxai.model.Model.default_chat_template`, named in one note;

each note a :class:`LoadNote` warning of one line (the commands print it as ``note: ...``).
:func:`preflight` then runs the processor and one forward pass on a small synthetic image,
so a checkpoint that cannot run fails in one line before any dataset loop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from mmxai.errors import InputError, MMXAIError, UnsupportedModelError

if TYPE_CHECKING:
    from mmxai.model import Model

#: Side in pixels of the synthetic image :func:`preflight` runs the model on.
TEST_IMAGE_SIDE = 64
TEST_PROMPT = "Describe the image."
#: Files that hold a tokenizer (any one of them will do).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class LoadNote(UserWarning):
    """What loading filled in that the checkpoint lacked, in one line."""


# -- chat templates as the user gives them -----------------------------------------------------
def chat_template_text(value: Any, what: str = "chat_template") -> str | None:
    """``value`` as a chat template's text, checked (:func:`check_template`): None, a Jinja
    template as text, or a path (``os.PathLike``) to a UTF-8 file holding one. Text without
    any ``{{ }}`` or ``{% %}`` is refused: it is more likely a file name than a template."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        return read_chat_template(Path(value), what)
    if not isinstance(value, str):
        raise InputError(f"{what}: expected a Jinja chat template as text or a path to a "
                         f"file holding one, got {type(value).__name__}")
    return check_template(value, what, hint="; to read one from a file, pass a pathlib.Path")


def read_chat_template(path: Path, what: str = "--chat-template") -> str:
    """The chat template in the UTF-8 file ``path``, checked; else one line naming ``what``."""
    named = f"{what} {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{named}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{named}: a folder, not a chat template file") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{named}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise InputError(f"{named}: cannot read it ({exc.strerror or exc})") from exc
    return check_template(text, named)


def check_template(text: str, what: str, hint: str = "") -> str:
    """``text`` if it can be a Jinja chat template (not empty, has a tag, parses)."""
    if not text.strip():
        raise InputError(f"{what}: an empty chat template")
    if "{{" not in text and "{%" not in text:
        raise InputError(f"{what}: not a Jinja chat template (no {{{{ ... }}}} or "
                         f"{{% ... %}} in it){hint}")
    try:
        import jinja2
    except ImportError:  # transformers names the missing package when it renders
        return text
    try:
        # transformers' own compiler knows its tags ({% generation %} in LLaVA-OneVision's)
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # a version without it: plain Jinja with the loop controls
        def _compile_jinja_template(source: str) -> Any:
            return jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(source)
    try:
        _compile_jinja_template(text)
    except jinja2.TemplateSyntaxError as exc:
        raise InputError(f"{what}: not a valid Jinja template (line {exc.lineno}: "
                         f"{exc.message})") from exc
    return text


# -- what a partial checkpoint lacks -----------------------------------------------------------
def fill_image_token(processor: Any, config: Any) -> list[str]:
    """Give the processor the config's image token when its own differs (a fine-tune that
    renamed it, a tokenizer without the processor's default); ``["image_token=..."]`` or
    ``[]``."""
    token_id = getattr(config, "image_token_id", None)
    if token_id is None:
        token_id = getattr(config, "image_token_index", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if (token_id is None or tokenizer is None
            or getattr(processor, "image_token_id", token_id) == token_id):
        return []
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(token, str):
        return []
    processor.image_token, processor.image_token_id = token, int(token_id)
    return [f"image_token={token}"]


def finish(model: Model, chat_template: str | None = None) -> list[str]:
    """Complete ``model``'s processor and chat template (the module docstring); the notes,
    one line each. A processor without an image processor is refused in one line."""
    processor = model.processor
    if getattr(processor, "image_processor", None) is None:
        raise UnsupportedModelError(
            f"cannot load model {model.model_id!r}: no image processor (preprocessor_config"
            f".json, or processor_config.json holding one); its processor is "
            f"{type(processor).__name__}")
    notes = []
    filled = type(model).complete_processor(processor, model.hf.config)
    if filled:
        where = ("no processor_config.json" if not has_file(model.model_id,
                                                            "processor_config.json")
                 else "processor settings missing or unlike the model's")
        notes.append(f"{model.model_id}: {where}: filled {', '.join(filled)} from the model "
                     "config")
    if chat_template is not None:
        processor.chat_template = chat_template
    elif getattr(processor, "chat_template", None) is None:
        own = getattr(model.tokenizer, "chat_template", None)
        if own is not None:  # an older folder: the template in tokenizer_config.json only
            processor.chat_template = own
        else:
            notes.append(default_template(model))
    return notes


def default_template(model: Model) -> str:
    """Set the family's default chat template on ``model``'s processor; the note saying so.
    A family without one is refused in one line."""
    template = type(model).default_chat_template
    if template is None:
        raise UnsupportedModelError(
            f"cannot load model {model.model_id!r}: it has no chat template and the "
            f"{model.name or type(model).__name__} adapter knows no default; give one with "
            f"--chat-template FILE (chat_template= in Python)")
    model.processor.chat_template = template
    try:
        example = model.chat_text("{prompt}", 1).replace("\n", "\\n")
    except Exception:  # a template that cannot render: preflight says so, in one line
        example = "a template that does not render"
    return (f"{model.model_id}: no chat template: using the {model.name} adapter's default "
            f"({example}); --chat-template FILE sets another")


def has_file(model_id: str, name: str) -> bool:
    """Whether the checkpoint (a folder, or a hub name's cached snapshot) holds ``name``."""
    folder = Path(model_id)
    if folder.is_dir():
        return (folder / name).is_file()
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model_id, name), str)
    except Exception:  # not a repo id: nothing cached under it
        return False


def processor_error(spec: str, exc: BaseException) -> UnsupportedModelError:
    """One line for a processor that would not load: what the folder lacks when that is
    why (no tokenizer, no image processor), else what transformers said."""
    folder = Path(spec)
    if folder.is_dir():
        if not any((folder / name).is_file() for name in TOKENIZER_FILES):
            return UnsupportedModelError(f"cannot load model {spec!r}: no tokenizer in the "
                                         f"folder (none of {', '.join(TOKENIZER_FILES)})")
        if not any((folder / name).is_file()
                   for name in ("preprocessor_config.json", "processor_config.json")):
            return UnsupportedModelError(f"cannot load model {spec!r}: no image processor in "
                                         "the folder (preprocessor_config.json)")
    return UnsupportedModelError(f"cannot load model {spec!r}: its processor cannot be "
                                 f"loaded: {_cause(exc)}")


# -- does it run -------------------------------------------------------------------------------
def synthetic_image(side: int = TEST_IMAGE_SIDE) -> Image.Image:
    """A ``side`` x ``side`` RGB gradient: something to look at, the same every time."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]),
                      axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def preflight(model: Model) -> None:
    """Build the inputs for one synthetic image and run one forward pass, so a processor or
    model that cannot run is one line now, naming the step and the cause, not a failure on
    every sample."""
    what = f"cannot run model {model.model_id!r}"
    image = f"a {TEST_IMAGE_SIDE}x{TEST_IMAGE_SIDE} test image"
    try:
        inputs = model.build_inputs([synthetic_image()], TEST_PROMPT)
    except Exception as exc:
        raise UnsupportedModelError(f"{what}: its processor or chat template fails on {image}: "
                                    f"{_cause(exc)}") from exc
    try:
        with torch.no_grad():
            model.hf(**inputs.features)
    except Exception as exc:
        raise UnsupportedModelError(f"{what}: a forward pass on {image} fails: "
                                    f"{_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    """``exc`` in one line: its type and the first line of its message (mmxai's own errors
    as they read)."""
    lines = str(exc).strip().splitlines()
    first = " ".join(lines[0].split())[:300] if lines else ""
    if isinstance(exc, MMXAIError):
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
