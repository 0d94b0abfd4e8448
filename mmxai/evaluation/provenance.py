"""Provenance: what produced a stored result, so a table can be traced back and reproduced.

A record holds the mmxai, torch and transformers versions, the model id with its revision or
a hash of its weights, what turns a sample into the model's inputs (the model's config, the
processor's settings, the tokenizer, the chat template, the generation config), the
dataset's name, options and fingerprint, the method's name, version and options, the
generation settings, the seed and the device.

What can change the model's inputs or answers, or a method's maps, is part of a run's
identity, in one of two ways (docs/evaluator.md, "What a stored result is keyed by"):

- what the command line chooses (method, its version and options, dataset options such as
  the prompt, ``--max-new-tokens``/``--min-new-tokens``, word options, ``--seed``, the
  dtype) goes into the run's ``options_hash`` (:func:`run_settings`): another choice is
  another run, stored side by side and told apart in the leaderboard;
- what lies under the same names (the model folder's weights, config, processor settings,
  tokenizer, chat template (``--chat-template`` included) and generation config; the
  dataset's files) is checked
  (:data:`IDENTITY`) when a run resumes into a store: a change is refused with a line naming
  what changed, never mixed with the stored rows.

The rest of a record is informative: versions, device, shard, ``run`` (the whole
:class:`~mmxai.evaluation.spec.RunSpec`, batch size and statistics included), the
``protocol``, the ``command`` line, the ``git`` commit of the mmxai checkout that ran (when
it runs from one), the ``samples`` the run selected (count and a hash of their ids), the
hashes of the processor's settings and of the chat template, and ``plugins``: the
distribution, version and citation of the plugin behind the method, each metric and the
dataset, so a table re-rendered where a plugin is not installed still cites its papers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import torch

import mmxai
from mmxai import device_map
from mmxai.dataset import Dataset
from mmxai.errors import UnknownNameError
from mmxai.evaluation.spec import RunSpec
from mmxai.model import Model
from mmxai.registry import manager

#: Fields that must not change when a run is resumed into the same store (the key's own
#: settings are listed too: they cannot differ under one key, but a record says so).
IDENTITY = ("weights", "model_config", "adapter", "processor", "tokenizer", "chat_template",
            "generation_config", "dataset", "dataset_fingerprint", "dataset_options",
            "method", "method_version", "method_options", "max_new_tokens", "min_new_tokens",
            "words", "seed", "dtype")

#: Keys of the model's, processor's and generation configs that say nothing about what the
#: model sees or writes (versions, local paths, private flags, the dtype: that one is keyed).
_NOISE = {"transformers_version", "dtype", "torch_dtype", "name_or_path", "_name_or_path",
          "output_attentions", "output_hidden_states", "return_dict_in_generate"}


def options_hash(settings: dict[str, Any]) -> str:
    """A short stable hash of JSON-able settings (method options, generation settings)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def hash_files(paths: list[Path], chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def hash_state(module: torch.nn.Module) -> str:
    """Hash of a model's parameters and buffers (for models built in memory, e.g. tiny)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(device_map.state_dict(module).items()):  # offloaded too
        digest.update(name.encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # any dtype
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def weights_id(model: Model) -> str:
    """The model's revision (hub), a hash of its safetensors files (local folder), or of its
    in-memory state (a model built without files)."""
    folder = Path(model.model_id)
    if folder.is_dir():
        files = list(folder.glob("*.safetensors"))
        if files:
            return "sha256:" + hash_files(files)
    revision = model.revision or getattr(model.hf.config, "_commit_hash", None)
    if revision:
        return f"revision:{revision}"
    return "state-sha256:" + hash_state(model.hf)


def dataset_fingerprint(dataset: Dataset) -> str | None:
    try:
        return dataset.fingerprint()
    except NotImplementedError:
        return None


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON (tuples as lists, enums and other objects as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _clean(value: Any) -> Any:
    """A config dict without :data:`_NOISE` and private keys, at every depth."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()
                if not str(k).startswith("_") and str(k) not in _NOISE}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _to_dict(obj: Any) -> dict[str, Any]:
    for name in ("to_diff_dict", "to_dict"):
        method = getattr(obj, name, None)
        if callable(method):
            try:
                return jsonable(method())
            except Exception:  # a remote-code object whose dict does not serialise
                continue
    return {"class": type(obj).__name__}


def _adapter_settings(model: Model) -> dict[str, Any]:
    """The adapter's class and its own plain settings (e.g. a pixel budget)."""
    settings = {k: v for k, v in vars(model).items()
                if not k.startswith("_") and k not in ("hf", "processor", "model_id", "revision")
                and isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))}
    return {"class": type(model).__name__, **jsonable(settings)}


def _tokenizer_id(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary, merges, normaliser and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        text = backend.to_str() if backend is not None else json.dumps(
            sorted(tokenizer.get_vocab().items()))
    except Exception:
        text = type(tokenizer).__name__
    extra = {name: getattr(tokenizer, name, None)
             for name in ("padding_side", "truncation_side", "special_tokens_map",
                          "add_bos_token", "add_eos_token")}
    return "sha256:" + _sha(text + json.dumps(jsonable(extra), sort_keys=True))


def _chat_template_id(model: Model) -> str | None:
    """A hash of the chat templates the processor and tokenizer hold once loaded: the
    checkpoint's, the one ``--chat-template`` (``chat_template=``) gave, or the family's
    default (:func:`mmxai.loading.finish`). It is in :data:`IDENTITY`: a run resumed with
    another template is refused, never mixed with the stored rows."""
    templates = {"processor": getattr(model.processor, "chat_template", None),
                 "tokenizer": getattr(model.tokenizer, "chat_template", None)}
    if all(t is None for t in templates.values()):
        return None
    return "sha256:" + _sha(json.dumps(jsonable(templates), sort_keys=True))


def model_identity(model: Model) -> dict[str, Any]:
    """What turns a sample into this model's inputs and answers, besides the weights:
    the model's config, the adapter's settings, the processor's settings (image size,
    pixel budgets, normalisation, image tokens...), the tokenizer, the chat template and
    the generation config (e.g. ``min_new_tokens``, ``eos_token_id``)."""
    processor = model.processor
    tokenizer = model.tokenizer
    processor_settings = (_clean(_to_dict(processor)) if processor is not tokenizer
                          else {"class": type(processor).__name__})
    if isinstance(processor_settings, dict):
        processor_settings.pop("chat_template", None)  # hashed on its own
    return {
        "model_config": _clean(_to_dict(model.hf.config)),
        "adapter": _adapter_settings(model),
        "processor": processor_settings,
        "tokenizer": _tokenizer_id(tokenizer),
        "chat_template": _chat_template_id(model),
        "generation_config": _clean(_to_dict(getattr(model.hf, "generation_config", None))),
    }


def dataset_options(dataset: Dataset) -> dict[str, Any]:
    """The options the dataset was built with (e.g. its prompt), unset ones left out."""
    options = getattr(dataset, "options", None)
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        options = dataclasses.asdict(options)
    if not isinstance(options, dict):
        options = {}
    return jsonable({k: v for k, v in options.items() if v is not None})


def run_settings(method: Any, dataset: Dataset, spec: RunSpec, dtype: str) -> dict[str, Any]:
    """What a run's ``options_hash`` covers: the command line's choices for ``method``, with
    ``dtype`` the model's (the checkpoint's under ``--dtype auto``)."""
    return {
        "method": method.name,
        "version": str(getattr(method, "version", "1")),
        "options": jsonable(method.describe_options()),
        "dataset_options": dataset_options(dataset),
        "max_new_tokens": spec.generation.max_new_tokens,
        "min_new_tokens": spec.generation.min_new_tokens,
        "words": _words(spec),
        "seed": spec.seed,
        "dtype": dtype,
    }


def _words(spec: RunSpec) -> dict[str, Any] | None:
    """The word options as hashed: a field added later is left out at its default, so the
    keys stored before it existed still match (``tagger`` came with the tam-reference
    protocol)."""
    if spec.words is None:
        return None
    words = jsonable(dataclasses.asdict(spec.words))
    if words.get("tagger") == "lists":
        del words["tagger"]
    return words


def prompt_hash(prompt: str) -> str:
    """What the store keeps of a sample's prompt, to notice a prompt changed under a key."""
    return _sha(prompt)[:16]


class DescribedMetric(Protocol):
    """What a record needs of a metric column (an evaluator's ``NamedMetric``)."""

    label: str
    metric: Any

    def describe(self) -> dict[str, Any]: ...


def plugin(kind: str, name: str, obj: Any) -> dict[str, Any]:
    """The distribution and version providing ``name`` among ``kind`` (None for one not
    registered, made in process) and the BibTeX of ``obj``'s ``citation``."""
    try:
        info = manager().provider(kind, name)
        distribution, version = info.distribution, info.version
    except UnknownNameError:
        distribution = version = None
    return {"name": name, "distribution": distribution, "version": version,
            "citation": str(getattr(obj, "citation", "") or "")}


@lru_cache(maxsize=1)
def git_commit() -> dict[str, Any] | None:
    """The commit of the git checkout mmxai runs from (and whether tracked files differ
    from it), or None when it is installed from a package or git cannot tell."""
    root = Path(mmxai.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"], check=True, capture_output=True,
                                text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def samples_record(sample_ids: Sequence[str]) -> dict[str, Any]:
    """How many samples and which: a hash of their sorted ids (:func:`ids_hash`)."""
    return {"count": len(sample_ids), "sha256": ids_hash(sample_ids)}


def ids_hash(sample_ids: Sequence[str]) -> str:
    """SHA-256 of the sorted sample ids, one a line."""
    return _sha("".join(f"{i}\n" for i in sorted(sample_ids)))


def run_record(model: Model, label: str, dataset: Dataset, spec: RunSpec,
               metrics: Sequence[DescribedMetric], shard: str,
               sample_ids: Sequence[str]) -> dict[str, Any]:
    """What the records of one model's run share, whatever the method: versions, the model
    (its weights are hashed: seconds per GB, so once per run), the dataset, the metrics, the
    samples selected, the device, the shard, the command line, the checkout's commit, the
    protocol, the plugins behind the dataset and metrics, and the whole run specification
    (``run``)."""
    import transformers

    device = str(model.device)
    if model.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(model.device)})"
    identity = model_identity(model)
    return {
        "mmxai": mmxai.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "command": shlex.join(sys.argv),
        "git": git_commit(),
        "model": label,
        "model_id": model.model_id,
        "architecture": type(model.hf).__name__,
        "weights": weights_id(model),
        **identity,
        "processor_sha256": _sha(json.dumps(identity["processor"], sort_keys=True)),
        "dataset": dataset.name,
        "dataset_root": str(dataset.root) if dataset.root is not None else None,
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "samples": samples_record(sample_ids),
        "metrics": {m.label: m.describe() for m in metrics},
        "protocol": spec.protocol,
        "plugins": {"dataset": plugin("datasets", dataset.name, dataset),
                    "metrics": {m.label: plugin("metrics", m.metric.name, m.metric)
                                for m in metrics}},
        "device": device,
        "shard": shard,
        "run": spec.to_dict(),
    }


def record(run: dict[str, Any], settings: dict[str, Any], method: Any) -> dict[str, Any]:
    """One method's record: its run's (:func:`run_record`) with the settings its key hashes
    (:func:`run_settings`) and the plugin behind ``method``."""
    return {
        **run,
        "plugins": {**run["plugins"], "method": plugin("methods", method.name, method)},
        "dtype": settings["dtype"],
        "dataset_options": settings["dataset_options"],
        "method": settings["method"],
        "method_version": settings["version"],
        "method_options": settings["options"],
        "words": settings["words"],
        "max_new_tokens": settings["max_new_tokens"],
        "min_new_tokens": settings["min_new_tokens"],
        "seed": settings["seed"],
    }


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves in which two JSON values differ."""
    if isinstance(stored, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(stored) | set(current), key=str):
            found += _differences(stored.get(key), current.get(key), f"{prefix}{key}.")
        return found
    if json.dumps(stored, sort_keys=True, default=str) != json.dumps(current, sort_keys=True,
                                                                      default=str):
        return [prefix.rstrip(".")]
    return []


def mismatch(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The identity fields in which a resumed run differs from what the store holds, each
    with the settings that changed inside it: ``processor (image_processor.image_mean)``."""
    changed = []
    for field in IDENTITY:
        paths = [p for p in _differences(stored.get(field), current.get(field)) if p]
        if paths:
            more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            changed.append(f"{field} ({', '.join(paths[:3])}{more})")
        elif _differences(stored.get(field), current.get(field)):
            changed.append(field)
    # A metric whose code changed (its version) must not extend the rows of the old one. A
    # record is stored once per run key, so metrics added by a later run are not in it.
    stored_metrics, metrics = stored.get("metrics") or {}, current.get("metrics") or {}
    for label in sorted(set(stored_metrics) & set(metrics)):
        before = stored_metrics[label].get("version", "1")
        after = metrics[label].get("version", "1")
        if before != after:
            changed.append(f"metric {label} version ({before} -> {after})")
    return changed
