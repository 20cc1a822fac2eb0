"""Argument checks, one helper per kind. Each raises :class:`~lightning_ad.errors.ConfigurationError`
naming the setting, its value and what is accepted."""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Tuple

from .errors import ConfigurationError

__all__ = [
    "positive_int", "non_negative_int", "fraction", "positive_number", "non_negative_number", "one_of", "k_at_most",
    "levels", "level_weights"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, optional: bool = False) -> Optional[int]:
    """``value`` if it is an integer >= 1 (or None when ``optional``).

    >>> positive_int("image_k", 5)
    5
    """
    if value is None and optional:
        return None
    if not _is_int(value) or value < 1:
        raise ConfigurationError(f"{name}={value!r} must be a positive integer" + (" or null" if optional else ""))
    return value


def non_negative_int(name: str, value: Any, *, optional: bool = False) -> Optional[int]:
    """``value`` if it is an integer >= 0 (or None when ``optional``)."""
    if value is None and optional:
        return None
    if not _is_int(value) or value < 0:
        raise ConfigurationError(f"{name}={value!r} must be an integer >= 0" + (" or null" if optional else ""))
    return value


def fraction(name: str, value: Any, *, low_open: bool = True, high_open: bool = False) -> float:
    """``value`` as a float in (0, 1] (default), [0, 1) (``low_open=False, high_open=True``), ...

    >>> fraction("image_quantile", 0.95)
    0.95
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ConfigurationError(f"{name}={value!r} must lie in {interval}")
    return float(value)


def positive_number(name: str, value: Any, *, optional: bool = False, unit: str = "") -> Optional[float]:
    """``value`` as a finite float > 0 (or None when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"{name}={value!r} must be a positive number" + (f" ({unit})" if unit else "") + (" or null" if optional else "")
        )
    return float(value)


def non_negative_number(name: str, value: Any, *, unit: str = "") -> float:
    """``value`` as a finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name}={value!r} must be a finite number >= 0" + (f" ({unit})" if unit else ""))
    return float(value)


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``.

    >>> one_of("threshold_method", "f1", ("quantile", "f1"))
    'f1'
    """
    choices = tuple(choices)
    if value not in choices:
        raise ConfigurationError(f"{name}={value!r}: choose one of {', '.join(repr(c) for c in choices)}")
    return value


def k_at_most(name: str, k: int, available: int, what: str = "training images") -> int:
    """``k`` if at most ``available``; else an error that says how to fix it.

    >>> k_at_most("image_k", 3, 9)
    3
    """
    if k > available:
        raise ConfigurationError(
            f"model {name}={k} is larger than the {available} {what}; set --model.{name} to at most {available}."
        )
    return k


def levels(name: str, value: Any, known: Iterable[int]) -> Tuple[int, ...]:
    """``value`` as a sorted tuple of distinct pyramid levels among ``known`` (may be empty).

    >>> levels("aggregate_levels", [2, 1], (1, 2, 3))
    (1, 2)
    """
    known = sorted(known)
    items = list(value) if isinstance(value, (list, tuple)) else None
    if items is None or not all(_is_int(v) and v in known for v in items) or len(set(items)) != len(items):
        raise ConfigurationError(f"{name}={value!r} must be a list of distinct pyramid levels among {known} (or [])")
    return tuple(sorted(items))


def level_weights(name: str, value: Any, count: int) -> Optional[Tuple[float, ...]]:
    """``value`` as ``count`` finite weights >= 0 with a positive sum, one per level (None: equal weights).

    >>> level_weights("level_weights", [1, 2, 1], 3)
    (1.0, 2.0, 1.0)
    """
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else []
    ok = len(items) == count and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                                     for v in items)
    if not ok or sum(items) <= 0:
        raise ConfigurationError(f"{name}={value!r} must be {count} numbers >= 0 (one per entry of layers) with a positive "
                                 "sum, or null for equal weights")
    return tuple(float(v) for v in items)
