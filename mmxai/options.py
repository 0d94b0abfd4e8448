"""Options of methods and metrics: a dataclass per plugin, checked in one place."""

from __future__ import annotations

import dataclasses
from typing import Any

from mmxai.errors import MMXAIError


@dataclasses.dataclass
class NoOptions:
    """A plugin without options."""


def make_options(kind: str, name: str, options_cls: type, options: dict[str, Any]) -> Any:
    """``options_cls(**options)``, or one line naming the unknown options and the known."""
    known = {f.name for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise MMXAIError(f"{kind} {name!r} has no option(s) {', '.join(unknown)}; "
                         f"options: {', '.join(sorted(known)) or 'none'}")
    return options_cls(**options)
