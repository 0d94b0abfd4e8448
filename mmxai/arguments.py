"""The Python API's arguments, each checked in one line naming it and turned into what the
commands take (the command line's text, for the code both share): :func:`mmxai.compare`
reads its keywords here before anything is built or loaded.
"""

from __future__ import annotations

import json
import numbers
import operator
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmxai.commands.common import DTYPES, resolve_device
from mmxai.errors import InputError


def _short(value: Any) -> str:
    return " ".join(repr(value).split())[:40]


def text(value: Any, what: str) -> str:
    """``value`` if it is non-blank text (a name)."""
    if isinstance(value, str) and value.strip():
        return value
    raise InputError(f"{what} {_short(value)}: expected a name (text)")


def path(value: Any, what: str, optional: bool = False) -> Path | None:
    """``value`` (text or ``os.PathLike``, not blank) as a Path; None too if ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} {_short(value)}: expected a folder (a path as text or "
                         "pathlib.Path)" + (", or None" if optional else ""))
    return Path(value)


def device(value: Any) -> str:
    """The device as given (the store records it so), checked to exist here."""
    resolve_device(text(value, "device"), "device")
    return value


def models(models: Any) -> tuple[str, ...]:
    """One model spec or a non-empty list of them (text or paths) as ``--model`` strings."""
    if models is None:
        return ()
    given = [models] if isinstance(models, (str, os.PathLike)) else models
    if not isinstance(given, (list, tuple)) or not given:
        raise InputError(f"models {_short(models)}: expected a model (a hub name, folder, "
                         "bundled name or tiny:<family>) or a non-empty list of them; None for "
                         "the bundled benchmark's model")
    specs = [os.fspath(m) if isinstance(m, os.PathLike) else m for m in given]
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip():
            raise InputError(f"models: {_short(spec)} is not a model name or folder")
    return tuple(specs)


def labels(labels: Any) -> tuple[tuple[int, str], ...]:
    """``{model: label}`` as :func:`~mmxai.commands.compare.build_plan` takes ``--label``."""
    if labels is None:
        return ()
    if not isinstance(labels, Mapping):
        raise InputError(f"labels {_short(labels)}: expected a dict of model -> label")
    given = []
    for model, label in labels.items():
        model = os.fspath(model) if isinstance(model, os.PathLike) else model
        if not isinstance(model, str) or not isinstance(label, str):
            raise InputError(f"labels: {_short(model)}: {_short(label)} is not a model (text "
                             "or a path) and its label (text)")
        given.append((0, f"{model}={label}"))
    return tuple(given)


def names(names: Any, what: str) -> tuple[str, ...]:
    """Names as the command line takes them (comma-separated too), each once."""
    if names is None:
        return ()
    given = [names] if isinstance(names, str) else names
    if not isinstance(given, (list, tuple)) or not all(isinstance(n, str) for n in given):
        raise InputError(f"{what} {_short(names)}: expected a name, a comma-separated list "
                         "or a list of names; None for every registered one")
    split = [n.strip() for spec in given for n in spec.split(",") if n.strip()]
    if not split:
        raise InputError(f"{what}: no name given; None runs every registered one")
    return tuple(dict.fromkeys(split))


def whole(value: Any, what: str, low: int, optional: bool = False) -> int | None:
    """``value`` as an int >= ``low`` (not a bool, not a whole float); None too if
    ``optional``."""
    if value is None and optional:
        return None
    try:
        number = None if isinstance(value, (bool, np.bool_)) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < low:
        raise InputError(f"{what} {_short(value)}: expected a whole number >= {low}"
                         + (", or None" if optional else ""))
    return number


def flag(value: Any, what: str) -> bool:
    """``value`` if it is a bool: a truthy string or number is refused, never guessed."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputError(f"{what} {_short(value)}: expected True or False")


def dtype(value: Any) -> str:
    """``--dtype``'s text of ``value``: ``auto``, a name in DTYPES or that torch dtype."""
    if value == "auto" or value in DTYPES:
        return value
    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in DTYPES:
        return str(value).removeprefix("torch.")
    raise InputError(f"dtype {_short(value)}: expected auto, {', '.join(DTYPES)}")


def _option_text(value: Any, where: str) -> str:
    """A Python option value as the command line writes it, read back to the same value by
    the plugin's options (:mod:`mmxai.options`)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, numbers.Real):
        return repr(value)
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"option {where}={_short(value)}: not plain JSON ({exc})") from exc
    raise InputError(f"option {where}={_short(value)}: expected a bool, number, text, path, "
                     f"list or dict, got {type(value).__name__}")


def option_specs(options: Mapping[str, Any]) -> tuple[str, ...]:
    """``{"deletion": {"steps": 16}}`` -> ``("deletion.steps=16",)``."""
    specs = []
    for plugin, values in options.items():
        if not isinstance(values, Mapping):
            raise InputError(f"{plugin}={_short(values)}: expected a dict of option -> value "
                             f"for the method, metric or dataset named {plugin!r} (e.g. "
                             "deletion={'steps': 16}); compare() has no setting of that name")
        for key, value in values.items():
            if not isinstance(key, str) or not key or "=" in key:
                raise InputError(f"{plugin}: option name {_short(key)} is not a name")
            specs.append(f"{plugin}.{key}={_option_text(value, f'{plugin}.{key}')}")
    return tuple(specs)
