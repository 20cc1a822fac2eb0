"""Evenly spread indices (:mod:`lightning_ad.core.spread`): exact for any size, decimals read as written."""

from __future__ import annotations

import math

import pytest

from lightning_ad.core.spread import interleaved_split, spread_indices
from lightning_ad.errors import ConfigurationError


def test_spread_indices_matches_the_formula_for_small_sizes():
    for count in range(0, 40):
        for samples in range(0, 45):
            expected = list(range(count)) if samples >= count else [math.floor(i * count / samples) for i in range(samples)]
            assert spread_indices(count, samples) == expected, (count, samples)


def test_spread_indices_examples():
    assert spread_indices(7, 2) == [0, 3]
    assert spread_indices(10, 4) == [0, 2, 5, 7]
    assert spread_indices(3, 5) == [0, 1, 2]
    assert spread_indices(5, 0) == []


def test_spread_indices_is_exact_beyond_a_million_items():
    count, samples = 10**7 + 3, 7
    got = spread_indices(count, samples)
    assert got == [i * count // samples for i in range(samples)]
    assert got == [0, 1428571, 2857143, 4285715, 5714287, 7142859, 8571431]
    # near 2**53 a float product rounds; the integer one does not
    big = 2**60 + 1
    assert spread_indices(big, 3) == [0, big // 3, 2 * big // 3]
    assert spread_indices(big, 3)[2] == 768614336404564651


def test_spread_indices_refuses_negative_sizes():
    with pytest.raises(ValueError, match="count >= 0"):
        spread_indices(-1, 2)


@pytest.mark.parametrize(
    "count,fraction,expected",
    [
        (12, 0.2, [0, 5, 10]),
        (11, 0.2, [0, 5, 10]),
        (10, 0.2, [0, 5]),
        (9, 0.25, [0, 4, 8]),
        (8, 0.25, [0, 4]),
        (10, 0.3333333, [0, 3, 6, 9]),  # read as 1/3
        (40, 0.7, [0, 1, 2, 4, 5, 7, 8, 10, 11, 12, 14, 15, 17, 18, 20, 21, 22, 24, 25, 27, 28, 30, 31, 32, 34, 35, 37, 38]),
        (7, 0.5, [0, 2, 4, 6]),
        (5, 0.0, []),
        (0, 0.2, []),
    ],
)
def test_interleaved_split(count, fraction, expected):
    assert interleaved_split(count, fraction) == expected


def test_interleaved_split_reads_decimals_as_written():
    # 0.1 * 3 == 0.30000000000000004 in binary floats; as the decimal 3/10 every position is floor(j * 10 / 3)
    assert interleaved_split(31, 0.3) == [0, 3, 6, 10, 13, 16, 20, 23, 26, 30]
    assert interleaved_split(952, 0.2)[-1] == 950 and len(interleaved_split(952, 0.2)) == 191  # Magnetic Tile split


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_interleaved_split_refuses_fractions_outside_zero_one(fraction):
    with pytest.raises(ConfigurationError, match=r"must lie in \[0, 1\)"):
        interleaved_split(10, fraction)
