"""Provenance: what produced a stored result, so a table can be traced back and reproduced.

A record holds the mmxai, torch and transformers versions, the model id with its revision or
a hash of its weights, the dataset's name and fingerprint, the method's options, the
generation settings, the seed and the device. ``identity`` fields (weights, dataset
fingerprint) must match between a stored run and its resumption; the rest is informative.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

import mmxai
from mmxai.dataset import Dataset
from mmxai.model import Model

#: Fields that must not change when a run is resumed into the same store.
IDENTITY = ("model_id", "weights", "dataset", "dataset_fingerprint", "method", "method_options",
            "max_new_tokens", "min_new_tokens")


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
    for name, tensor in sorted(module.state_dict().items()):
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


def record(*, model: Model, model_label: str, weights: str, dataset: Dataset,
           fingerprint: str | None, method: str, method_options: dict[str, Any],
           metrics: dict[str, dict[str, Any]], max_new_tokens: int, min_new_tokens: int, seed: int,
           device: str, shard: str) -> dict[str, Any]:
    import transformers

    return {
        "mmxai": mmxai.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "model": model_label,
        "model_id": model.model_id,
        "architecture": type(model.hf).__name__,
        "dtype": str(model.hf.dtype).removeprefix("torch."),
        "weights": weights,
        "dataset": dataset.name,
        "dataset_root": str(dataset.root) if dataset.root is not None else None,
        "dataset_fingerprint": fingerprint,
        "method": method,
        "method_options": method_options,
        "metrics": metrics,
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens,
        "seed": seed,
        "device": device,
        "shard": shard,
    }


def mismatch(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The identity fields in which a resumed run differs from what the store holds."""
    return [f for f in IDENTITY
            if json.dumps(stored.get(f), sort_keys=True, default=str)
            != json.dumps(current.get(f), sort_keys=True, default=str)]
