"""``mmxai tiny FAMILY DIR``: save a tiny random-weight model of a registered family.

The folder loads back with ``mmxai explain DIR ...`` (``from_pretrained``, offline), so a
fresh install can run the whole pipeline without the hub. A small demo photo is written
next to the weights, and the generation config asks for at least :data:`MIN_NEW_TOKENS`
tokens. Families come from the registry: the core names none.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from mmxai.errors import MMXAIError, UnknownNameError
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


def save_tiny(family: str, folder: Path, seed: int = 0) -> Model:
    """Build the tiny model of ``family``; save weights, config, processor and
    :data:`DEMO_IMAGE` to ``folder``."""
    adapter = find_family(family)
    model = adapter.tiny(seed=seed)
    model.hf.generation_config.min_new_tokens = MIN_NEW_TOKENS
    folder.mkdir(parents=True, exist_ok=True)
    try:
        model.hf.save_pretrained(folder)
        model.processor.save_pretrained(folder)
        save_demo_image(folder / DEMO_IMAGE)
    except OSError as exc:
        raise MMXAIError(f"cannot write the tiny model to {str(folder)!r}: {exc}") from exc
    return model


def save_demo_image(path: Path, size: int = 256) -> Path:
    """scikit-image's astronaut photo (shipped in its wheel, public domain), downscaled."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("family", help="adapter name or HF architecture (see `mmxai plugins`)")
    parser.add_argument("dir", type=Path, help="folder to write the model to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def run(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)
    with console.status(f"building the tiny {args.family} model"):
        model = save_tiny(args.family, args.dir, seed=args.seed)
    n_params = sum(p.numel() for p in model.hf.parameters())
    console.print(f"saved tiny [bold]{model.name}[/] ({type(model.hf).__name__}, "
                  f"{n_params:,} random parameters) to {args.dir}")
    console.print(f"try: mmxai explain {args.dir} {args.dir / DEMO_IMAGE}")
    return 0
