"""Where a model comes from: a local folder or a Hugging Face hub name, checked in one line
before transformers is asked to load it.

Left to itself, transformers answers a mistyped folder (``models/typo``) or a hub name it
cannot reach by retrying the hub five times (about 25 seconds and a dozen log lines) and then
blaming the network. :func:`resolve` decides first, without retries:

- a path that exists: a folder is loaded (its ``config.json`` must name its architectures
  as a list); a file is refused;
- a path that does not exist and cannot be a hub name (it starts with ``/``, ``.`` or
  ``~``, holds more than one ``/`` or a backslash, or has characters a hub name cannot
  have): ``no such folder``;
- a possible hub name (``NAME`` or ``ORG/NAME``) that is no folder here: in offline mode
  (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``) it must be in the Hugging Face cache; else one
  request, without retries, asks the hub for its ``config.json``: a model the hub does not
  have, a gated one, or a hub that cannot be reached is one line. A hub that cannot be
  reached still loads a model already in the cache (offline, at once).

:func:`quiet` silences ``huggingface_hub``'s retry and progress logging while a model loads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmxai.errors import UnsupportedModelError

#: A hub repository id: ``NAME`` or ``ORG/NAME`` (letters, digits, ``-``, ``_``, ``.``).
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
#: Seconds the one look-up on the hub may take.
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Source:
    """What to hand ``from_pretrained``: a folder or a hub name; ``offline``: load from the
    Hugging Face cache without asking the hub (it cannot be reached)."""

    spec: str
    offline: bool = False


def _refuse(spec: str, cause: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"cannot load model {spec!r}: {cause}")


def looks_local(spec: str) -> bool:
    """True when ``spec`` can only be a path, never a hub name."""
    return (spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1
            or (os.altsep is not None and os.altsep in spec)
            or REPO_ID.fullmatch(spec) is None)


def resolve(spec: Any) -> Source:
    """``spec`` checked as a folder or hub name (see the module docstring), or one line."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise UnsupportedModelError(f"model: expected a hub name or a folder (text or a path), "
                                    f"got {type(spec).__name__}")
    if not spec.strip():
        raise _refuse(spec, "an empty name; expected a hub name or a folder")
    path = Path(spec).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long, a permission denied on the way
        raise _refuse(spec, exc.strerror or str(exc)) from exc
    if exists:
        if not path.is_dir():
            raise _refuse(spec, "a file, not a folder (expected a folder saved with "
                                "save_pretrained, or a hub name)")
        check_config(spec, path / "config.json")
        return Source(str(path) if spec.startswith("~") else spec)
    if looks_local(spec):
        raise _refuse(spec, "no such folder")
    return _hub(spec)


def check_config(spec: str, config: Path) -> None:
    """A config whose ``architectures`` is not a list of class names is refused in one line
    (transformers keeps a string as it is, and ``architectures[0]`` would be its first
    letter). Anything else wrong with the file is left to transformers to say."""
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(data, dict) or "architectures" not in data:
        return
    architectures = data["architectures"]
    if architectures is None:
        return
    if not (isinstance(architectures, list)
            and all(isinstance(a, str) and a for a in architectures)):
        shown = " ".join(repr(architectures).split())[:80]
        raise _refuse(spec, f"config.json: \"architectures\" must be a list of class names "
                            f"(e.g. [\"LlavaForConditionalGeneration\"]), got "
                            f"{type(architectures).__name__} {shown}")


def _cached_config(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed cache entry: as if not cached
        return None
    return found if isinstance(found, str) else None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def probe(repo_id: str) -> None:
    """One request, no retries, for the hub's ``config.json`` of ``repo_id``; raises what
    ``huggingface_hub`` raises."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=PROBE_TIMEOUT)


def _hub(spec: str) -> Source:
    cached = _cached_config(spec)
    if cached is not None:
        check_config(spec, Path(cached))
    if _offline():
        if cached is None:
            raise _refuse(spec, "no such folder here, and it is not in the Hugging Face cache "
                                "(HF_HUB_OFFLINE is set, so hub names are not downloaded)")
        return Source(spec, offline=True)
    from huggingface_hub import errors

    try:
        probe(spec)
    except errors.GatedRepoError as exc:
        raise _refuse(spec, "a gated model on the Hugging Face hub: accept its conditions on "
                            "its page and log in (hf auth login)") from exc
    except errors.RepositoryNotFoundError as exc:
        raise _refuse(spec, "no such folder here, and no such model on the Hugging Face hub "
                            "(a private one needs hf auth login)") from exc
    except errors.EntryNotFoundError:
        return Source(spec)  # the model is there; transformers names what it lacks
    except errors.HfHubHTTPError as exc:
        if cached is not None:
            return Source(spec, offline=True)
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise _refuse(spec, f"no such folder here, and the Hugging Face hub answered HTTP "
                            f"{status} when asked for it") from exc
    except Exception as exc:  # no network, DNS, a proxy, a timeout: the hub is unreachable
        if cached is not None:
            return Source(spec, offline=True)
        cause = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise _refuse(spec, f"no such folder here, and the Hugging Face hub cannot be reached "
                            f"to download it as a hub name ({cause}); check the name or the "
                            f"network, or set HF_HUB_OFFLINE=1 to use the cache only") from exc
    return Source(spec)


@contextlib.contextmanager
def quiet(offline: bool = False) -> Iterator[None]:
    """While a model loads: ``huggingface_hub`` logs errors only (no retry lines) and shows
    no progress bars; with ``offline``, it reads the cache without asking the hub."""
    from huggingface_hub import constants
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from huggingface_hub.utils import logging as hub_logging

    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    bars_off = are_progress_bars_disabled()
    disable_progress_bars()
    was_offline = getattr(constants, "HF_HUB_OFFLINE", False)
    if offline:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_logging.set_verbosity(verbosity)
        if not bars_off:
            enable_progress_bars()
        if offline:
            constants.HF_HUB_OFFLINE = was_offline
