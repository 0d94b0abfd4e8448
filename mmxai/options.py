"""Options of methods, metrics and datasets: a dataclass per plugin, checked in one place.

Every value is read against its dataclass field's type, whether it comes from the command
line (always a string: ``--option tam.eci=false``) or from Python (``explain(..., eci=False)``,
a dataset's ``default_options``). A value that does not fit is refused in one line naming the
option, the value and what the field accepts, before any model loads: the string ``"False"``
is never a truthy option. The types understood (``docs/plugins.md``, Options):

- ``bool``: true/false, 1/0, yes/no in any case (a Python bool, or 0/1);
- ``int`` (not a bool, not ``1.5``), ``float`` (finite: ``nan`` and ``inf`` are refused);
- ``str``, ``pathlib.Path``;
- ``Literal[...]``: one of the listed values;
- ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``: ``0.5,0.75,1`` or JSON ``[0.5, 0.75, 1]``;
- ``dict[K, V]`` (or a bare ``dict``): a JSON object;
- a bare ``tuple`` or ``list``: values of any kind, as for ``tuple[Any, ...]``;
- ``X | None``: ``none``/``null`` (any case) or an ``X``; other unions: the first member
  that accepts the value, in the order written;
- ``Any`` (or no annotation): taken as given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from mmxai.errors import MMXAIError

TRUE = frozenset({"true", "1", "yes"})
FALSE = frozenset({"false", "0", "no"})
NONE = frozenset({"none", "null"})


@dataclasses.dataclass
class NoOptions:
    """A plugin without options."""


class OptionError(MMXAIError):
    """An option value that does not fit its field."""


class _Mismatch(Exception):
    """Internal: the value does not fit the type; carries what the type accepts."""

    def __init__(self, accepted: str) -> None:
        super().__init__(accepted)
        self.accepted = accepted


def make_options(kind: str, name: str, options_cls: type, options: dict[str, Any]) -> Any:
    """``options_cls(**options)`` with every value read against its field's type, or one
    line naming the unknown option(s) and the known, or the bad value and what fits."""
    fields = {f.name: f for f in dataclasses.fields(options_cls) if f.init}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise OptionError(f"{kind} {name!r} has no option(s) {', '.join(unknown)}; "
                          f"options: {', '.join(sorted(fields)) or 'none'}")
    hints = _hints(options_cls)
    values = {key: parse_value(value, hints.get(key, Any), f"{name}.{key}")
              for key, value in options.items()}
    try:
        return options_cls(**values)
    except (TypeError, ValueError) as exc:  # an Options class's own __post_init__ check
        raise OptionError(f"{kind} {name!r}: {' '.join(str(exc).split())}") from exc


def parse_value(value: Any, annotation: Any, option: str) -> Any:
    """``value`` read as ``annotation``; an :class:`OptionError` naming ``option`` if it
    does not fit."""
    try:
        return _parse(value, annotation)
    except _Mismatch as exc:
        raise OptionError(f"option {option}={_show(value)}: expected {exc.accepted}") from None


def describe(annotation: Any) -> str:
    """What a field of this type accepts, in words (for errors and ``mmxai plugins``)."""
    try:
        _parse(_NOTHING, annotation)
    except _Mismatch as exc:
        return exc.accepted
    return "any value"


# -- the reader, one branch per kind of type --------------------------------------------------
_NOTHING = object()  # fits no type but Any: lets describe() ask a type what it accepts


def _hints(options_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(options_cls)
    except Exception:  # an annotation that does not resolve: read those fields as Any
        return {}


def _parse(value: Any, annotation: Any) -> Any:
    if annotation is Any or annotation is dataclasses.MISSING:
        return value
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return _literal(value, typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return _union(value, typing.get_args(annotation))
    if origin in (tuple, list):
        return _sequence(value, origin, typing.get_args(annotation))
    if origin is dict:
        return _dict(value, typing.get_args(annotation))
    if annotation is dict:  # a bare ``dict``: a JSON object of anything
        return _dict(value, ())
    if annotation in (tuple, list):  # a bare ``tuple`` or ``list``: values of anything
        return _sequence(value, annotation, ())
    if annotation is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in NONE):
            return None
        raise _Mismatch("none")
    reader = _SCALARS.get(annotation)
    if reader is None:  # a class of the plugin's own: accept its instances as they are
        if isinstance(annotation, type) and isinstance(value, annotation):
            return value
        raise _Mismatch(f"a {getattr(annotation, '__name__', annotation)}")
    return reader(value)


def _bool(value: Any) -> bool:
    accepted = "true or false (also 1/0, yes/no, any case)"
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE:
            return True
        if text in FALSE:
            return False
    raise _Mismatch(accepted)


def _int(value: Any) -> int:
    accepted = "a whole number"
    if isinstance(value, bool):
        raise _Mismatch(accepted)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _Mismatch(accepted)


def _float(value: Any) -> float:
    accepted = "a finite number"
    if isinstance(value, bool):
        raise _Mismatch(accepted)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise _Mismatch(accepted) from None
    else:
        raise _Mismatch(accepted)
    if not math.isfinite(number):
        raise _Mismatch(accepted)
    return number


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Mismatch("a string")


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip():
        return Path(value)
    raise _Mismatch("a path")


_SCALARS = {bool: _bool, int: _int, float: _float, str: _str, Path: _path}


def _literal(value: Any, choices: tuple[Any, ...]) -> Any:
    accepted = "one of " + ", ".join(map(_choice, choices))
    for choice in choices:
        if value == choice and type(value) is type(choice):
            return choice
    if isinstance(value, str):  # from the command line: read as each choice's type
        for choice in choices:
            try:
                if _parse(value, type(choice)) == choice:
                    return choice
            except _Mismatch:
                continue
    raise _Mismatch(accepted)


def _choice(choice: Any) -> str:
    """A Literal choice as the user types it; an empty or spaced string quoted (``''``)."""
    if isinstance(choice, str) and (not choice or choice != choice.strip() or "," in choice):
        return repr(choice)
    return str(choice)


def _union(value: Any, members: tuple[Any, ...]) -> Any:
    optional = type(None) in members
    others = [m for m in members if m is not type(None)]
    if optional and (value is None or (isinstance(value, str)
                                       and value.strip().lower() in NONE)):
        return None
    accepted = []
    for member in others:
        try:
            return _parse(value, member)
        except _Mismatch as exc:
            accepted.append(exc.accepted)
    if optional:
        accepted.append("none")
    raise _Mismatch(" or ".join(dict.fromkeys(accepted)))


def _items(value: Any) -> list[Any]:
    """A sequence from Python, or from text: JSON ``[...]``, ``(a, b)`` or ``a,b``."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                raise _Mismatch("") from None
            if isinstance(parsed, list):
                return parsed
            raise _Mismatch("")
        text = text.removeprefix("(").removesuffix(")")
        return [part.strip() for part in text.split(",")] if text.strip() else []
    raise _Mismatch("")


def _sequence(value: Any, origin: type, args: tuple[Any, ...]) -> Any:
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        element, length = args[0], None
    elif origin is tuple and args:
        element, length = None, len(args)
    else:
        element, length = (args[0] if args else Any), None
    inner = describe(element) if element is not None else ", ".join(map(describe, args))
    accepted = (f"{length} comma-separated values ({inner})" if length is not None
                else f"comma-separated values, each {inner}")
    try:
        items = _items(value)
        if length is not None:
            if len(items) != length:
                raise _Mismatch(accepted)
            parsed = [_parse(item, kind) for item, kind in zip(items, args, strict=True)]
        else:
            parsed = [_parse(item, element) for item in items]
    except _Mismatch:
        raise _Mismatch(accepted) from None
    return origin(parsed)


def _dict(value: Any, args: tuple[Any, ...]) -> dict[Any, Any]:
    key_type, value_type = args if len(args) == 2 else (Any, Any)
    accepted = f"a JSON object of {describe(key_type)} -> {describe(value_type)}"
    if isinstance(value, str):
        try:
            value = json.loads(value, object_pairs_hook=_unique_keys)
        except ValueError:
            raise _Mismatch(accepted) from None
    if not isinstance(value, dict):
        raise _Mismatch(accepted)
    try:
        return {_parse(k, key_type): _parse(v, value_type) for k, v in value.items()}
    except _Mismatch:
        raise _Mismatch(accepted) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once (else which is meant cannot be told)."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key given twice")
    return dict(pairs)


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return repr(text[:60] + ("..." if len(text) > 60 else ""))
