"""Values read from files streamad did not just write (label files, MVTec LOCO configs, store
attributes), checked for their JSON type before use.

Python's conversions trust too much: ``bool("false")`` and ``bool("0")`` are True,
``int("5")`` is 5 and ``int(True)`` is 1, so a file edited by hand or written by another tool
could be read as the opposite of what it says. Each function here takes a value as parsed from
JSON and ``what`` (the file and key, for the message) and returns it typed, or raises
:class:`ValueError` in one line naming both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def checked(convert: Callable[[Any, str], T], value: Any, what: str, *, error: type[Exception], hint: str) -> T:
    """``convert(value, what)``, its refusal raised as ``error`` with ``hint`` (a ground-truth
    error for a label file, a store error for a store's attributes)."""
    try:
        return convert(value, what)
    except ValueError as exc:
        raise error(f"{exc}; hint: {hint}") from None


def flag(value: Any, what: str) -> bool:
    """``true``/``false``, or the numbers 0 and 1 (as label files write them).

    Example:
        >>> flag(1, "x"), flag(False, "x")
        (True, False)
        >>> flag("false", "the label of a.png in labels.json")
        Traceback (most recent call last):
        ...
        ValueError: expected the label of a.png in labels.json to be 0, 1, true or false, got 'false' (a string)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected {what} to be 0, 1, true or false, got {value!r}" + (" (a string)" if isinstance(value, str) else ""))


def flags(values: Any, what: str) -> np.ndarray:
    """A list (or array) of :func:`flag` values as a bool array."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
            raise ValueError(f"expected {what} to hold only 0 and 1, got {values.dtype} values such as {values.ravel()[:3].tolist()}")
        return values.astype(bool)
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ValueError(f"expected {what} to be a list of 0/1 labels, got {type(values).__name__}")
    return np.array([flag(v, f"{what} (item {i})") for i, v in enumerate(values)], bool)


def integer(value: Any, what: str, *, minimum: int | None = None) -> int:
    """A whole number (not a bool, not a string), at least ``minimum``.

    Example:
        >>> integer(3.0, "x")
        3
        >>> integer("5", "sources.clip.next_index in m.zarr")
        Traceback (most recent call last):
        ...
        ValueError: expected sources.clip.next_index in m.zarr to be a whole number, got '5'
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise ValueError(f"expected {what} to be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"expected {what} to be at least {minimum}, got {value!r}")
    return int(value)


def number(value: Any, what: str) -> float:
    """A finite number (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected {what} to be a finite number, got {value!r}")
    return float(value)


def text(value: Any, what: str) -> str:
    """A string."""
    if not isinstance(value, str):
        raise ValueError(f"expected {what} to be a string, got {value!r}")
    return value
