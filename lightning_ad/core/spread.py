"""Deterministic, evenly spread indices over ``range(count)`` (no randomness, no float rounding).

* :func:`spread_indices`: ``samples`` indices ``floor(i * count / samples)``.
* :func:`interleaved_split`: the indices of a share ``fraction`` of the items
  (every fifth item for ``0.2``), for a fraction given by a user as a decimal.
"""

from __future__ import annotations

from fractions import Fraction
from typing import List

from ..errors import ConfigurationError

__all__ = ["spread_indices", "interleaved_split"]


def spread_indices(count: int, samples: int) -> List[int]:
    """``samples`` indices evenly spread over ``range(count)``: ``floor(i * count / samples)``;
    all of them when ``samples >= count``. Integer arithmetic: exact for any size.

    >>> spread_indices(7, 2)
    [0, 3]
    >>> spread_indices(3, 5)
    [0, 1, 2]
    """
    if count < 0 or samples < 0:
        raise ValueError(f"spread_indices needs count >= 0 and samples >= 0, got {count} and {samples}")
    if samples >= count:
        return list(range(count))
    return [i * count // samples for i in range(samples)]


def interleaved_split(count: int, fraction: float) -> List[int]:
    """Positions ``floor(j / fraction)`` below ``count``: ``0.2`` takes 0, 5, 10, ...

    ``fraction`` is read as the decimal a user wrote (``0.2`` is 1/5, not the nearest
    binary float), through the closest fraction with a denominator up to 10**6.

    >>> interleaved_split(12, 0.2)
    [0, 5, 10]
    """
    if not 0 <= fraction < 1:
        raise ConfigurationError(f"split fraction {fraction!r} must lie in [0, 1)")
    if fraction == 0 or count == 0:
        return []
    exact = Fraction(fraction).limit_denominator(10**6)
    taken = []
    j = 0
    while (position := (j * exact.denominator) // exact.numerator) < count:
        taken.append(position)
        j += 1
    return taken
