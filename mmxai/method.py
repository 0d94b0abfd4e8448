"""The Method interface: one idea on top of the shared trace.

A method declares what it needs from the shared pass (:class:`~mmxai.trace.Needs`), its
BibTeX, and its options as a dataclass; it implements one verb, :meth:`Method.explain`,
which maps generated tokens to flat image maps laid out like ``trace.image_positions``
(grid after grid, row-major). Reshaping, normalising, resizing and rendering are the core's.

The contract is checked once, here, as pytorch-grad-cam's ``BaseCAM.__call__`` and captum's
``_format_input`` do it: callers (the API, the evaluator, metrics) call the method,
``method(trace, tokens)``, which reads the token indices (:func:`token_indices`), answers
an empty request without calling ``explain``, and checks what ``explain`` returns
(:func:`checked_maps`). ``explain`` states the method's idea and nothing else: it always
gets a non-empty list of ints in ``[0, trace.n_generated)``.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from mmxai.errors import InputError, MMXAIError
from mmxai.options import NoOptions, make_options
from mmxai.trace import Needs, Trace


class InvalidMapsError(MMXAIError):
    """A method returned maps of the wrong shape, or with NaN or infinite values."""


class Method:
    name: ClassVar[str] = ""
    #: One line for listings.
    summary: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()
    #: BibTeX of the paper(s) the method comes from.
    citation: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    version: ClassVar[str] = "1"
    #: Whether ``mmxai compare`` runs the method when no ``--method`` is given. Methods that
    #: cost many passes per token (path integrals, perturbation and search methods) say
    #: False: they run when named, or with ``--method all`` (:func:`default_methods`).
    default_run: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        self.options = make_options("method", self.name, self.Options, options)

    def __call__(self, trace: Trace, tokens: Iterable[int] | None = None) -> np.ndarray:
        """Maps for generated tokens ``tokens`` (None: all), ``(len(tokens), N_image)``
        float32 and finite; :class:`~mmxai.errors.InputError` for a token index that is
        not one, :class:`InvalidMapsError` for maps of the wrong shape or not finite."""
        selected = token_indices(tokens, trace.n_generated, f"method {self.name!r}, tokens")
        n_image = len(trace.image_positions)
        if not selected:
            return np.zeros((0, n_image), dtype=np.float32)
        return checked_maps(self.name, self.explain(trace, selected), selected, n_image)

    def explain(self, trace: Trace, tokens: Sequence[int]) -> np.ndarray:
        """Maps for generated tokens ``tokens``: (len(tokens), N_image).

        Called through :meth:`__call__`: ``tokens`` is a non-empty list of ints in
        ``[0, trace.n_generated)`` (repeats allowed, in the caller's order); the result
        (anything ``np.asarray`` reads) is converted to float32 and checked there.
        """
        raise NotImplementedError

    def describe_options(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.describe_options().items())
        return f"{type(self).__name__}({opts})"


def default_methods(selected: Sequence[str] = ()) -> list[str]:
    """The methods a run uses: ``selected`` as given, where ``all`` stands for every
    registered method; nothing selected: every registered method whose ``default_run`` is
    True (a plugin's method without the attribute runs, as before it existed)."""
    from mmxai.registry import manager

    registered = manager().items("methods")
    if not selected:
        return [name for name, cls in registered.items() if getattr(cls, "default_run", True)]
    names: list[str] = []
    for name in selected:
        names.extend(registered if name == "all" else [name])
    return list(dict.fromkeys(names))


def token_indices(tokens: Iterable[int] | None, n_generated: int | None,
                  what: str = "tokens") -> list[int]:
    """``tokens`` as a list of ints in ``[0, n_generated)`` (None: all of them, in order),
    or an :class:`~mmxai.errors.InputError` in one line starting with ``what`` and naming
    the valid range.

    Accepted: Python and numpy integers, 0-d integer tensors, any iterable of them (a list,
    a range, a 1-D array). Refused: negative indices (no wrapping from the end), indices
    past the answer, bools, floats (even whole ones) and anything else.

    ``n_generated`` None (the answer is not generated yet) checks everything but the upper
    bound, so a request can be refused before the model runs; None then stays None.
    """
    valid = f"[0, {n_generated})" if n_generated is not None else "[0, answer length)"
    if tokens is None:
        return list(range(n_generated)) if n_generated is not None else None
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
        raise InputError(f"{what}: expected a sequence of token indices in {valid}, got "
                         f"{type(tokens).__name__}")
    selected = []
    for token in tokens:
        if isinstance(token, (bool, np.bool_)) or (isinstance(token, torch.Tensor)
                                                   and token.dtype == torch.bool):
            index = None
        else:
            try:
                index = operator.index(token)
            except TypeError:
                index = None
        if index is None:
            raise InputError(f"{what}: {_short(token)} is not a token index (whole numbers "
                             f"in {valid})")
        selected.append(index)
    outside = [t for t in selected
               if t < 0 or (n_generated is not None and t >= n_generated)]
    if outside:
        shown = str(outside[:5])[:-1] + (", ...]" if len(outside) > 5 else "]")
        if n_generated is None:
            raise InputError(f"{what}: {shown} out of range (token indices count from 0, "
                             f"no wrapping from the end)")
        raise InputError(f"{what}: {shown} out of range (outside {valid}: the answer has "
                         f"{n_generated} generated token(s))")
    return selected


def checked_maps(method: str, maps: Any, tokens: Sequence[int], n_image: int) -> np.ndarray:
    """``maps`` as float32 ``(len(tokens), n_image)``, all finite, or an
    :class:`InvalidMapsError` in one line naming ``method`` and what is wrong (the shape,
    or the generated tokens whose maps hold NaN or infinite values)."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # past float32: inf, named below
            array = np.asarray(maps, dtype=np.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidMapsError(f"method {method!r} returned maps that are not an array of "
                               f"numbers ({type(maps).__name__}: "
                               f"{' '.join(str(exc).split())})") from exc
    expected = (len(tokens), n_image)
    if array.shape != expected:
        raise InvalidMapsError(f"method {method!r} returned maps of shape "
                               f"{tuple(array.shape)}, expected {expected} "
                               f"(explained tokens x image tokens)")
    finite = np.isfinite(array)
    bad = int(array.size - finite.sum())
    if bad:
        rows = np.flatnonzero(~finite.all(axis=1))
        where = [int(tokens[r]) for r in rows[:5]] + (["..."] if len(rows) > 5 else [])
        raise InvalidMapsError(f"method {method!r} returned {bad} NaN or infinite value(s) "
                               f"(at float32) in its maps, for generated token(s) "
                               f"{', '.join(map(str, where))}")
    return array


def _short(value: Any) -> str:
    if isinstance(value, np.generic):  # np.float64(1.5) -> 1.5
        value = value.item()
    text = " ".join(repr(value).split())
    return text[:40] + ("..." if len(text) > 40 else "")
