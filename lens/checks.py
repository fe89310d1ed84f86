"""Argument checks for the public API: a wrong type is one LensError line naming the argument.

Python would otherwise take ``prepend_bos="yes"`` as true, ``targets=b" the"`` as four
token ids and ``seed=2**70`` as an overflow deep inside numpy; people need to hear which
argument was wrong and what it accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lens.errors import LensError


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def whole_number(value: object, name: str, least: int = 0, most: int | None = None) -> int:
    """``value`` as an int in [least, most], refusing bools, floats and strings."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise LensError(f"{name} must be a whole number, not {type(value).__name__} {_shown(value)}.")
    if value < least or (most is not None and value > most):
        bounds = f"from {least:,} to {most:,}" if most is not None else f"of at least {least:,}"
        raise LensError(f"{name} must be a whole number {bounds}, not {_shown(value)}.")
    return int(value)


def flag(value: object, name: str, *, optional: bool = False) -> bool | None:
    """A real bool (or None where ``optional``): ``"yes"`` and ``1`` are refused, not read as true."""
    if value is None and optional:
        return None
    if not isinstance(value, (bool, np.bool_)):
        accepted = "True, False or None" if optional else "True or False"
        raise LensError(f"{name} must be {accepted}, not {type(value).__name__} {_shown(value)}.")
    return bool(value)


def optional_text(value: object, name: str) -> str | None:
    """A string or None (an API key, a device name)."""
    if value is not None and not isinstance(value, str):
        raise LensError(f"{name} must be a string or None, not {type(value).__name__}.")
    return value


def callback(value: object, name: str) -> Callable | None:
    if value is not None and not callable(value):
        raise LensError(f"{name} must be a function or None, not {type(value).__name__}.")
    return value  # type: ignore[return-value]


def listed(value: object, name: str, single: type | tuple[type, ...], accepts: str) -> list:
    """One item (of type ``single``) or a list or tuple of them, as a list; bytes and sets are refused.

    A single string is one item: iterating " Paris" would give its characters, and
    iterating b" the" its byte values.
    """
    if isinstance(value, single) and not isinstance(value, bool):
        return [value]
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, (Sequence, np.ndarray)):
        raise LensError(f"{name} must be {accepts}, not {type(value).__name__}.")
    return list(value)
