"""Plugin discovery: one pluggy manager over the ``mmxai`` entry-point group.

Built-in models, methods, metrics and datasets are entry points of the ``mmxai``
distribution itself, discovered exactly like a third-party package. A plugin that fails to
import, raises while registering, or registers a name another plugin already owns, is
recorded as broken and never takes the process down.

``MMXAI_PLUGINS`` limits what loads: a comma-separated list of entry-point or distribution
names (unset: everything; empty: nothing).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from mmxai import hookspecs
from mmxai.errors import DuplicateNameError, UnknownNameError

ENV_VAR = "MMXAI_PLUGINS"
GROUP = "mmxai"
BUILTIN_DISTRIBUTION = "mmxai"


@dataclass
class PluginInfo:
    """What one plugin (one entry point) is and what it registered."""

    name: str
    module: str
    distribution: str = "?"
    version: str = "?"
    license: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    @property
    def broken(self) -> bool:
        return self.error is not None

    @property
    def key(self) -> str:
        """Unique per plugin: two distributions may use the same entry-point name."""
        return f"{self.distribution}:{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "license": self.license,
            "registered": self.registered,
            "error": self.error,
        }


def _licence(dist: metadata.Distribution) -> str | None:
    meta = dist.metadata
    for key in ("License-Expression", "License"):
        value = meta.get(key)
        if value and value.strip() and value.strip() != "UNKNOWN":
            return value.strip().splitlines()[0]
    classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return classifiers[0].split("::")[-1].strip() if classifiers else None


def _keys(kind: str, obj: Any) -> list[str]:
    """The names an object registers under: architectures for models, ``name`` otherwise."""
    if kind == "models":
        keys = list(getattr(obj, "architectures", ()) or ())
        if not keys:
            raise TypeError(f"model adapter {obj!r} declares no `architectures`")
        return keys
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{kind[:-1]} {obj!r} has no string `name`")
    return [name]


def _load_order(ep: metadata.EntryPoint) -> tuple[bool, str, str]:
    """mmxai's own entry points first, so a third-party plugin can never take a built-in's
    name (it is the one recorded as clashing); then by distribution and entry-point name."""
    dist = ep.dist.name if ep.dist else ""
    return dist != BUILTIN_DISTRIBUTION, dist, ep.name


class PluginManager:
    """Loads the ``mmxai`` entry points once and keeps one registry per kind."""

    def __init__(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        self._entry_points = entry_points
        self._pm = pluggy.PluginManager(GROUP)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._registries: dict[str, dict[str, tuple[Any, PluginInfo]]] = {
            kind: {} for kind in hookspecs.KINDS
        }
        self._loaded = False

    # -- loading -------------------------------------------------------------------------
    def load(self) -> PluginManager:
        if self._loaded:
            return self
        self._loaded = True
        allowed = os.environ.get(ENV_VAR)
        wanted = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
        eps = self._entry_points
        if eps is None:
            eps = metadata.entry_points(group=GROUP)
        for ep in sorted(eps, key=_load_order):
            dist_name = ep.dist.name if ep.dist else "?"
            if wanted is not None and ep.name not in wanted and dist_name not in wanted:
                continue
            info = PluginInfo(name=ep.name, module=ep.value, distribution=dist_name)
            if ep.dist is not None:
                info.version = ep.dist.version
                info.license = _licence(ep.dist)
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the CLI down
                info.error = f"import failed: {type(exc).__name__}: {exc}"
                info.traceback = traceback.format_exc()  # type: ignore[attr-defined]
                self._plugins[info.key] = info
                continue
            self.add_plugin(module, info)
        return self

    def add_plugin(self, module: Any, info: PluginInfo | None = None) -> PluginInfo:
        """Register a module (or object) of hook implementations, e.g. in tests."""
        if info is None:
            name = getattr(module, "__name__", repr(module))
            info = PluginInfo(name=name, module=name, distribution="(in-process)")
        try:
            self._pm.register(module, name=info.key)
        except Exception as exc:
            info.error = f"invalid hooks: {type(exc).__name__}: {exc}"
            self._plugins[info.key] = info
            return info
        self._plugins[info.key] = info
        for kind in hookspecs.KINDS:
            caller = getattr(self._pm.hook, f"register_{kind}")
            for impl in caller.get_hookimpls():
                if impl.plugin is module:
                    self._call_register(impl.function, kind, info)
        return info

    def _call_register(self, function: Any, kind: str, info: PluginInfo) -> None:
        staged: list[tuple[str, Any]] = []

        def register(obj: Any) -> None:
            for key in _keys(kind, obj):
                owner = self._registries[kind].get(key)
                if owner is not None:
                    raise DuplicateNameError(
                        f"{kind[:-1]} {key!r} is registered twice: by plugin "
                        f"{owner[1].name!r} ({owner[1].distribution}) and by plugin "
                        f"{info.name!r} ({info.distribution})"
                    )
                staged.append((key, obj))

        try:
            function(register=register)
        except Exception as exc:
            info.error = f"register_{kind} failed: {type(exc).__name__}: {exc}"
            return
        for key, obj in staged:
            self._registries[kind][key] = (obj, info)
            names = info.registered.setdefault(kind, [])
            label = getattr(obj, "name", key) if kind == "models" else key
            if label not in names:
                names.append(label)

    # -- queries -------------------------------------------------------------------------
    def plugins(self) -> list[PluginInfo]:
        return list(self.load()._plugins.values())

    def names(self, kind: str) -> list[str]:
        return sorted(self.load()._registries[kind])

    def items(self, kind: str) -> dict[str, Any]:
        return {k: v[0] for k, v in sorted(self.load()._registries[kind].items())}

    def get(self, kind: str, name: str) -> Any:
        entry = self.load()._registries[kind].get(name)
        if entry is None:
            available = ", ".join(self.names(kind)) or "none"
            broken = [p.name for p in self._plugins.values() if p.broken]
            hint = f"; broken plugins: {', '.join(broken)}" if broken else ""
            raise UnknownNameError(f"unknown {kind[:-1]} {name!r}; available: {available}{hint}")
        return entry[0]

    def provider(self, kind: str, name: str) -> PluginInfo:
        self.get(kind, name)
        return self._registries[kind][name][1]


_default: PluginManager | None = None


def manager() -> PluginManager:
    """The process-wide plugin manager, loaded lazily on first use."""
    global _default
    if _default is None:
        _default = PluginManager()
    return _default.load()


def reset() -> None:
    """Forget the loaded plugins (tests, or after changing ``MMXAI_PLUGINS``)."""
    global _default
    _default = None
