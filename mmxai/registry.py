"""Plugin discovery: one pluggy manager over the ``mmxai`` entry-point group.

Built-in models, methods, metrics and datasets are entry points of the ``mmxai``
distribution itself, discovered exactly like a third-party package. A plugin that fails to
import, raises while registering, or registers a name another plugin already owns, is
recorded as broken and never takes the process down.

``MMXAI_PLUGINS`` limits what loads: a comma-separated list of entry-point or distribution
names (unset: everything; empty: nothing).
"""

from __future__ import annotations

import contextlib
import os
import sys
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
    #: Every failure, in order: the import, or each hook that raised or registered
    #: something invalid. Any error makes the whole plugin broken.
    errors: list[str] = field(default_factory=list)
    #: The traceback of each error, for debugging (not shown by ``mmxai plugins``).
    tracebacks: list[str] = field(default_factory=list, repr=False)

    @property
    def error(self) -> str | None:
        """All errors on one line (``; `` between them), or None."""
        return "; ".join(self.errors) if self.errors else None

    @property
    def broken(self) -> bool:
        return bool(self.errors)

    def fail(self, message: str) -> None:
        """Record one error (with the traceback being handled, if any)."""
        self.errors.append(" ".join(message.split()))
        if sys.exc_info()[0] is not None:
            self.tracebacks.append(traceback.format_exc())

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
            "errors": list(self.errors),
        }


def _licence(dist: metadata.Distribution) -> str | None:
    meta = dist.metadata
    for key in ("License-Expression", "License"):
        value = meta.get(key)
        if value and value.strip() and value.strip() != "UNKNOWN":
            return value.strip().splitlines()[0]
    classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return classifiers[0].split("::")[-1].strip() if classifiers else None


def _base(kind: str) -> type:
    """The class every object registered under ``kind`` must subclass."""
    if kind == "models":
        from mmxai.model import Model
        return Model
    if kind == "methods":
        from mmxai.method import Method
        return Method
    if kind == "metrics":
        from mmxai.metric import Metric
        return Metric
    from mmxai.dataset import Dataset
    return Dataset


#: Characters a method, metric or dataset name cannot hold: the CLI could not name it
#: (``--method a,b`` splits on commas, ``--option NAME.KEY=VALUE`` on the first dot and ``=``).
_RESERVED = set(",.=")


def _check_name(what: str, name: Any, reserved: set[str] = _RESERVED) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} is not a string: {type(name).__name__} {name!r}")
    if not name:
        raise TypeError(f"{what} is empty")
    bad = sorted({ch for ch in name if ch in reserved or ch.isspace() or not ch.isprintable()})
    if bad or name.startswith("-"):
        why = f"holds {''.join(bad)!r}" if bad else "starts with '-'"
        raise TypeError(f"{what} {name!r} {why}: the command line could not name it")
    return name


def _keys(kind: str, obj: Any) -> list[str]:
    """The names an object registers under: architectures for models, ``name`` otherwise.

    The object must be a class deriving from the kind's base class (``Model``, ``Method``,
    ``Metric``, ``Dataset``) with string names; anything else is a ``TypeError`` that marks
    the plugin broken.
    """
    base = _base(kind)
    if not (isinstance(obj, type) and issubclass(obj, base)):
        what = f"class {obj.__qualname__}" if isinstance(obj, type) else \
            f"{type(obj).__name__} {obj!r}"
        raise TypeError(f"register() takes {base.__name__} subclasses in "
                        f"register_{kind}, not the {what}"[:300])
    if kind == "models":
        architectures = getattr(obj, "architectures", ())
        if isinstance(architectures, str) or not isinstance(architectures, (list, tuple)):
            raise TypeError(f"model adapter {obj.__qualname__}: `architectures` must be a list "
                            f"of class names, not {type(architectures).__name__}")
        if not architectures:
            raise TypeError(f"model adapter {obj.__qualname__} declares no `architectures`")
        if obj.name is not None and not isinstance(obj.name, str):
            raise TypeError(f"model adapter {obj.__qualname__}: `name` is not a string: "
                            f"{type(obj.name).__name__} {obj.name!r}")
        return [_check_name(f"model adapter {obj.__qualname__}: architecture", a, set())
                for a in architectures]
    return [_check_name(f"{kind[:-1]} {obj.__qualname__}: `name`", getattr(obj, "name", None))]


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line; says what a ``SystemExit`` is."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the plugin called sys.exit()"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_stdout() -> Any:
    """Whatever plugin code prints goes to stderr: stdout stays machine-readable
    (``mmxai plugins --json``)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


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
        #: ``MMXAI_PLUGINS`` as read at load (None: unset) and the names it holds.
        self._wanted: tuple[str | None, set[str] | None] = (None, None)
        self._unmatched: list[str] = []

    # -- loading -------------------------------------------------------------------------
    def load(self) -> PluginManager:
        if self._loaded:
            return self
        self._loaded = True
        allowed = os.environ.get(ENV_VAR)
        wanted = None if allowed is None else {s.strip() for s in allowed.split(",") if s.strip()}
        self._wanted = (allowed, wanted)
        eps = self._entry_points
        if eps is None:
            eps = metadata.entry_points(group=GROUP)
        matched: set[str] = set()
        for ep in sorted(eps, key=_load_order):
            dist_name = ep.dist.name if ep.dist else "?"
            if wanted is not None and ep.name not in wanted and dist_name not in wanted:
                continue
            matched.update({ep.name, dist_name})
            info = PluginInfo(name=ep.name, module=ep.value, distribution=dist_name)
            if ep.dist is not None:
                info.version = ep.dist.version
                info.license = _licence(ep.dist)
            try:
                with _quiet_stdout():
                    module = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # sys.exit() in a plugin must not end mmxai either
                info.fail(f"import failed: {_describe(exc)}")
                self._plugins[info.key] = info
                continue
            self.add_plugin(module, info)
        if wanted is not None:
            self._unmatched = sorted(wanted - matched)
        return self

    def add_plugin(self, module: Any, info: PluginInfo | None = None) -> PluginInfo:
        """Register a module (or object) of hook implementations, e.g. in tests."""
        if info is None:
            name = getattr(module, "__name__", repr(module))
            info = PluginInfo(name=name, module=name, distribution="(in-process)")
        try:
            self._pm.register(module, name=info.key)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            info.fail(f"invalid hooks: {_describe(exc)}")
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
            with _quiet_stdout():
                function(register=register)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit, GeneratorExit, ...: broken, not fatal
            info.fail(f"register_{kind} failed: {_describe(exc)}")
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

    def unmatched(self) -> list[str]:
        """Names in ``MMXAI_PLUGINS`` that matched no entry point or distribution (sorted)."""
        return list(self.load()._unmatched)

    def limited_by(self) -> str:
        """One clause saying how ``MMXAI_PLUGINS`` limits what loaded ('' when unset)."""
        allowed, _ = self.load()._wanted
        if allowed is None:
            return ""
        clause = f"{ENV_VAR}={allowed!r} loads only the plugins it names"
        if not allowed.strip(","+" "):
            clause = f"{ENV_VAR} is set but empty, so no plugin loads"
        elif self._unmatched:
            clause += f"; {', '.join(map(repr, self._unmatched))} matched no plugin"
        return clause

    def get(self, kind: str, name: str) -> Any:
        entry = self.load()._registries[kind].get(name)
        if entry is None:
            available = ", ".join(self.names(kind)) or "none"
            broken = [p.name for p in self._plugins.values() if p.broken]
            hint = f"; broken plugins: {', '.join(broken)}" if broken else ""
            limited = self.limited_by()
            hint += f" ({limited}; unset it to load every installed plugin)" if limited else ""
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
