"""``search_radius: auto``: how far the parts move between good images, decided at fit from them alone.

A window (:mod:`lightning_ad.core.windowed`) can only find a farther nearest feature than the search
over every position; for parts that stay in place it finds about the same one, for parts that move
it misses the matching place and every good position looks a little anomalous. At fit, a sample of
training images (:data:`AUTO_IMAGES`, evenly spread over the bank) is scored against the rest of the
bank, leaving each one out: at one level (the used level whose stride is nearest 8 pixels; 28 x 28
positions for a 224 x 224 input) every position's Euclidean distance to its nearest feature among the
``gallery_k`` nearest training images is found over every position and within each candidate radius.
The *inflation* of a radius is the ratio of the mean distances, window over every position (>= 1).
The choice is the smallest candidate whose inflation is at most ``1 + AUTO_TOLERANCE``; where none is,
every position (``search_radius: null``).

Candidates are 8, 16, 32, ... pixels, as long as the window's products at the finest used level stay
under a sixteenth of the search over every position's (:func:`radius_candidates`): 8 and 16 px at
224 x 224, where a 32-px window already tests as slowly as every position (MPDD, K = 50: 35.9 s against
30.0 s for 107 images), and 32 px from 448 x 448 on.

Example:
    >>> import torch
    >>> choice = choose_radius(torch.tensor([104.0, 102.0, 101.0, 100.0]), (8.0, 16.0, 32.0), level=2, images=16)
    >>> choice.radius, [round(v, 2) for v in choice.inflation]
    (8.0, [1.04, 1.02, 1.01])
    >>> choose_radius(torch.tensor([130.0, 110.0, 106.0, 100.0]), (8.0, 16.0, 32.0), 2, 16).radius is None
    True
"""

from __future__ import annotations

import math
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .backbones import LEVEL_STRIDES
from .windowed import window_cells, window_products

__all__ = ["AUTO", "AUTO_TOLERANCE", "AUTO_IMAGES", "RadiusChoice", "radius_candidates", "evidence_level", "choose_radius",
           "RadiusDecision"]

#: The ``search_radius`` value that decides the radius at fit.
AUTO = "auto"
#: Largest accepted rise of the good images' mean nearest-feature distance in a window (5 %).
AUTO_TOLERANCE = 0.05
#: Training images whose leave-one-out distances decide the radius.
AUTO_IMAGES = 16
#: Smallest candidate radius, in input pixels (the candidates double from it).
_FIRST_RADIUS = 8.0
#: A candidate window's products are at most this fraction of the search over every position's.
_COST_LIMIT = 1 / 16


class RadiusChoice(NamedTuple):
    """What ``search_radius: auto`` decided: ``radius`` in input pixels (None: every position), the
    ``candidates`` tried with their ``inflation`` (mean window distance over every position's), the
    pyramid ``level`` measured and the number of training ``images``."""

    radius: Optional[float]
    candidates: Tuple[float, ...]
    inflation: Tuple[float, ...]
    level: int
    images: int

    def describe(self) -> str:
        """One line: the choice and its evidence."""
        if not self.images:
            return (f"search_radius auto: {self.radius:g} px, the smallest candidate: one training image leaves nothing "
                    "to compare with (set --model.search_radius for parts that move)")
        chosen = "every position" if self.radius is None else f"{self.radius:g} px"
        tried = ", ".join(f"{r:g} px +{100 * (v - 1):.1f} %" for r, v in zip(self.candidates, self.inflation))
        return (f"search_radius auto: {chosen} (good images' nearest-feature distance against every position: {tried}; "
                f"limit +{100 * AUTO_TOLERANCE:g} %; level {self.level}, {self.images} training images left out)")

    def as_dict(self) -> Dict[str, Any]:
        """JSON-ready record (the checkpoint's ``search_radius`` entry)."""
        return {"setting": AUTO, "radius": self.radius, "candidates": list(self.candidates),
                "inflation": [round(v, 6) for v in self.inflation], "tolerance": AUTO_TOLERANCE, "level": self.level,
                "images": self.images}


def radius_candidates(finest_grid: Tuple[int, int], finest_stride: int) -> Tuple[float, ...]:
    """Radii 8, 16, 32, ... pixels whose window at the finest level (``finest_grid`` cells of ``finest_stride``
    pixels) costs at most :data:`_COST_LIMIT` of the products of the search over every position (at least 8).

    >>> radius_candidates((56, 56), 4), radius_candidates((112, 112), 4)
    ((8.0, 16.0), (8.0, 16.0, 32.0))
    """
    positions = finest_grid[0] * finest_grid[1]
    radii, radius = [_FIRST_RADIUS], 2 * _FIRST_RADIUS
    while True:
        cells = window_cells(radius, finest_stride)
        if window_products(cells, *finest_grid) > positions * _COST_LIMIT:
            return tuple(radii)
        radii.append(radius)
        radius *= 2


def evidence_level(layers: Sequence[int]) -> int:
    """Index into ``layers`` of the level whose stride is nearest 8 pixels (the finer on a tie).

    >>> evidence_level((1, 2, 3)), evidence_level((1, 3)), evidence_level((3,))
    (1, 0, 0)
    """
    return min(range(len(layers)), key=lambda i: (abs(LEVEL_STRIDES[layers[i]] - 8), LEVEL_STRIDES[layers[i]]))


def choose_radius(sums: Tensor, candidates: Sequence[float], level: int, images: int) -> RadiusChoice:
    """The choice from ``sums`` ``[len(candidates) + 1]``: summed nearest-feature distances within each candidate
    radius, then over every position (the same positions for each)."""
    sums = sums.double().cpu()
    reference = float(sums[-1])
    if not images:  # nothing measured: the smallest candidate
        return RadiusChoice(float(candidates[0]), tuple(float(r) for r in candidates), (), int(level), 0)
    inflation = tuple(float(s) / reference if reference > 0 else 1.0 for s in sums[:-1].tolist())
    radius = next((float(r) for r, v in zip(candidates, inflation) if v <= 1 + AUTO_TOLERANCE + 1e-12), None)
    return RadiusChoice(radius, tuple(float(r) for r in candidates), inflation, int(level), int(images))


def encode_radius(radius: Optional[float]) -> float:
    """A decided radius as the value of a float buffer (``inf``: every position)."""
    return math.inf if radius is None else float(radius)


def decode_radius(value: float) -> Optional[float]:
    """The radius held in a float buffer by :func:`encode_radius` (NaN: not decided, raises ``ValueError``)."""
    if math.isnan(value):
        raise ValueError("the search radius is not decided")
    return None if math.isinf(value) else float(value)


class RadiusDecision:
    """The part of :class:`~lightning_ad.core.spade.SpadeModel` that decides ``search_radius: auto`` (a mixin: it
    uses the model's bank, levels, ``level_search`` and ``decided_radius`` buffer)."""

    def radius_rows(self) -> Tensor:
        """``[n]`` bank rows whose leave-one-out distances decide ``search_radius: auto``: ``AUTO_IMAGES`` evenly spread
        (none in a bank of one image: it has nothing to be compared with)."""
        return self.spread_rows(AUTO_IMAGES, self.bank_size if self.bank_size > 1 else 0)

    @property
    def radius_candidates(self) -> Tuple[float, ...]:
        """Radii that ``search_radius: auto`` chooses among (:func:`~lightning_ad.core.radius.radius_candidates`)."""
        return radius_candidates(self.bank.level_shape(0), LEVEL_STRIDES[self.layers[0]])

    def radius_evidence(self, rows: Tensor) -> Tensor:
        """``[R, len(radius_candidates) + 1]`` float64: for each of the bank ``rows`` ``[R]``, the sum over its
        positions at the :func:`~lightning_ad.core.radius.evidence_level` of the Euclidean distance to the nearest
        feature of its ``gallery_k`` nearest other training images, within each candidate radius, then over every
        position. With a sharded bank every process calls it, with the rows it holds (maybe none)."""
        self.require_fitted()
        rows = rows.to(self.bank.index.device)
        slot = evidence_level(self.layers)
        stride = LEVEL_STRIDES[self.layers[slot]]
        if self.bank_size < 2:  # a bank of one image: nothing to compare it with
            return torch.zeros(0, len(self.radius_candidates) + 1, dtype=torch.float64)
        k = self.ks_in_use(left_out=True)[1]
        neighbours = self.nearest_rows(self.bank.pooled[rows].float(), k, exclude=rows)[1]
        fmap = self.bank.pyramid_of(rows)[slot]
        sums = []
        for radius in (*self.radius_candidates, None):
            dist = self.level_search(slot, fmap, neighbours, window_cells(radius, stride), 1)
            sums.append(dist.double().clamp_min(0).sqrt().sum(dim=(1, 2)))
        return torch.stack(sums, dim=1).cpu()

    def set_search_radius(self, evidence: Tensor) -> RadiusChoice:
        """Decide ``search_radius: auto`` from the :meth:`radius_evidence` rows of the training images (in bank
        row order: the sum is then the same whatever the number of processes)."""
        choice = choose_radius(evidence.sum(dim=0), self.radius_candidates, self.layers[evidence_level(self.layers)],
                               int(evidence.shape[0]))
        self.decided_radius.fill_(encode_radius(choice.radius))
        self.radius_choice = choice
        return choice
