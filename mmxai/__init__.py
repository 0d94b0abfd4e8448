"""mmxai: explain what a multimodal LLM looked at for each generated token.

The public API, flat like ``captum.attr``::

    import mmxai
    model = mmxai.load_model("Qwen/Qwen2-VL-2B-Instruct")
    result = mmxai.explain(model, "cat.jpg", "Describe the image.", method="tam")
    result.maps         # (n_generated, N_image) flat maps, one row per generated token
    result.image_map(0)  # (H, W) map of the first generated token in the image's frame
    results = mmxai.explain_many(model, "cat.jpg", "Describe the image.", ["tam", "arc"])
    mmxai.write_viewer(results, "mmxai-out")  # mmxai-out/index.html, as mmxai explain writes
    comparison = mmxai.compare(dataset="synthetic", methods=["tam", "gradcam"], limit=8)
    comparison.rows()  # one dict per (model, method): every metric's value and interval

Names are imported on first use (PEP 562), so ``import mmxai`` and ``mmxai --help`` stay
fast and do not load torch. The functions live in ``mmxai.api`` (``load_model`` is its
``open_pretrained``), ``mmxai.pixels`` and ``mmxai.compare_api`` (there is no
``mmxai.explain`` or ``mmxai.compare`` submodule, so ``mmxai.explain`` and ``mmxai.compare``
are always the functions). docs/api.md documents them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it (``module:name`` where it has another name)
_EXPORTS = {
    "explain": "mmxai.api",
    "explain_many": "mmxai.api",
    "Explanation": "mmxai.api",
    "load_image": "mmxai.api",
    "compare": "mmxai.compare_api",
    "Comparison": "mmxai.compare_api",
    "write_viewer": "mmxai.compare_api",
    "load_model": "mmxai.api:open_pretrained",
    "set_pixel_budget": "mmxai.pixels",
    "wrap": "mmxai.model",
    "Model": "mmxai.model",
    "ImageGrid": "mmxai.model",
    "Inputs": "mmxai.model",
    "Method": "mmxai.method",
    "Needs": "mmxai.trace",
    "Trace": "mmxai.trace",
    "generate_trace": "mmxai.trace",
    "generate_traces": "mmxai.trace",
    "forced_trace": "mmxai.trace",
    "Metric": "mmxai.metric",
    "Dataset": "mmxai.dataset",
    "Sample": "mmxai.dataset",
    "manager": "mmxai.registry",
    "hookimpl": "mmxai.hookspecs",
    "overlay": "mmxai.viewer",
    "MMXAIError": "mmxai.errors",
    "InputError": "mmxai.errors",
    "UnknownNameError": "mmxai.errors",
    "UnsupportedModelError": "mmxai.errors",
    "DuplicateNameError": "mmxai.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'mmxai' has no attribute {name!r}")
    module, _, defined = where.partition(":")
    value = getattr(importlib.import_module(module), defined or name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
