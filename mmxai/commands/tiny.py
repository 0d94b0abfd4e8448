"""``mmxai tiny FAMILY DIR``: save a tiny random-weight model of a registered family.

The folder loads back with ``mmxai explain DIR ...`` (``from_pretrained``, offline), so a
fresh install can run the whole pipeline without the hub. A small demo photo is written
next to the weights, and the generation config asks for at least :data:`MIN_NEW_TOKENS`
tokens. Families come from the registry: the core names none.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from mmxai.errors import InputError, MMXAIError, UnknownNameError
from mmxai.model import Model
from mmxai.registry import manager

DEMO_IMAGE = "demo.png"
#: Random weights often pick end-of-turn first; the saved folder's generation config asks
#: for at least this many tokens so a demo shows several maps.
MIN_NEW_TOKENS = 4


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


def families() -> dict[str, type[Model]]:
    """Registered adapters that have a tiny builder, by adapter name (sorted)."""
    found = {}
    for adapter in manager().items("models").values():
        if getattr(adapter.tiny, "__func__", None) is not Model.tiny.__func__:
            found[adapter.name or adapter.architectures[0]] = adapter
    return dict(sorted(found.items()))


def find_family(family: str) -> type[Model]:
    """The adapter named ``family`` (adapter name or HF architecture, any case, - or _)."""
    for name, adapter in families().items():
        if _key(family) in {_key(name), *map(_key, adapter.architectures)}:
            return adapter
    available = ", ".join(families()) or "none (no model plugin with a tiny builder loaded)"
    raise UnknownNameError(f"no tiny model for family {family!r}; available: {available}")


def _reason(exc: OSError, path: Path) -> str:
    """``exc``'s cause, naming the path it is about when that is not ``path`` itself."""
    cause = exc.strerror or type(exc).__name__
    where = exc.filename
    if where is not None and str(where) != str(path):
        cause += f": {str(where)!r}"
    return cause


def writable_folder(folder: Path, what: str) -> Path:
    """Create ``folder`` (and its parents) if needed and check a file can be written in it;
    else :class:`InputError` naming ``what`` (the option or argument) and the cause.

    Run before anything slow, so a bad output path fails in a second, not after the model
    ran. (Run as root, a read-only permission does not stop writes: only a real failure
    counts.)
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{what} {str(folder)!r}: cannot create the folder "
                         f"({_reason(exc, folder)})") from exc
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".mmxai-write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{what} {str(folder)!r}: cannot write into the folder "
                         f"({_reason(exc, folder)})") from exc
    return folder


def folder_argument(text: str) -> Path:
    """An argparse ``type`` for an output folder: an empty or blank name is refused (``Path("")``
    is the current folder, and writing there was never asked for)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty folder name; give a folder to write into "
                                         "(use . for the current folder)")
    return Path(text)


#: Files that mark a folder as holding a model already: ``mmxai tiny`` will not overwrite them
#: unless told to (``--overwrite``).
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json",
               "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_not_a_model(folder: Path, what: str) -> None:
    """Refuse, in one line naming ``what``, a folder that already holds a model's config or
    weights (see :data:`MODEL_FILES`, and any ``*.safetensors``)."""
    if not folder.is_dir():
        return
    found = [name for name in MODEL_FILES if (folder / name).exists()]
    found += sorted(p.name for p in folder.glob("*.safetensors") if p.name not in found)
    if found:
        raise InputError(f"{what} {str(folder)!r} already holds a model ({', '.join(found[:3])}"
                         f"{', ...' if len(found) > 3 else ''}); writing the tiny model there "
                         f"would replace it: choose another folder, or pass --overwrite")


def save_tiny(family: str, folder: Path, seed: int = 0, overwrite: bool = False) -> Model:
    """Build the tiny model of ``family``; save weights, config, processor and
    :data:`DEMO_IMAGE` to ``folder``. A folder that holds a model already is refused unless
    ``overwrite``."""
    adapter = find_family(family)
    if not overwrite:
        check_not_a_model(folder, "folder")
    writable_folder(folder, "folder")
    model = adapter.tiny(seed=seed)
    model.hf.generation_config.min_new_tokens = MIN_NEW_TOKENS
    try:
        model.hf.save_pretrained(folder)
        model.processor.save_pretrained(folder)
        save_demo_image(folder / DEMO_IMAGE)
    except OSError as exc:
        raise MMXAIError(f"cannot write the tiny model to {str(folder)!r}: "
                         f"{_reason(exc, folder)}") from exc
    return model


def save_demo_image(path: Path, size: int = 256) -> Path:
    """scikit-image's astronaut photo (shipped in its wheel, public domain), downscaled."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", help="adapter name or HF architecture (see `mmxai plugins`)")
    parser.add_argument("dir", type=folder_argument, help="folder to write the model to")
    parser.add_argument("--seed", type=int, default=0, help="random weights' seed (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder that already holds a model (replacing it)")


def shown(value: object) -> str:
    """A path or name for the terminal: rich markup escaped, undecodable bytes as U+FFFD
    (a non-UTF-8 file name must not crash the last print)."""
    return escape("".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in str(value)))


def run(args: argparse.Namespace) -> int:
    find_family(args.family)  # checked before the folder is made
    if not args.overwrite:
        check_not_a_model(args.dir, "DIR")
    writable_folder(args.dir, "DIR")
    console = Console(soft_wrap=True)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards": the status line says it
    try:
        with console.status(f"building the tiny {shown(args.family)} model"):
            model = save_tiny(args.family, args.dir, seed=args.seed, overwrite=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    n_params = sum(p.numel() for p in model.hf.parameters())
    console.print(f"saved tiny [bold]{shown(model.name)}[/] ({type(model.hf).__name__}, "
                  f"{n_params:,} random parameters) to {shown(args.dir)}")
    console.print(f"try: mmxai explain {shown(args.dir)} {shown(args.dir / DEMO_IMAGE)}")
    return 0
