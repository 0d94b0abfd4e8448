"""What the commands share: opening a model, devices and dtypes, method options."""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from safetensors import SafetensorError

from mmxai import api, hub, loading
from mmxai.commands.tiny import find_family
from mmxai.device_map import INSTALL, dispatch
from mmxai.errors import InputError, UnsupportedModelError
from mmxai.model import Model, load_model

TINY = "tiny:"


#: What ``--dtype`` accepts besides ``auto`` (the checkpoint's own dtype).
DTYPES = ("float32", "bfloat16", "float16", "float64")
#: Device types mmxai runs on, with how to ask torch whether one is there and how many.
_BACKENDS = {
    "cuda": ("CUDA", lambda: torch.cuda.is_available(), lambda: torch.cuda.device_count()),
    "mps": ("MPS (Apple GPU)", lambda: torch.backends.mps.is_available(), lambda: 1),
    "xpu": ("XPU (Intel GPU)", lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
            lambda: torch.xpu.device_count()),
}


def resolve_device(spec: str, option: str = "--device") -> torch.device:
    """The device ``spec`` names, checked to exist on this machine; anything else is one line
    naming ``option`` and the cause, raised before any model loads.

    ``auto``: ``cuda:$LOCAL_RANK`` (default 0) when CUDA is available, else ``cpu``.
    """
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        rank = os.environ.get("LOCAL_RANK", "0")
        if not rank.strip().isdigit():
            raise InputError(f"LOCAL_RANK {rank!r}: expected a CUDA device index (0, 1, ...)")
        spec = f"cuda:{int(rank)}"
        option = f"{option} auto (LOCAL_RANK={int(rank)})"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InputError(f"{option} {spec!r}: not a device; expected auto, cpu, cuda, cuda:N, "
                         f"mps or xpu") from exc
    if device.type == "cpu":
        return device
    if device.type not in _BACKENDS:
        raise InputError(f"{option} {spec!r}: mmxai runs models on cpu, cuda, mps or xpu, "
                         f"not on {device.type!r}")
    label, available, count = _BACKENDS[device.type]
    if not available():
        raise InputError(f"{option} {spec!r}: {label} is not available here (torch "
                         f"{torch.__version__}); use --device cpu or auto")
    n = count()
    if device.index is not None and device.index >= n:
        raise InputError(f"{option} {spec!r}: no such device; this machine has {n} "
                         f"{device.type} device(s), {device.type}:0 to {device.type}:{n - 1}")
    return device


def parse_dtype(spec: str) -> torch.dtype | str:
    """``auto`` or one of :data:`DTYPES` as a torch dtype; anything else is one line."""
    if spec == "auto":
        return "auto"
    if spec not in DTYPES:
        raise InputError(f"--dtype {spec!r}: expected auto, {', '.join(DTYPES)}")
    return getattr(torch, spec)


#: What loading a model raises when the checkpoint, not mmxai, is at fault: a missing or
#: unreadable file, a malformed config, corrupt weights, a package the checkpoint's own code
#: needs, too little memory.
_LOAD_ERRORS = (OSError, ValueError, ImportError, SafetensorError, torch.OutOfMemoryError)


def check_max_new_tokens(n: object, option: str = "--max-new-tokens") -> int:
    """``n`` as the number of tokens to generate, checked before any model loads: a whole
    number from 1 to :data:`mmxai.api.MAX_NEW_TOKENS` (4096), else one line naming
    ``option`` (:func:`mmxai.api.check_max_new_tokens`)."""
    return api.check_max_new_tokens(n, option)


def add_device_map_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device-map`` and ``--max-memory``, as ``explain`` and ``compare`` share them."""
    parser.add_argument("--device-map", metavar="auto|balanced|sequential",
                        help="split the model over this machine's GPUs (then CPU memory, then "
                             "disk) with accelerate: auto or balanced spread it evenly, "
                             "sequential fills each GPU in turn; needs "
                             f"{INSTALL} (default: the whole model on --device)")
    parser.add_argument("--max-memory", metavar="DEVICE=SIZE,...",
                        help="what --device-map may use of each device, e.g. "
                             "0=20GiB,1=20GiB,cpu=60GiB (default: what is free)")


def open_model(spec: str, device: torch.device, dtype: torch.dtype | str = "auto",
               trust_remote_code: bool = False, source: hub.Source | None = None,
               chat_template: str | None = None,
               say: Callable[[str], None] | None = None,
               device_map: str | None = None, max_memory: dict | None = None) -> Model:
    """A model from a hub name, a local folder, a bundled model's name (``testbed``) or
    ``tiny:<family>``, checked to run.

    A folder that does not exist, a hub name the hub does not have or cannot be asked
    about, or a config whose ``architectures`` is not a list is one line at once
    (:func:`mmxai.hub.resolve`), never a minute of retries. Hugging Face's own progress bars
    and retry logging are off while it loads (:func:`mmxai.hub.quiet`; ``--verbose`` lets
    them through), so stderr holds nothing but what mmxai says. ``source``: what
    :func:`mmxai.hub.resolve` already said about ``spec`` (a command that checks it before
    its progress display starts), so the hub is not asked twice. ``chat_template`` (the
    text of ``--chat-template``) replaces the checkpoint's. How the name was read (a bundled
    model's name that is also a folder here) and what loading filled in
    (:mod:`mmxai.loading`) go to ``say``, one ``note: ...`` line each (default: stderr); a
    model that cannot run on a test image is one line (:func:`mmxai.loading.preflight`),
    before any sample. ``device_map``/``max_memory`` (:func:`mmxai.device_map.placement`)
    split the model over devices instead of putting it on ``device``."""
    split = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory}
    if not spec.startswith(TINY):
        source = source or hub.resolve(spec)
        if source.note is not None:
            (say or note)(source.note)
    try:
        if spec.startswith(TINY):
            model = find_family(spec[len(TINY):]).tiny()
            model.hf.to(device=device, dtype=None if dtype == "auto" else dtype)
            if split:
                dispatch(model, **split)
            if chat_template is not None:
                model.processor.chat_template = chat_template
                loading.preflight(model)
            return model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", loading.LoadNote)  # said below, as notes
            model = load_model(spec, source=source, device=device, dtype=dtype,
                               trust_remote_code=trust_remote_code,
                               chat_template=chat_template, **split)
    except _LOAD_ERRORS as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        cause = first if isinstance(exc, (OSError, ValueError)) and first else \
            f"{type(exc).__name__}: {first}".rstrip(": ")
        raise UnsupportedModelError(f"cannot load model {spec!r}: {cause}") from exc
    for text in model.load_notes:
        (say or note)(text)
    return model


def note(text: str, console: Console | None = None) -> None:
    """One yellow ``note:`` line on ``console`` (default: stderr), never wrapped (scripts
    can grep it)."""
    (console or Console(stderr=True)).print(f"[yellow]note:[/] {escape(text)}",
                                            soft_wrap=True)


def chat_template_option(path: Path | None) -> str | None:
    """The text of ``--chat-template FILE`` (UTF-8, a Jinja template), read and checked
    before any model loads; a missing, unreadable or malformed file is one line."""
    return None if path is None else loading.read_chat_template(path, "--chat-template")


def parse_options(specs: list[str], names: list[str]) -> dict[str, dict[str, str]]:
    """``["tam.eci=false"]`` -> ``{"tam": {"eci": "false"}}``. Values stay strings here: each
    plugin reads them against its options' field types (:func:`mmxai.options.make_options`),
    so ``false`` and ``False`` are the same boolean and ``maybe`` is refused."""
    options: dict[str, dict[str, str]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        plugin, dot, name = key.partition(".")
        if not (sep and dot and plugin and name):
            raise InputError(f"--option {spec!r}: expected NAME.KEY=VALUE, e.g. tam.eci=false")
        if plugin not in names:
            raise InputError(f"--option {spec!r}: {plugin!r} is not run here: no method, "
                             f"metric or dataset of this run has that name (options apply "
                             f"to: {', '.join(names)})")
        if name in options.get(plugin, {}):
            raise InputError(f"--option {spec!r}: {key} is given twice")
        options.setdefault(plugin, {})[name] = raw
    return options
