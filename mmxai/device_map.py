"""Models larger than one device: Hugging Face accelerate's big-model dispatch.

``--device-map auto|balanced|sequential`` (``device_map=`` in Python) splits a model's
blocks over the GPUs of one machine, and over CPU memory and disk when they do not suffice,
within ``--max-memory`` per device (``0=20GiB,1=20GiB,cpu=60GiB``). Checkpoints load split
(``from_pretrained(device_map=..., max_memory=...)``); a model already built, a tiny one or
one made from a config, is split in place by :func:`dispatch`.

accelerate's hooks move each block's inputs to the block's device, and the weights of an
offloaded block onto it for its forward only; a block's outputs stay where they were made.
So what mmxai reads of the model goes through three helpers: :func:`input_device` (where
inputs go: the input embeddings' device, not the first parameter's), :func:`resident` (a
weight methods read directly, the unembedding, loaded even when offloaded), and methods
move what they combine onto one device (the trace keeps each captured layer where it was).
Running many replicas of a model is the other way to scale: docs/scaling.md.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmxai.errors import InputError

if TYPE_CHECKING:
    from mmxai.model import Model

#: What ``--device-map`` accepts: accelerate's balanced split (``auto`` is transformers'
#: name for it) or its fill-the-first-device-first one.
DEVICE_MAPS = ("auto", "balanced", "sequential")
INSTALL = "pip install 'mmxai[device-map]'"
#: ``--max-memory`` sizes: a number and a unit, decimal (GB) or binary (GiB), any case.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def require_accelerate(option: str = "--device-map") -> None:
    """One line naming the extra to install when accelerate is missing."""
    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise InputError(f"{option} needs Hugging Face accelerate, which is not installed: "
                         f"{INSTALL}") from exc


def check_device_map(value: Any, option: str = "--device-map") -> str | dict[str, Any]:
    """``value`` as a device map: one of :data:`DEVICE_MAPS`, or (Python only) a dict of
    module name -> device (``0``, ``"cuda:1"``, ``"cpu"``, ``"disk"``) as accelerate takes it."""
    if isinstance(value, str) and value in DEVICE_MAPS:
        return value
    if isinstance(value, Mapping) and value and all(isinstance(k, str) for k in value):
        return {name: _device(device, f"{option}[{name!r}]")
                for name, device in value.items()}
    raise InputError(f"{option} {_short(value)}: expected {', '.join(DEVICE_MAPS)}"
                     + (" or a dict of module name -> device" if option == "device_map" else ""))


def _device(value: Any, where: str) -> int | str:
    """One device of a map or a budget: ``cpu``, ``disk``, ``mps``, or a CUDA index (``0``,
    ``"0"``, ``"cuda:0"``, a ``torch.device``) this machine has; anything else is one line."""
    if isinstance(value, torch.device):
        value = str(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        index = value
    elif isinstance(value, str) and value in ("cpu", "disk", "mps"):
        return value
    elif isinstance(value, str) and value.removeprefix("cuda:").isdecimal():  # not "²"
        index = int(value.removeprefix("cuda:"))
    else:
        raise InputError(f"{where}: {_short(value)} is not a device; expected a CUDA index "
                         "(0, 1, ...), cpu, disk or mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise InputError(f"{where}: no CUDA device {index} here (this machine has {count})")
    return index


def parse_max_memory(text: str, option: str = "--max-memory") -> dict[int | str, int]:
    """``0=20GiB,1=20GiB,cpu=60GiB`` -> ``{0: 21474836480, 1: ..., "cpu": ...}`` (bytes).

    Keys: a CUDA index (``0``, ``cuda:0``), ``cpu``, ``disk`` or ``mps``; each once. Sizes:
    a number with B, KB, MB, GB, TB or KiB ... TiB (any case), or bytes. A CUDA index this
    machine lacks, a zero size, or anything else is one line naming the entry."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{option}: expected DEVICE=SIZE entries, e.g. 0=20GiB,cpu=60GiB")

    def entries() -> Iterator[tuple[str, str, str]]:
        for entry in text.split(","):
            key, sep, size = entry.partition("=")
            where = f"{option} entry {entry.strip()!r}"
            if not sep:
                raise InputError(f"{where}: expected DEVICE=SIZE, e.g. 0=20GiB or cpu=60GiB")
            yield key.strip(), size, where

    return _budgets(entries())


def check_max_memory(value: Any, option: str = "max_memory") -> dict[int | str, int] | None:
    """The Python API's ``max_memory``: None, ``--max-memory``'s text, or a dict of device ->
    size (bytes or text such as ``"20GiB"``), checked as :func:`parse_max_memory` checks."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_max_memory(value, option)
    if not isinstance(value, Mapping) or not value:
        raise InputError(f"{option} {_short(value)}: expected a dict of device -> size, e.g. "
                         "{0: '20GiB', 'cpu': '60GiB'}, or that as text: 0=20GiB,cpu=60GiB")
    return _budgets((str(key), size, f"{option}[{key!r}]") for key, size in value.items())


def _budgets(entries: Iterable[tuple[str, Any, str]]) -> dict[int | str, int]:
    """(device, size, where to say it is wrong) entries -> bytes per device, each once."""
    budgets: dict[int | str, int] = {}
    for key, size, where in entries:
        device = _device(key, where)
        if device in budgets:
            raise InputError(f"{where}: {device} is given twice")
        budgets[device] = _bytes(size, where)
    return budgets


def _short(value: Any) -> str:
    return " ".join(repr(value).split())[:60]


def _bytes(size: Any, where: str) -> int:
    if isinstance(size, int) and not isinstance(size, bool):
        number = size
    else:
        match = _SIZE.match(size) if isinstance(size, str) else None
        if match is None:
            raise InputError(f"{where}: {_short(size)} is not a size; expected e.g. 20GiB, "
                             "500MB or a number of bytes")
        number = int(float(match[1]) * _UNITS[(match[2] or "b").lower()])
    if number <= 0:
        raise InputError(f"{where}: the size must be more than 0 bytes")
    return number


#: How the command line and the Python API name the map, its budget and ``device``.
_NAMES = {True: ("--device-map", "--max-memory", "--device"),
          False: ("device_map", "max_memory", "device")}


def placement(device_map: Any, max_memory: Any, device: Any = None, *,
              cli: bool = True) -> dict[str, Any]:
    """``device_map`` and ``max_memory`` as ``from_pretrained`` (and :func:`dispatch`) take
    them, checked before any model loads; nothing without a map. Refused in one line, besides
    a bad map or budget: a budget without a map (nothing would read it), a ``device`` beside a
    map (the map places the model: the budget names the devices it may use; the command
    line's ``--device auto`` counts as not given). ``cli``: the settings are named as the
    command line names them (``--max-memory``'s text), else as the Python API does."""
    map_name, memory_name, device_name = _NAMES[cli]
    if device_map is None:
        if max_memory is not None:
            raise InputError(f"{memory_name} budgets the devices of {map_name}, which is not "
                             "given" + ("; add --device-map auto" if cli else ""))
        return {}
    device_map = check_device_map(device_map, map_name)
    require_accelerate(map_name)
    if device is not None and not (cli and device == "auto"):
        raise InputError(f"{device_name} {device if cli else repr(device)} and {map_name} "
                         "exclude each other: the device map places the model; "
                         f"{memory_name} chooses the devices it may use")
    return {"device_map": device_map, "max_memory": check_max_memory(max_memory, memory_name)}


def check_workers(device_map: Any, workers: int | None) -> None:
    """Several ``--workers`` with a device map: each would load the model over the same
    devices; refused in one line."""
    if device_map is not None and workers is not None and workers > 1:
        raise InputError(f"--workers {workers} and --device-map exclude each other: every "
                         "worker would load the model over the same devices; run one process "
                         "per model replica (docs/scaling.md)")


def load_weights(model_cls: Any, spec: str, device: str | torch.device = "cpu",
                 device_map: str | dict | None = None, max_memory: dict | None = None,
                 **kwargs: Any) -> torch.nn.Module:
    """``model_cls.from_pretrained(spec)`` in eval mode, as mmxai loads every checkpoint
    (safetensors only, eager attention): on ``device``, or split by ``device_map`` within
    ``max_memory``, weights that fit neither GPUs nor CPU memory offloaded to a temporary
    folder that lives as long as the model. ``kwargs``: ``dtype``, ``revision``..."""
    split: dict[str, Any] = {}
    folder = None
    if device_map is not None:
        split = placement(device_map, max_memory, cli=False)
        folder = tempfile.TemporaryDirectory(prefix="mmxai-offload-")
        split["offload_folder"] = folder.name
    hf_model = model_cls.from_pretrained(spec, use_safetensors=True,
                                         attn_implementation="eager", **split, **kwargs)
    if folder is None:
        hf_model.to(device)
    else:
        hf_model._mmxai_offload = folder
    return hf_model.eval()


def dispatch(model: Model, device_map: str | dict, max_memory: dict | None = None,
             offload_folder: str | None = None) -> Model:
    """Split the already-built ``model`` in place over devices (accelerate's
    ``infer_auto_device_map`` for ``auto``/``balanced``/``sequential``, then
    ``dispatch_model``); returns it. ``device_map``: a name or a dict of module name ->
    device (``"disk"`` offloads to ``offload_folder``, by default a temporary folder that
    lives as long as the model). ``max_memory``: bytes or sizes per device
    (:func:`check_max_memory`)."""
    split = placement(device_map, max_memory, cli=False)  # and accelerate is installed
    if not split:  # no map: refused in check_device_map's one line
        check_device_map(device_map, "device_map")
    device_map, max_memory = split["device_map"], split["max_memory"]
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    hf = model.hf
    if isinstance(device_map, str):
        no_split = list(getattr(hf, "_no_split_modules", None) or [])
        if device_map != "sequential":
            max_memory = get_balanced_memory(hf, max_memory=max_memory,
                                             no_split_module_classes=no_split)
        device_map = infer_auto_device_map(hf, max_memory=max_memory,
                                           no_split_module_classes=no_split)
    if list(device_map) == [""]:  # the whole model on one device: accelerate offloads
        # nothing it cannot name by a module, so name the top-level ones
        device_map = {name: device_map[""] for name, _ in hf.named_children()}
    if offload_folder is not None and (Path(offload_folder) / "index.json").exists():
        # accelerate would read the weights offloaded there before, not this model's
        raise InputError(f"offload_folder {str(offload_folder)!r} holds offloaded weights "
                         "already; give an empty folder")
    if {"cpu", "disk"} & set(device_map.values()) and any(
            t.device.type not in ("cpu", "meta") for t in [*hf.parameters(), *hf.buffers()]):
        # accelerate offloads what the state_dict holds now: weights left on a GPU stay there
        hf.to("cpu")
    if "disk" in device_map.values() and offload_folder is None:
        hf._mmxai_offload = tempfile.TemporaryDirectory(prefix="mmxai-offload-")
        offload_folder = hf._mmxai_offload.name
    try:
        with _quiet_accelerate():  # its "parameters on the meta device" note: as asked
            dispatch_model(hf, device_map, offload_dir=offload_folder)
    except ValueError as exc:  # a map that leaves modules out, a folder it cannot use
        raise InputError(f"device_map: {' '.join(str(exc).split())[:300]}") from exc
    return model


@contextmanager
def _quiet_accelerate() -> Iterator[None]:
    logger = logging.getLogger("accelerate.big_modeling")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def input_device(hf: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its input embeddings' device. A split model's first
    parameter may sit on any device, or on ``meta`` when offloaded; an offloaded embedding
    computes on the map's main device (the top-level hook's)."""
    if not hasattr(hf, "hf_device_map"):
        return next(hf.parameters()).device
    embeddings = hf.get_input_embeddings()
    if embeddings.weight.device.type != "meta":
        return embeddings.weight.device
    hook = getattr(embeddings, "_hf_hook", None) or getattr(hf, "_hf_hook", None)
    return torch.device(hook.execution_device if hook is not None else "cpu")


def resident(module: torch.nn.Module, name: str = "weight") -> torch.Tensor:
    """``module.<name>`` as a real tensor: an offloaded weight (on ``meta`` between forward
    passes) is loaded onto the module's execution device, as its hook does for a forward."""
    tensor = getattr(module, name)
    if tensor.device.type != "meta":
        return tensor
    from accelerate.utils import align_module_device

    with align_module_device(module):
        return getattr(module, name)


def state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with offloaded tensors loaded (onto the CPU, one block at a
    time): every weight readable, as when it was not split."""
    if all(p.device.type != "meta" for p in module.parameters()):
        return module.state_dict()
    from accelerate.utils.modeling import get_state_dict_offloaded_model

    return get_state_dict_offloaded_model(module)
