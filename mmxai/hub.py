"""Where a model comes from: a local folder or a Hugging Face hub name, checked in one line
before transformers is asked to load it.

Left to itself, transformers answers a mistyped folder (``models/typo``) or a hub name it
cannot reach by retrying the hub five times (about 25 seconds and a dozen log lines) and then
blaming the network. :func:`resolve` decides first, without retries:

- a bundled model's name (:func:`bundled_models`: ``testbed``, the name the bundled
  benchmark's leaderboards give it) is its folder inside the installed package, from any
  directory; a folder of that name here that holds a model (a ``config.json``) wins, and
  either way, when such a folder is here, :attr:`Source.note` says which was taken;
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

:func:`quiet` silences Hugging Face's retry logging and progress bars (``Loading weights``)
while a model loads, unless :func:`verbose` (``MMXAI_VERBOSE=1``, set by ``mmxai --verbose``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mmxai.errors import UnsupportedModelError

#: A hub repository id: ``NAME`` or ``ORG/NAME`` (letters, digits, ``-``, ``_``, ``.``).
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
#: Seconds the one look-up on the hub may take.
PROBE_TIMEOUT = 10.0
#: The environment variable that lets Hugging Face's own output through (:func:`verbose`);
#: an environment variable so that ``mmxai compare``'s worker processes inherit it.
VERBOSE_ENV = "MMXAI_VERBOSE"
#: Where the bundled models live: one folder per model (``testbed``, and ``testbed16`` once
#: it is trained), each named as the bundled benchmark's leaderboards name it.
BUNDLED_WEIGHTS = Path(str(resources.files("mmxai.testbed") / "weights"))


@dataclass(frozen=True)
class Source:
    """What to hand ``from_pretrained``: a folder or a hub name; ``offline``: load from the
    Hugging Face cache without asking the hub (it cannot be reached); ``note``: one line
    for the user about how the name was read (a bundled model's name that is also a folder
    here), None when there is nothing to say."""

    spec: str
    offline: bool = False
    note: str | None = None


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
    bundled = bundled_models().get(spec)
    if bundled is not None:
        return _bundled(spec, bundled)
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


def bundled_models() -> dict[str, Path]:
    """Name -> folder of each model shipped in :data:`BUNDLED_WEIGHTS` (a folder holding a
    ``config.json``), e.g. ``{"testbed": .../mmxai/testbed/weights/testbed}``."""
    try:
        folders = sorted(BUNDLED_WEIGHTS.iterdir())
    except OSError:  # an install without the weights
        return {}
    return {folder.name: folder for folder in folders if (folder / "config.json").is_file()}


def _bundled(name: str, folder: Path) -> Source:
    """The bundled model ``name``, unless the current folder has a model folder of that name
    (which wins). When a file or folder of that name is here, the note says which was taken:
    in a checkout of mmxai, ``./testbed`` is the package's source, not a model."""
    here = Path(name)
    if (here / "config.json").is_file():
        check_config(name, here / "config.json")
        return Source(name, note=f"model {name!r}: the folder ./{name} here (it holds a "
                                 f"config.json), not the bundled model of that name; pass "
                                 f"{str(folder)!r} for the bundled one")
    if here.exists() or here.is_symlink():
        what = "folder" if here.is_dir() else "file"
        return Source(str(folder), note=f"model {name!r}: the bundled model ({folder}); the "
                                        f"{what} ./{name} here holds no model (no config.json)")
    return Source(str(folder))


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


def verbose() -> bool:
    """Whether Hugging Face's own output (download and ``Loading weights`` progress bars, the
    hub's retry lines) is shown while a model loads: ``MMXAI_VERBOSE`` is 1, true or yes."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes"}


@contextlib.contextmanager
def quiet(offline: bool = False) -> Iterator[None]:
    """While a model loads: unless :func:`verbose`, ``huggingface_hub`` logs errors only (no
    retry lines) and neither it nor transformers shows progress bars; with ``offline``, the
    hub's cache is read without asking the hub. Everything is put back afterwards."""
    from huggingface_hub import constants

    was_offline = getattr(constants, "HF_HUB_OFFLINE", False)
    if offline:
        constants.HF_HUB_OFFLINE = True
    try:
        if verbose():
            yield
        else:
            with _silenced():
                yield
    finally:
        if offline:
            constants.HF_HUB_OFFLINE = was_offline


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Hugging Face's progress bars off and the hub's logging at errors only, then both
    back as they were. transformers' switch also flips the hub's, so the hub's is put back
    after it; an ``HF_HUB_DISABLE_PROGRESS_BARS`` the user set keeps its priority (the hub
    then declines the switch with a warning, which is not for the user: dropped)."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    verbosity = hub_logging.get_verbosity()
    hub_off = are_progress_bars_disabled()
    transformers_on = hf_logging.is_progress_bar_enabled()
    hub_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hub_logging.set_verbosity(verbosity)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if transformers_on:
                hf_logging.enable_progress_bar()
            if hub_off:
                disable_progress_bars()
            elif not transformers_on:
                enable_progress_bars()
