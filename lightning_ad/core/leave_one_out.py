"""Leave-one-out scoring of the bank's own rows: each training image scored against the others, and what is
learned from those scores (the level scales of ``level_balance``, the ``combined`` score's scales). An image is
left out with its views (``bank_augment``): :meth:`LeaveOneOutScoring.nearest_rows`.

:class:`LeaveOneOutScoring` is a part of :class:`~lightning_ad.core.spade.SpadeModel` (a mixin: it uses the
model's bank, ``nearest_images``, ``level_maps`` and buffers); :mod:`lightning_ad.core.calibration` calls it.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from ..bank import check_finite
from ..errors import ConfigurationError
from .knn import slab_knn
from .levels import balance_scales, level_factors, level_moments
from .records import Features, LeaveOneOut, SpadeOutput
from .spread import spread_indices
from .views import row_groups

__all__ = ["LeaveOneOutScoring", "LEVEL_BALANCE_IMAGES"]

#: Training images (evenly spread over the bank) whose leave-one-out maps set the level scales of ``level_balance``.
LEVEL_BALANCE_IMAGES = 32


class LeaveOneOutScoring:
    """Leave-one-out scores of bank rows, and the scales learned from them (see the module docstring)."""

    def nearest_rows(self, pooled: Tensor, k: int, exclude: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """The ``k`` nearest bank rows of pooled vectors ``[B, D]``: squared distances and rows ``[B, k]``, ascending.
        ``exclude`` (``[B]`` bank rows): each query's own image and its views are not among them."""
        views = self.views_per_image if exclude is not None else 0
        if not views:
            found = slab_knn(pooled.float(), self.bank.pooled, k, chunk_bytes=self.chunk_bytes, exclude=exclude)
            return found.distances, found.indices
        found = slab_knn(pooled.float(), self.bank.pooled, min(k + views + 1, len(self.bank)), chunk_bytes=self.chunk_bytes)
        groups, exclude = row_groups(self.bank.index), exclude.to(self.bank.index.device)
        own = (groups[found.indices] == groups[exclude.clamp_min(0)].unsqueeze(1)) & (exclude >= 0).unsqueeze(1)
        keep = torch.argsort(own.to(torch.int8), dim=1, stable=True)[:, :k]  # the nearest rows of other images, in order
        return found.distances.gather(1, keep), found.indices.gather(1, keep)

    def learn_scales(self, loo: "LeaveOneOut") -> None:
        """Set ``dn2_scale`` and ``map_scale`` to the medians of leave-one-out DN2 and map maxima
        (1 where a median is 0: identical training images)."""
        if loo.map_part is None:
            raise ValueError("learn_scales needs the map statistic of the leave-one-out scores")
        for buffer, values in ((self.dn2_scale, loo.dn2), (self.map_scale, loo.map_part)):
            median = float(values.double().quantile(0.5))
            buffer.fill_(median if median > 0 else 1.0)

    def spread_rows(self, samples: int, count: Optional[int] = None) -> Tensor:
        """``[n]`` ``samples`` bank rows evenly spread over the first ``count`` (default: all), on the bank's device."""
        count = self.bank_size if count is None else count
        return torch.tensor(spread_indices(count, min(samples, count)), dtype=torch.long, device=self.bank.index.device)

    def balance_rows(self) -> Tensor:
        """``[n]`` bank rows whose leave-one-out maps set the level scales: ``LEVEL_BALANCE_IMAGES`` evenly spread."""
        return self.spread_rows(LEVEL_BALANCE_IMAGES)

    def level_moments(self, rows: Tensor, batch_size: int = 8) -> Tensor:
        """``[L, 3]`` moments (:func:`~lightning_ad.core.levels.level_moments`) of the leave-one-out level maps of
        bank ``rows``; those of several processes add up."""
        self.require_fitted()
        moments = torch.zeros(len(self.layers), 3, dtype=torch.float64, device=self.bank.index.device)
        for chunk in rows.to(self.bank.index.device).split(batch_size):
            moments += level_moments(self._left_out_level_maps(chunk)).to(moments.device)
        return moments

    def _left_out_level_maps(self, rows: Tensor) -> List[Tensor]:
        """Level maps of bank ``rows``, each scored against the rest of the bank (:meth:`level_maps`)."""
        _, neighbours = self.nearest_images(self.bank.pooled[rows].float(), exclude=rows)
        return self.level_maps(self.bank.pyramid_of(rows), neighbours)

    def set_level_scales(self, moments: Tensor) -> None:
        """Set ``level_scales`` from the summed :meth:`level_moments` of the training images (``level_balance``)."""
        self.level_scales.copy_(balance_scales(moments, self.level_balance).to(self.level_scales))

    def level_factors(self) -> Optional[List[float]]:
        """Factors of the levels in the combined map, one per level (None: the plain mean)."""
        if self.level_balance == "none" and self.level_weights is None:
            return None
        scales = torch.ones_like(self.level_scales) if self.level_balance == "none" else self.level_scales
        if not bool(torch.isfinite(scales).all()):
            raise ConfigurationError(
                f"level_balance={self.level_balance!r} needs the scales of the levels, learned from leave-one-out maps "
                f"of the training images when the bank is fitted (at least max(image_k, gallery_k) + 1 images): fit again."
            )
        return level_factors(self.level_weights, scales.cpu()).tolist()

    def leave_one_out(self, rows: Optional[Tensor] = None, keep: Optional[Tensor] = None, batch_size: int = 8,
                      progress: Optional[Callable[[int], None]] = None) -> LeaveOneOut:
        """Leave-one-out scores of bank ``rows`` (default: all) against the rest of the bank.

        DN2 of every row; with a map-based image score, every row's map is computed (in
        chunks of ``batch_size``) for its statistic. ``keep`` (``[N]`` bool over bank rows)
        selects the rows whose maps are returned. ``progress(n)`` is called after each chunk.
        """
        self.require_fitted()
        device = self.bank.index.device
        rows = torch.arange(self.bank_size, device=device) if rows is None else rows.to(device)
        keep = torch.zeros(self.bank_size, dtype=torch.bool, device=device) if keep is None else keep.to(device)
        dn2 = self.nearest_images(self.bank.pooled[rows].float(), exclude=rows)[0]
        mapped = rows if self.uses_maps else rows[keep[rows]]
        parts, maps = [], []
        for chunk in mapped.split(batch_size):
            chunk_maps = self.combine(self._left_out_level_maps(chunk), self.image_size)
            check_finite(chunk_maps, "anomaly maps")
            if self.uses_maps:
                parts.append(self.map_part(chunk_maps))
            maps.append(chunk_maps[keep[chunk]])
            if progress is not None:
                progress(len(chunk))
        part = (torch.cat(parts) if parts else dn2.new_zeros(0)) if self.uses_maps else None
        maps = torch.cat(maps) if maps else torch.zeros(0, *self.image_size, device=device)
        return LeaveOneOut(rows, dn2, part, maps)

    def leave_one_out_image_scores(self) -> Tensor:
        """``[N]`` image score of every training image against the rest of the bank."""
        if not self.uses_maps:
            rows = torch.arange(self.bank_size, device=self.bank.index.device)
            return self.nearest_images(self.bank.pooled.float(), exclude=rows)[0]
        loo = self.leave_one_out()
        return self.image_scores(loo.dn2, loo.map_part)

    def score_bank(self, rows: Optional[Tensor] = None, batch_size: int = 8) -> SpadeOutput:
        """Leave-one-out scores of bank rows (training images) against the rest of the bank.

        ``rows``: bank rows to score (default: all). Maps are at the bank's input size.
        """
        self.require_fitted()
        if rows is None:
            rows = torch.arange(self.bank_size, device=self.bank.index.device)
        if not bool(self.bank.held()[rows].all()):
            raise ValueError("score_bank: a sharded bank scores only the rows this process holds (bank.held())")
        scores, maps = [], []
        for chunk in rows.split(batch_size):
            features = Features(self.bank.pyramid_of(chunk), self.bank.pooled[chunk].float())
            out = self.score_features(features, self.image_size, exclude=chunk)
            scores.append(out.image_scores)
            maps.append(out.anomaly_maps)
        self.end_scoring()
        if not scores:
            return SpadeOutput(torch.zeros(0), torch.zeros(0, *self.image_size))
        return SpadeOutput(torch.cat(scores), torch.cat(maps))
