"""Values read from a run's files, checked one by one: a number where a number belongs, else None.

A results file written by another program (or by hand) may hold a string, a boolean, NaN, an
infinity or a number beyond a float where a number should be; the monitor shows a gap there and
never fails on it.  :func:`clean` makes any answer JSON-safe (numpy types to Python, non-finite to None).
"""

from __future__ import annotations

import math

import numpy as np


def clean(value):
    """``value`` with numpy types turned into Python ones, non-finite floats into None and lone surrogates in
    strings into U+FFFD (JSON-safe, and encodable as UTF-8: a folder name or an argument that was not UTF-8
    reaches Python as surrogates, and one made the whole run list answer 500)."""
    if isinstance(value, str):
        return utf8(value)
    if isinstance(value, dict):
        return {utf8(str(k)): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biu":
            return value.tolist()
        if value.dtype.kind == "f":     # a volume's slices: 10^5 values, one pass instead of one call each
            finite = np.isfinite(value)
            return value.tolist() if finite.all() else np.where(finite, value.astype(object), None).tolist()
        return clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def utf8(value: str) -> str:
    """``value`` with each lone surrogate (not encodable as UTF-8) replaced by U+FFFD."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)


def number(value) -> float | None:
    """A finite number as float, else None (strings, booleans, infinities, NaN, lists, numbers beyond float)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def integer(value) -> int | None:
    """A whole number (an int, or a float with no fraction) within +-2**53, else None."""
    value = number(value)
    return int(value) if value is not None and value.is_integer() and abs(value) <= 2 ** 53 else None


def numbers(values) -> list:
    """A list of numbers (None for each entry that is not one); [] when ``values`` is not a list."""
    return [number(v) for v in values] if isinstance(values, list) else []


def text(value) -> str | None:
    return value if isinstance(value, str) else None
