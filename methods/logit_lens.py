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

from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.trace import Needs, Trace

CITATION = """@misc{nostalgebraist2020logitlens,
  title        = {interpreting {GPT}: the logit lens},
  author       = {nostalgebraist},
  year         = {2020},
  howpublished = {LessWrong},
  url          = {https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru/interpreting-gpt-the-logit-lens}
}
@inproceedings{zhou2016cam,
  title     = {Learning Deep Features for Discriminative Localization},
  author    = {Zhou, Bolei and Khosla, Aditya and Lapedriza, Agata and Oliva, Aude
               and Torralba, Antonio},
  booktitle = {IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2016}
}
@inproceedings{li2025tam,
  title     = {Token Activation Map to Visually Explain Multimodal {LLMs}},
  author    = {Li, Yi and Wang, Hualiang and Ding, Xinpeng and Wang, Haonan and Li, Xiaomeng},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2025},
  eprint    = {2506.23270},
  archivePrefix = {arXiv}
}"""


@dataclass
class LogitLensOptions:
    layer: int | None = None  # decoder layer read through the final norm; None: the last


class LogitLens(Method):
    name = "logit-lens"
    summary = "Logit lens / CAM: the token's logit at each image position, ReLU'd"
    citation = CITATION
    Options = LogitLensOptions

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options.layer is not None:  # the shared pass must record that layer
            self.needs = Needs(layers=(int(self.options.layer),))

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        classes = trace.generated_ids[list(tokens)].tolist()
        if not classes:
            return np.zeros((0, len(trace.image_positions)), dtype=np.float32)
        maps = trace.image_logits(classes, layer=self.options.layer).clamp_min(0)
        return maps.cpu().numpy().astype(np.float32)


@hookimpl
def register_methods(register) -> None:
    register(LogitLens)
