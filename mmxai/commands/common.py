"""What the commands share: opening a model, devices and dtypes, method options."""

from __future__ import annotations

import os

import torch

from mmxai.commands.tiny import find_family
from mmxai.errors import InputError, UnsupportedModelError
from mmxai.model import Model, load_model

TINY = "tiny:"


def resolve_device(spec: str) -> torch.device:
    if spec != "auto":
        return torch.device(spec)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def parse_dtype(spec: str) -> torch.dtype | str:
    if spec == "auto":
        return "auto"
    dtype = getattr(torch, spec, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"--dtype {spec!r}: expected auto, float32, bfloat16 or float16")
    return dtype


def open_model(spec: str, device: torch.device, dtype: torch.dtype | str = "auto",
               trust_remote_code: bool = False) -> Model:
    """A model from a hub name, a local folder, or ``tiny:<family>``."""
    if spec.startswith(TINY):
        model = find_family(spec[len(TINY):]).tiny()
        model.hf.to(device=device, dtype=None if dtype == "auto" else dtype)
        return model
    try:
        return load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"cannot load model {spec!r}: {first}") from exc


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
