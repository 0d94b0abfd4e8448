"""The logit lens on image tokens: each generated token's logit at every image position.

Reading a hidden state through the unembedding (nostalgebraist's logit lens) at the image
positions gives, for the explained token's class, a map of where the image tokens already
"say" that token: class activation mapping with the LM head as the classifier (the CAM row
of the TAM paper, TAM without its context removal and filtering).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmxai.citations import cite
from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.trace import Needs, Trace


@dataclass
class LogitLensOptions:
    layer: int | None = None  # decoder layer read through the final norm; None: the last


class LogitLens(Method):
    name = "logit-lens"
    summary = "Logit lens / CAM: the token's logit at each image position, ReLU'd"
    citation = cite("nostalgebraist2020logitlens", "zhou2016cam", "li2025tam")
    Options = LogitLensOptions

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.layer is not None:  # the shared pass must record that layer
            self.needs = Needs(layers=(int(self.options.layer),))

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        classes = trace.generated_ids[list(tokens)].tolist()
        maps = trace.image_logits(classes, layer=self.options.layer).clamp_min(0)
        return maps.cpu().numpy().astype(np.float32)


@hookimpl
def register_methods(register) -> None:
    register(LogitLens)
