"""What a run is: its settings as one frozen object, and which of its samples a process takes.

:class:`RunSpec` is read once from ``mmxai compare``'s arguments
(:func:`mmxai.commands.compare.run_spec`) and carried whole: into the plan that builds the
dataset, methods and metrics, into worker processes (it pickles), into the
:class:`~mmxai.evaluation.evaluator.Evaluator`, into each run key's ``options_hash``
(:func:`mmxai.evaluation.provenance.run_settings` hashes the part that changes results)
and, whole, into every provenance record (``run``, :meth:`RunSpec.to_dict`). Its values are
checked once, here, when it is made (inseq's typed argument dataclasses are the model).
Its ``protocol`` (:mod:`mmxai.protocols`) fixes its words here and, through
:func:`check_protocol`, the options of its localisation metrics.

:class:`Shard` is not part of the spec: it says which part of the samples one process
evaluates (``--shard``, torchrun's ``RANK``, a worker's index), so shards of one run share
one spec.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmxai import device_map as dm
from mmxai import protocols
from mmxai.errors import InputError, MMXAIError
from mmxai.protocols import Protocol
from mmxai.words import WordOptions

if TYPE_CHECKING:
    from mmxai.metric import Metric


def default_batch(device: torch.device) -> int:
    """Samples per ``generate`` call when no batch size is given (docs/benchmarks.md).

    On CUDA, 8: a decoding step costs about the same for 8 sequences as for one. On CPU, 1:
    batching speeds generation 2-2.6x there too, but CPU runs are the tests, the demos and
    the reproducibility checks, and only one sample at a time keeps every sample's numbers
    independent of which samples shared its batch (bit-identical shards and resumptions).
    """
    return 8 if device.type == "cuda" else 1


@dataclass(frozen=True)
class Selection:
    """What a run evaluates, by name as the command line gives it; the command's plan builds
    the objects (and fills in the defaults: the bundled benchmark, every registered method
    or metric)."""

    models: tuple[str, ...] = ()  # --model specs; none: the dataset's default_model
    dataset: str | None = None  # a registered name; None: the bundled benchmark
    data_root: Path | None = None
    methods: tuple[str, ...] = ()  # none: every registered method
    metrics: tuple[str, ...] = ()  # none: every registered metric
    options: tuple[str, ...] = ()  # NAME.KEY=VALUE, read against each plugin's options


@dataclass(frozen=True)
class Generation:
    """How the answers are generated: greedily, ``min_new_tokens`` (no EOS before) to
    ``max_new_tokens`` tokens, with the model in ``dtype`` (``auto``: the checkpoint's)."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError("--max-new-tokens must be at least 1")

    def kwargs(self) -> dict[str, int]:
        """What :func:`~mmxai.trace.generate_traces` takes besides the inputs and needs."""
        return {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens}


@dataclass(frozen=True)
class RunSpec:
    """Every setting of a run, checked once.

    ``protocol`` names the evaluation protocol (:mod:`mmxai.protocols`); ``words`` are the
    options of :func:`mmxai.words.words_from_trace` (None: its defaults). A protocol other
    than ``default`` fixes the words: left unset they are its own, other words are refused.
    ``batch_size`` samples share one ``generate`` call (None: :func:`default_batch` for the
    model's device). ``bootstrap`` resamples give the leaderboard's intervals, seeded by
    ``seed``, which also reseeds every step of every sample. ``limit`` keeps the first
    samples (before sharding). ``retry`` computes again what is stored as ``failed``;
    ``keep_going`` runs on when the first samples all fail alike in the model. ``device``
    and ``trust_remote_code`` say how models are opened, ``out`` where results go.
    ``save_maps``: the folder each sample's maps are written to when they are computed (not
    for samples resumed from the store); None: nowhere. It changes no result: no run key.
    ``device_map`` and ``max_memory`` split each model over devices
    (:mod:`mmxai.device_map`); where a model runs changes no result either. ``max_memory``:
    ``--max-memory``'s text, or the Python API's dict of device -> size, kept as that text
    (in bytes) so that the spec stays JSON (:meth:`to_dict`).
    """

    selection: Selection = field(default_factory=Selection)
    generation: Generation = field(default_factory=Generation)
    words: WordOptions | None = None
    protocol: str = protocols.DEFAULT
    batch_size: int | None = 1
    seed: int = 0
    bootstrap: int = 1000
    limit: int | None = None
    retry: bool = True
    keep_going: bool = False
    device: str = "auto"
    trust_remote_code: bool = False
    out: Path = Path("mmxai-results")
    save_maps: Path | None = None
    device_map: str | None = None
    max_memory: str | Mapping[Any, Any] | None = None

    def __post_init__(self) -> None:
        protocol = protocols.get(self.protocol)  # an unknown name: one line
        words = self.words
        if protocol.name != protocols.DEFAULT:
            if words is not None and words != protocol.words:
                raise InputError(f"--protocol {protocol.name} fixes the word options: leave "
                                 f"them unset (given: {words})")
            words = protocol.words
        # frozen: the one place a spec completes itself, before anyone reads it
        object.__setattr__(self, "protocol", protocol.name)
        object.__setattr__(self, "words", words)
        if self.limit is not None and self.limit < 1:
            raise InputError("--limit must be at least 1")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise InputError(f"--seed {self.seed}: expected a whole number >= 0")
        if self.bootstrap < 0:
            raise InputError(f"--bootstrap {self.bootstrap}: expected a whole number >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError("--batch must be at least 1")
        # --device-map and --max-memory, checked here: before any model opens
        split = self.placement()
        if isinstance(self.max_memory, Mapping):
            object.__setattr__(self, "max_memory", ",".join(
                f"{device}={size}" for device, size in split["max_memory"].items()))

    def placement(self) -> dict[str, Any]:
        """``device_map`` and ``max_memory`` (parsed) as ``open_model`` takes them; nothing
        without a map (:func:`mmxai.device_map.placement`, cheap enough to ask again)."""
        return dm.placement(self.device_map, self.max_memory, self.device)

    def batch_for(self, device: torch.device) -> int:
        """Samples per ``generate`` call on ``device``."""
        return self.batch_size or default_batch(device)

    def maps_folder(self, label: str, method: str) -> Path:
        """Where ``save_maps`` holds model ``label``'s maps of ``method``, each made one
        portable folder name (``Qwen/Qwen2-VL-2B-Instruct`` -> ``Qwen--Qwen2-VL-2B-Instruct``,
        ``tiny:llava`` -> ``tiny_llava``)."""
        if self.save_maps is None:
            raise MMXAIError("this run saves no maps (no save_maps folder)")
        return self.save_maps / _folder_name(label) / _folder_name(method)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON (tuples as lists, paths as strings): what provenance
        stores; :meth:`from_dict` reads it back."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        """The spec :meth:`to_dict` gave."""
        selection = _tuples(data["selection"])
        if selection["data_root"] is not None:
            selection["data_root"] = Path(selection["data_root"])
        words = None if data["words"] is None else WordOptions(**_tuples(data["words"]))
        rest = {k: v for k, v in data.items() if k not in ("selection", "generation", "words")}
        # specs stored before ``protocol`` and ``save_maps`` existed take their defaults
        if rest.get("save_maps") is not None:
            rest["save_maps"] = Path(rest["save_maps"])
        return cls(Selection(**selection), Generation(**data["generation"]), words,
                   **{**rest, "out": Path(rest["out"])})


def _tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _folder_name(text: str) -> str:
    name = re.sub(r"[/\\]+", "--", text.strip("/\\"))
    name = re.sub(r"[^\w.+=@-]", "_", name, flags=re.ASCII)
    return name if name.strip(".") else "_"


def protocol_clashes(metric: Metric, protocol: str | Protocol) -> dict[str, Any]:
    """The options of ``metric`` that some protocol sets and whose value is not
    ``protocol``'s (the option's default where ``protocol`` leaves it alone), each with
    ``protocol``'s value: what a run of ``protocol`` refuses in its metrics."""
    protocol = protocols.get(protocol)
    owned = {key for known in protocols.PROTOCOLS.values()
             for key in known.options_for(metric.name)}
    defaults = {f.name: f.default for f in dataclasses.fields(metric.Options)}
    expected = {key: protocol.options_for(metric.name).get(key, defaults.get(key))
                for key in owned}
    return {key: value for key, value in expected.items()
            if getattr(metric.options, key, None) != value}


def check_protocol(protocol: str | Protocol, metrics: Mapping[str, Metric]) -> None:
    """Refuse, in one line, a metric (by its label) not made for ``protocol``
    (:func:`protocol_clashes`): its scores would not be the protocol's."""
    name = protocols.get(protocol).name
    for label, metric in metrics.items():
        for key, value in protocol_clashes(metric, name).items():
            raise MMXAIError(f"metric {label!r}: protocol {name!r} sets {key}={value}; make "
                             f"it with NamedMetric.make(cls, options, {name!r})")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the samples whose dataset index is ``index`` mod ``count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise MMXAIError(f"shard {self.index}/{self.count}: need 0 <= i < n")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` (0-based i)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise MMXAIError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
        return cls(index, count)

    @classmethod
    def from_env(cls) -> Shard:
        """From ``RANK`` and ``WORLD_SIZE`` as torchrun and accelerate set them; else 0/1."""
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return cls()
        return cls(int(rank), int(world))

    def selects(self, index: int) -> bool:
        return index % self.count == self.index

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def store_name(self) -> str:
        if self.count == 1:
            return "results.sqlite"
        return f"results-shard{self.index}-of{self.count}.sqlite"
