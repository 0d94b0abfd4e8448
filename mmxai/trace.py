"""The trace: one pass over the model that every method shares.

A trace holds, for one sample, what the methods declared they need:

- ``hidden``: the last-layer, final-normed hidden states at every position that predicts a
  token, (T-1, d). Any logit a logit-lens method wants is ``hidden[q] @ W_U[c]``, computed
  for the few columns it asks for: we never hold positions x vocabulary logits (the
  reference holds L x V, with V = 151,936 for Qwen2-VL);
- ``layers``: other decoder layers' residual outputs, on request;
- ``attentions``: per decoder layer (heads, T-1, T-1), only on request;
- ``topk_ids`` / ``topk_logits`` and ``logsumexp`` at each generating position.

:func:`generate_trace` records it while generating (hooks on the final norm, so the cost over
bare generation is a copy); :func:`generate_traces` does so for several samples in one
left-padded ``generate`` call; :func:`forced_trace` teacher-forces a known answer in one
forward pass and gives the same maps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from mmxai.model import Inputs, Model


@dataclass(frozen=True)
class Needs:
    """What a method needs from the shared pass (and whether it runs passes of its own).

    The union over a run's methods decides what the shared pass records. ``gradients`` and
    ``extra_passes`` record nothing: they say what a method costs beyond the shared pass
    (``mmxai plugins`` shows them with each method).
    """

    layers: tuple[int, ...] = ()  # decoder layers beyond the final normed states
    attentions: bool = False
    topk: int = 0  # top-k logits at generating positions
    # the greedy prediction at the first prompt position (TAM's reference mode, Q2), read
    # from the prefill's own lm_head call (Trace.top_class)
    prompt_top: bool = False
    gradients: bool = False  # the method runs its own backward passes
    extra_passes: bool = False  # the method runs its own forward passes

    def __or__(self, other: Needs) -> Needs:
        return Needs(
            layers=tuple(sorted(set(self.layers) | set(other.layers))),
            attentions=self.attentions or other.attentions,
            topk=max(self.topk, other.topk),
            prompt_top=self.prompt_top or other.prompt_top,
            gradients=self.gradients or other.gradients,
            extra_passes=self.extra_passes or other.extra_passes,
        )


@dataclass
class Trace:
    """Everything recorded for one sample. T = prompt length L + generated length G."""

    model: Model
    inputs: Inputs
    sequence: torch.Tensor  # (T,) prompt ids then generated ids
    hidden: torch.Tensor  # (T-1, d) float32, final-normed last-layer states
    layers: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (T-1, d)
    attentions: list[torch.Tensor] | None = None  # per layer (heads, T-1, T-1)
    topk_ids: torch.Tensor | None = None  # (G, k)
    topk_logits: torch.Tensor | None = None  # (G, k)
    logsumexp: torch.Tensor | None = None  # (G,) over the full vocabulary
    #: Per-sample results that several methods or metrics share (e.g. MSEA's scaled passes).
    cache: dict = field(default_factory=dict, repr=False)
    _columns: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def prompt_len(self) -> int:
        return int(self.inputs.input_ids.shape[0])

    @property
    def generated_ids(self) -> torch.Tensor:
        return self.sequence[self.prompt_len:]

    @property
    def n_generated(self) -> int:
        return int(self.sequence.shape[0]) - self.prompt_len

    def generating_position(self, token: int) -> int:
        """The position whose logits produced generated token ``token`` (0-based)."""
        return self.prompt_len - 1 + token

    @property
    def image_positions(self) -> np.ndarray:
        return self.inputs.image_positions

    @property
    def grids(self):
        return self.inputs.grids

    def token_strings(self) -> list[str]:
        """Each generated token decoded on its own (what a user reads under its map)."""
        tok = self.model.tokenizer
        return [tok.decode([int(t)]) for t in self.generated_ids]

    def top_class(self, position: int) -> int:
        """The argmax of the full-vocabulary logits at ``position``: the model's own greedy
        prediction there, for positions generation did not score (TAM's reference scores
        generated token 0 by the prediction at the first prompt position, Q2).

        One (V, d) matrix-vector product, the one cost that cannot be avoided (the argmax needs
        every logit): computed once per trace and position, shared by every method, on the
        unembedding's device and in its dtype, as the model's ``lm_head`` computes it.
        """
        key = ("top_class", int(position))
        if key not in self.cache:
            w = self.model.unembedding()
            with torch.no_grad():
                h = self.hidden[int(position)].to(w.device, w.dtype)
                self.cache[key] = int(torch.nn.functional.linear(h, w).argmax())
        return self.cache[key]

    def logits(self, classes: Sequence[int], positions: Sequence[int] | np.ndarray | None = None,
               layer: int | None = None) -> torch.Tensor:
        """Logits of ``classes`` at ``positions`` (all T-1 by default): (P, C), float32.

        Columns are cached per class, so methods that share the trace share the matmuls.
        ``layer`` reads an intermediate layer through the final norm (the logit-lens
        convention); None reads the last layer.
        """
        with torch.no_grad():
            return self._logits([int(c) for c in classes], positions, layer)

    def _logits(self, classes: list[int], positions, layer: int | None) -> torch.Tensor:
        if layer is None:
            missing = [c for c in classes if c not in self._columns]
            if missing:
                w = self.model.unembedding()[missing].to(self.hidden.device, torch.float32)
                block = self.hidden @ w.T
                for j, c in enumerate(missing):
                    self._columns[c] = block[:, j]
            out = torch.stack([self._columns[c] for c in classes], dim=1)
        else:
            states = self.layers[layer]
            norm = self.model.final_norm()
            normed = norm(states.to(norm.weight.dtype)).float()
            w = self.model.unembedding()[classes].to(normed.device, torch.float32)
            out = normed @ w.T
        if positions is not None:
            out = out[torch.as_tensor(np.asarray(positions), dtype=torch.long, device=out.device)]
        return out

    def image_logits(self, classes: Sequence[int], layer: int | None = None) -> torch.Tensor:
        """Logits of ``classes`` at the image tokens: (C, N_image), the raw logit-lens maps."""
        return self.logits(classes, self.image_positions, layer=layer).T


@contextmanager
def _capture(modules: dict[str, torch.nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record each module's output (first element of a tuple), (B, q, d), on every call."""
    store: dict[str, list[torch.Tensor]] = {k: [] for k in modules}
    handles = []
    for key, module in modules.items():
        def hook(_m, _i, out, key=key):
            out = out[0] if isinstance(out, (tuple, list)) else out
            store[key].append(out.detach())

        handles.append(module.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def _modules(model: Model, needs: Needs) -> dict[str, torch.nn.Module]:
    modules = {"final": model.final_norm()}
    layers = model.decoder_layers()
    for index in needs.layers:
        modules[f"layer{index % len(layers)}"] = layers[index]
    return modules


def _rows(steps: Sequence[torch.Tensor], sample: int, pad: int, n: int) -> torch.Tensor:
    """One sample's (n, d) float32 states from per-step (B, q, d) captures, padding dropped."""
    return torch.cat([step[sample] for step in steps])[pad:pad + n].float()


def _finish(model: Model, inputs: Inputs, sequence: torch.Tensor,
            store: dict[str, list[torch.Tensor]], attentions: list[torch.Tensor] | None,
            needs: Needs, sample: int = 0, pad: int = 0) -> Trace:
    """The trace of row ``sample`` of a batch whose prompt was left-padded by ``pad``."""
    n = int(sequence.shape[0]) - 1
    hidden = _rows(store["final"], sample, pad, n)
    n_layers = len(model.decoder_layers())
    layers = {int(k[5:]): _rows(v, sample, pad, n) for k, v in store.items()
              if k.startswith("layer")}
    layers = {**layers, **{i - n_layers: layers[i] for i in list(layers)}}
    trace = Trace(model, inputs, sequence.detach().cpu(), hidden, layers, attentions)
    if "prompt_top" in store:  # what the prefill's lm_head predicted there (Trace.top_class)
        trace.cache[("top_class", int(inputs.prompt_positions[0]))] = int(
            store["prompt_top"][sample])
    n_generated = trace.n_generated
    if "vocab" in store and n_generated:
        # what generation's own logits gave, step by step (no G x V recomputation)
        stats = [torch.stack([step[k][sample] for step in store["vocab"]])[:n_generated]
                 for k in range(len(store["vocab"][0]))]
        trace.logsumexp = stats[0]
        if needs.topk:
            trace.topk_logits, trace.topk_ids = stats[1], stats[2]
    elif n_generated:
        with torch.no_grad():
            trace.logsumexp, *top = _vocab_stats(model, hidden[trace.prompt_len - 1:], needs)
        if top:
            trace.topk_logits, trace.topk_ids = top
    return trace


def _vocab_stats(model: Model, states: torch.Tensor, needs: Needs) -> list[torch.Tensor]:
    """[logsumexp (n,), then top-k logits and ids (n, k) if needed] of states' logits."""
    w = model.unembedding()
    return _reduce_logits((states.to(w.device, w.dtype) @ w.T).float(), needs)  # transient


def _reduce_logits(logits: torch.Tensor, needs: Needs) -> list[torch.Tensor]:
    """Full-vocabulary logits (..., V) -> the few numbers a trace keeps of them."""
    stats = [torch.logsumexp(logits, dim=-1)]
    if needs.topk:
        stats += list(logits.topk(min(needs.topk, logits.shape[-1]), dim=-1))
    return stats


@contextmanager
def _capture_vocab(model: Model, needs: Needs, store: dict[str, list],
                   prompt_rows: Sequence[int] | None = None) -> Iterator[None]:
    """During generation, reduce each step's next-token logits (B, V) as they are made.

    ``prompt_rows`` (one padded position per sample): also keep the argmax of the logits
    there (``store["prompt_top"]``, (B,)). The prefill's ``lm_head`` call scores only the last
    position, so the rows are added to that call's input: one matrix product reads the
    unembedding once for both, which costs next to nothing more in the model's 16-bit dtypes
    (a separate (V, d) product costs as much as the prefill's own; benchmarks/
    tam_reference_mode.py).
    """
    store["vocab"] = []
    added = {"rows": 0}

    def before(_m, args):
        if prompt_rows is None or "prompt_top" in store or not args or not store.get("final"):
            return None
        x, full = args[0], store["final"][0]  # (B, q, d); the prefill's normed states (B, L, d)
        if x.dim() != 3 or x.shape[0] != full.shape[0] or x.shape[1] > full.shape[1]:
            return None
        if x.shape[1] == full.shape[1]:  # the head scores every position already
            added["rows"] = -1
            return None
        rows = full[torch.arange(x.shape[0]), torch.as_tensor(list(prompt_rows))]
        added["rows"] = 1
        return (torch.cat([rows[:, None].to(x.device, x.dtype), x], dim=1), *args[1:])

    def hook(_m, _i, out):
        if added["rows"]:
            scored = (out[:, 0] if added["rows"] > 0
                      else out[torch.arange(out.shape[0]), torch.as_tensor(list(prompt_rows))])
            store["prompt_top"] = scored.argmax(-1).detach().cpu()
            out = out[:, 1:] if added["rows"] > 0 else out
            added["rows"] = 0
        store["vocab"].append([t.detach() for t in _reduce_logits(out[:, -1].float(), needs)])
        return out

    head = model.hf.get_output_embeddings()
    handles = [head.register_forward_pre_hook(before), head.register_forward_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _assemble_attentions(steps: Sequence[Sequence[torch.Tensor]], n: int, sample: int = 0,
                         pad: int = 0) -> list[torch.Tensor]:
    """Stitch generate's per-step attentions, (B, heads, q, k) per layer, into (heads, n, n)
    matrices per layer for row ``sample``, dropping its ``pad`` left-padding rows and keys."""
    per_layer = []
    for layer in range(len(steps[0])):
        heads = steps[0][layer].shape[1]
        full = torch.zeros(heads, n, n)
        row = -pad  # the sample's own position of the step's first query row
        for step in steps:
            attention = step[layer][sample].float()  # (heads, q, keys)
            queries, keys = attention.shape[1:]
            # the keys end at the step's last query: all of them, or the last keys of a
            # sliding-window layer (Gemma 3, Mistral); ``start``: the own position of key 0
            start = row + queries - keys
            skip = max(0, -start)  # padding (or keys before the sample) to leave out
            block = attention[:, :, skip:skip + n - max(0, start)]
            first, last = max(0, -row), min(queries, n - row)
            if last > first:
                column = max(0, start)
                full[:, row + first:row + last, column:column + block.shape[2]] = \
                    block[:, first:last]
            row += queries
            if row >= n:
                break
        per_layer.append(full)
    return per_layer


def _until_eos(generated: torch.Tensor, eos: set[int]) -> torch.Tensor:
    """Generated ids up to and including the first EOS: what follows in a batch is padding."""
    hits = [j for j, t in enumerate(generated.tolist()) if t in eos]
    return generated[:hits[0] + 1] if hits else generated


def _eos_ids(model: Model, kwargs: dict) -> set[int]:
    eos = kwargs.get("eos_token_id", model.hf.generation_config.eos_token_id)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def generate_traces(model: Model, inputs: Sequence[Inputs], needs: Needs = Needs(),
                    max_new_tokens: int = 32, **generate_kwargs) -> list[Trace]:
    """Generate greedily for several samples in ONE ``generate`` call; one trace per sample.

    Each sample's :class:`~mmxai.model.Inputs` is built on its own (``model.build_inputs``),
    so its grids and positions are relative to its own unpadded sequence; here the prompts
    are left-padded and the images combined by ``model.collate``, and each trace is cut back
    to its sample: padding dropped, generation ended at the sample's first EOS (kept), as
    :func:`generate_trace` would have ended it.
    """
    if needs.attentions:
        model.set_eager_attention()
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                  return_dict_in_generate=True, output_attentions=needs.attentions,
                  pad_token_id=model.pad_token_id())
    kwargs.update(generate_kwargs)
    features = model.collate([x.features for x in inputs])
    width = int(features["input_ids"].shape[1])
    prompt_rows = ([width - int(x.input_ids.shape[0]) + int(x.prompt_positions[0])
                    for x in inputs] if needs.prompt_top
                   and all(len(x.prompt_positions) for x in inputs) else None)
    with torch.no_grad(), _capture(_modules(model, needs)) as store, \
            _capture_vocab(model, needs, store, prompt_rows):
        out = model.hf.generate(**features, **kwargs)
    eos = _eos_ids(model, kwargs)
    traces = []
    for sample, x in enumerate(inputs):
        pad = width - int(x.input_ids.shape[0])
        generated = _until_eos(out.sequences[sample, width:], eos)
        sequence = torch.cat([out.sequences[sample, pad:width], generated])
        n = int(sequence.shape[0]) - 1
        attentions = (_assemble_attentions(out.attentions, n, sample, pad)
                      if needs.attentions else None)
        traces.append(_finish(model, x, sequence, store, attentions, needs, sample, pad))
    return traces


def generate_trace(model: Model, inputs: Inputs, needs: Needs = Needs(),
                   max_new_tokens: int = 32, **generate_kwargs) -> Trace:
    """Generate greedily once and record what ``needs`` asks for on the way."""
    return generate_traces(model, [inputs], needs, max_new_tokens, **generate_kwargs)[0]


def forced_features(inputs: Inputs, sequence: torch.Tensor) -> dict:
    """The processor features extended to ``sequence`` (teacher forcing a known answer).

    Per-token tensors of the prompt (attention mask, token-type ids, ...) are extended: the
    attention mask with ones, anything else with the family's ``inputs.answer_fill`` (what
    its generation appends: PaliGemma's answer tokens are token_type_ids 1), else zeros.
    """
    features = dict(inputs.features)
    prompt_len = inputs.input_ids.shape[0]
    extra = sequence.shape[0] - prompt_len
    device = inputs.input_ids.device
    for key, value in inputs.features.items():
        if torch.is_tensor(value) and value.dim() == 2 and value.shape == (1, prompt_len):
            fill = 1 if key == "attention_mask" else inputs.answer_fill.get(key, 0)
            pad = torch.full((1, extra), fill, dtype=value.dtype, device=device)
            features[key] = torch.cat([value, pad], dim=1)
    features["input_ids"] = sequence.to(device)[None]
    return features


def forced_trace(model: Model, inputs: Inputs, generated_ids: torch.Tensor | Sequence[int],
                 needs: Needs = Needs()) -> Trace:
    """Teacher-force ``generated_ids`` after the prompt in one forward pass."""
    if needs.attentions:
        model.set_eager_attention()
    generated = torch.as_tensor(list(map(int, generated_ids)), dtype=torch.long)
    sequence = torch.cat([inputs.input_ids.cpu(), generated])
    features = forced_features(inputs, sequence[:-1])
    with torch.no_grad(), _capture(_modules(model, needs)) as store:
        out = model.hf(**features, output_attentions=needs.attentions, use_cache=False,
                       logits_to_keep=1)  # full-vocab logits only where needed
    attentions = None
    if needs.attentions:
        # on the CPU as generate's (_assemble_attentions): a split model's are on many GPUs
        attentions = [a[0].float().cpu() for a in out.attentions]
    return _finish(model, inputs, sequence, store, attentions, needs)
