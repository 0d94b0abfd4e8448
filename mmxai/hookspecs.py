"""The four hooks a plugin may implement.

Every hook receives a ``register`` callback instead of returning values, so the core owns
validation and name clashes (the pattern of simonw/llm).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("mmxai")
hookimpl = pluggy.HookimplMarker("mmxai")

Register = Callable[..., None]


@hookspec
def register_models(register: Register) -> None:
    """Register model adapters: ``register(Adapter)``; keyed by ``Adapter.architectures``."""


@hookspec
def register_methods(register: Register) -> None:
    """Register attribution methods: ``register(MethodClass)``; keyed by ``MethodClass.name``."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register metrics: ``register(MetricClass)``; keyed by ``MetricClass.name``."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset readers: ``register(DatasetClass)``; keyed by ``DatasetClass.name``."""


KINDS = ("models", "methods", "metrics", "datasets")
