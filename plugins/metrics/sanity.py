"""Sanity check: model parameter randomisation (Adebayo et al. 2018).

A map that explains the model must change when the model does. The metric re-initialises the
weights of the top decoder layers (a share ``top`` of them, at least one), teacher-forces
the same answer through that randomised model, explains it again with the same method, and
reports the Spearman rank correlation between each token's map before and after. Lower is
better: a method whose maps survive the randomisation (an edge detector, a fixed prior, a
seeded random map) scores near 1 and fails the check.

- The randomised model is a copy that shares every untouched parameter with the original
  (only the randomised layers are new tensors), built once per model and seeded.
- Every matrix (dim >= 2) of a randomised layer is redrawn from a normal distribution with
  that matrix's own mean and standard deviation; norm weights and biases are kept.
- A constant map has no ranking: a pair of constant maps scores 1 (nothing changed), one
  constant map against a varying one scores 0.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from mmxai.citations import cite
from mmxai.errors import MMXAIError
from mmxai.hookspecs import hookimpl
from mmxai.metric import EvalItem, Metric, Parts
from mmxai.model import Model
from mmxai.trace import forced_trace


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties)."""
    # imported here: scipy.stats costs ~0.7 s, paid at registration by every command
    from scipy.stats import rankdata

    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps of different sizes: {a.size} and {b.size}")
    flat_a, flat_b = np.ptp(a) == 0, np.ptp(b) == 0
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def randomised_copy(model: Model, top: float, seed: int) -> Model:
    """The model with its top ``ceil(top * n_layers)`` decoder layers re-initialised."""
    layers = list(model.decoder_layers())
    count = min(len(layers), max(1, math.ceil(top * len(layers))))
    if any(p.device.type == "meta" for layer in layers[len(layers) - count:]
           for p in layer.parameters()):  # accelerate would load the original weights back
        raise MMXAIError(f"{model.model_id}: the top {count} decoder layers are offloaded "
                         "(--device-map put them on cpu or disk), so they cannot be "
                         "randomised; give the GPUs room for them (--max-memory)")
    chosen = {id(p) for layer in layers[len(layers) - count:] for p in layer.parameters()}
    # Share everything but the chosen layers' parameters: the copy costs one layer's memory.
    memo = {id(t): t for t in [*model.hf.parameters(), *model.hf.buffers(),
                               *offloaded_tensors(model.hf)] if id(t) not in chosen}
    randomised = copy.copy(model)  # the adapter's own settings (pixel budgets...) carry over
    randomised.hf = copy.deepcopy(model.hf, memo)
    randomised.model_id = f"{model.model_id} (top {count} layers randomised)"
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in list(randomised.decoder_layers())[len(layers) - count:]:
            for param in layer.parameters():
                if param.dim() < 2:
                    continue
                mean, std = param.float().mean().item(), param.float().std().item()
                noise = torch.randn(param.shape, generator=generator) * std + mean
                param.copy_(noise.to(param.dtype))
    return randomised


def offloaded_tensors(hf: torch.nn.Module) -> list[torch.Tensor]:
    """The CPU copies accelerate's hooks keep of offloaded weights (their ``weights_map``),
    which the model's own parameters (on ``meta``) do not reach; disk weights are files."""
    found = []
    for module in hf.modules():
        hook = getattr(module, "_hf_hook", None)
        for align in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
            weights = getattr(align, "weights_map", None)
            # a PrefixedDataset over accelerate's OffloadedWeightsLoader, or a plain dict
            dataset = getattr(weights, "dataset", weights)
            store = getattr(dataset, "state_dict", dataset)
            if isinstance(store, dict):
                found += [t for t in store.values() if torch.is_tensor(t)]
    return found


@dataclass
class RandomisationOptions:
    top: float = 0.5  # share of decoder layers randomised, counted from the top
    seed: int = 0
    max_tokens: int = 0  # 0: every generated token; else the first nouns' tokens (as deletion)

    def __post_init__(self) -> None:
        if not 0 < self.top <= 1:
            raise ValueError(f"top must be in (0, 1], got {self.top}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be at least 0 (0: every token), got "
                             f"{self.max_tokens}")


class Randomisation(Metric):
    name = "randomisation"
    summary = "rank correlation of the maps before and after randomising the top layers"
    higher_is_better = False
    category = "sanity"
    citation = cite("adebayo2018sanity")
    Options: ClassVar[type] = RandomisationOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._cached: tuple[torch.nn.Module, Model] | None = None  # (original hf, copy)

    def randomised(self, model: Model) -> Model:
        """The randomised copy of ``model``, built on first use and kept for the run."""
        if self._cached is None or self._cached[0] is not model.hf:
            self._cached = (model.hf,
                            randomised_copy(model, self.options.top, self.options.seed))
        return self._cached[1]

    def measure(self, item: EvalItem) -> Parts:
        trace = item.trace
        random_model = self.randomised(item.model)
        # Methods with the same needs share the randomised pass (kept with the sample's trace).
        key = ("randomised trace", self.options.top, self.options.seed, item.method.needs)
        if key not in trace.cache:
            trace.cache[key] = forced_trace(random_model, trace.inputs, trace.generated_ids,
                                            item.method.needs)
        again = trace.cache[key]
        tokens = (item.explained_tokens(self.options.max_tokens) if self.options.max_tokens
                  else list(range(trace.n_generated)))
        after = item.method(again, tokens)  # the method's contract, as for item.maps
        return {"value": [spearman(item.maps[j], b) for j, b in zip(tokens, after,
                                                                     strict=True)]}


@hookimpl
def register_metrics(register):
    register(Randomisation)
