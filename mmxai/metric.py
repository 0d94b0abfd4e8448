"""The Metric interface: each metric says its name and which direction is better.

The leaderboard reads ``higher_is_better`` and ``category`` instead of special-casing names
(the Quantus pattern). A metric turns one evaluated sample into named *parts*, lists of
values that are pooled over the dataset (TAM pools every object's IoU, not per-image means);
:meth:`Metric.aggregate` turns the parts of many samples into one number. Bootstrap
confidence intervals resample samples and call ``aggregate`` again, so a metric such as
F1-IoU (a function of two pooled means) gets a correct interval for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmxai.options import NoOptions, make_options
from mmxai.trace import Needs

if TYPE_CHECKING:
    from mmxai.dataset import Sample
    from mmxai.method import Method
    from mmxai.model import Model
    from mmxai.trace import Trace

Parts = dict[str, list[float]]


@dataclass
class EvalItem:
    """Everything a metric may look at for one (model, method, sample).

    ``maps`` are the method's flat maps for every generated token, (G, N_image).
    ``words`` groups generated tokens into words with their kind and label
    (``mmxai.words.Word``). ``mask`` is the label map at the image's resolution, or None.
    ``cost`` holds what the evaluator measured around ``method.explain``
    (``seconds_per_token``, ``peak_bytes``).
    """

    sample: Sample
    model: Model
    method: Method
    trace: Trace
    maps: np.ndarray
    words: list[Any] = field(default_factory=list)
    mask: np.ndarray | None = None
    cost: dict[str, float] = field(default_factory=dict)

    def explained_tokens(self, limit: int = 0) -> list[int]:
        """The tokens that costly metrics explain: the nouns' tokens if the answer has any,
        else every token but special ones; the first ``limit`` of them (0: all)."""
        nouns = [t for w in self.words if getattr(w, "kind", None) == "noun" for t in w.tokens]
        if not nouns:
            special = set(self.model.tokenizer.all_special_ids)
            nouns = [j for j, t in enumerate(self.trace.generated_ids.tolist())
                     if t not in special]
        tokens = sorted(set(nouns))
        return tokens[:limit] if limit > 0 else tokens


class Metric:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    #: "localisation", "faithfulness", "sanity" or "cost".
    category: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    #: What the shared trace must record for this metric (beyond the methods' needs).
    needs: ClassVar[Needs] = Needs()
    #: True if the metric needs ground-truth masks (samples without one are not counted).
    needs_mask: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions
    #: Bump when the same maps and options give other values (a fix, a new formula): a run
    #: resuming into a store whose rows an older version made is refused.
    version: ClassVar[str] = "1"

    def __init__(self, **options: Any) -> None:
        self.options = make_options("metric", self.name, self.Options, options)

    def measure(self, item: EvalItem) -> Parts:
        """This sample's contribution: named lists of values, pooled over samples."""
        raise NotImplementedError

    #: Set with :meth:`from_means` when ``aggregate`` is a function of the pooled means of
    #: these parts: bootstrap and permutation tests then run vectorised, not in Python.
    pooled_means: ClassVar[tuple[str, ...]] = ()

    def aggregate(self, parts: Sequence[Parts]) -> float:
        """Pool the samples' parts into one number; default: the mean of part ``value``."""
        values = [v for p in parts for v in p.get("value", [])]
        return float(np.mean(values)) if values else float("nan")

    def from_means(self, *means: np.ndarray) -> np.ndarray:
        """``aggregate`` from arrays of pooled means of ``pooled_means`` (NaN: no entry)."""
        raise NotImplementedError
