"""An out-of-tree mmxai plugin: one method, registered through the ``mmxai`` entry point.

``example-norm`` scores each image token by the L2 norm of its last-layer hidden state, the
"how much is written into this token" baseline: the same map for every generated token.
Real methods read more of the trace (logits, attentions, extra passes); this one shows the
contract in the fewest lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmxai.hookspecs import hookimpl
from mmxai.method import Method
from mmxai.trace import Trace


class ExampleNorm(Method):
    """L2 norm of the final-normed hidden state at each image token."""

    name = "example-norm"
    summary = "L2 norm of each image token's last-layer hidden state (token-independent)"

    @dataclass
    class Options:
        power: float = 1.0  # maps are norm ** power; 2 gives the energy

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        """(len(tokens), N_image): one row per token, identical rows."""
        # trace.hidden is (T-1, d): every image position is in the prompt, so it is there.
        states = trace.hidden[trace.image_positions]  # (N_image, d)
        norms = states.norm(dim=-1).cpu().numpy() ** self.options.power  # (N_image,)
        return np.tile(norms.astype(np.float32), (len(tokens), 1))


@hookimpl
def register_methods(register):
    register(ExampleNorm)
