"""Calibration at fit: leave-one-out scores of the training images set the thresholds and scales.

Each training image is scored against the rest of the bank (a normal image the bank has not
seen). Which rows are scored, and which get maps, is :func:`leave_one_out_selection`;
:func:`learn_from_leave_one_out` scores them (split over processes, gathered in rank order)
and sets the level scales (``level_balance``, from :meth:`SpadeModel.balance_rows` first, since
the maps depend on them), the combined score's scales and the quantile thresholds on the model.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Tuple

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from ..core.positions import spread_positions
from ..core.radius import RadiusChoice
from ..core.spade import LeaveOneOut, SpadeModel
from ..core.thresholds import Thresholds, quantile_thresholds
from ..distributed import gather_rows
from .collect import scoring_rows
from .console import leave_one_out_plan, leave_one_out_summary, progress_bar

__all__ = ["leave_one_out_selection", "learn_from_leave_one_out", "decide_search_radius"]


def leave_one_out_selection(count: int, uses_maps: bool, samples: Optional[int],
                            image_samples: Optional[int]) -> Tuple[Tensor, Tensor]:
    """``(image, pixel)``: ``[count]`` bool masks over bank rows scored leave-one-out at fit.

    ``image``: the rows whose image scores set the image threshold and the combined score's
    scales; every row for DN2 (cheap), ``image_samples`` evenly spread rows (None: all) for a
    map-based score, whose every image score needs a map. ``pixel``: the ``samples`` evenly spread
    rows (None: all) whose maps set the pixel threshold.
    """
    def spread(limit: Optional[int]) -> Tensor:
        mask = torch.zeros(count, dtype=torch.bool)
        mask[spread_positions(count, count if limit is None else min(limit, count))] = True
        return mask

    return (spread(image_samples) if uses_maps else spread(None)), spread(samples)


def _level_scales(model: SpadeModel) -> str:
    return "level scales " + ", ".join(f"{v:.4g}" for v in model.level_scales.tolist())


def learn_from_leave_one_out(model: SpadeModel, hp: Any, rank: int, bar: bool, partial: bool, quantile: bool) -> None:
    """Score training images against the rest of the bank (rows split over processes, gathered in rank order)
    and learn from these normal scores the combined score's scales and, with ``threshold_method: quantile``,
    the thresholds at their quantiles. Rows and maps: :func:`leave_one_out_selection` (``threshold_samples``,
    ``image_threshold_samples``). ``bar``: show a progress bar of this process's maps."""
    count, started = model.bank_size, time.perf_counter()
    image, keep = leave_one_out_selection(count, model.uses_maps, hp.threshold_samples,
                                          hp.image_threshold_samples)
    samples, image_samples = int(keep.sum()), int(image.sum())
    scored = image | keep  # DN2 of these rows; with a map-based score, their maps too
    mapped = int(scored.sum()) if model.uses_maps else samples
    mine = scoring_rows(model, rank)
    if model.level_balance != "none":
        balance = model.balance_rows()
        moments = model.level_moments(mine[torch.isin(mine, balance.to(mine.device))])
        model.end_scoring()
        model.set_level_scales(gather_rows(moments.unsqueeze(0)).sum(dim=0))
        if not quantile and model.image_score != "combined":  # the level scales were all there was to learn
            return rank_zero_info(f"{_level_scales(model)} from leave-one-out maps of {len(balance)} training images")
    rank_zero_info(leave_one_out_plan(model.image_score, mapped, samples, count, image_samples))
    mine = mine[scored[mine]]
    with progress_bar(len(mine) if model.uses_maps else int(keep[mine].sum()), "leave-one-out maps", bar) as update:
        loo = model.leave_one_out(mine.to(model.bank.index.device), keep, progress=update)
    model.end_scoring()  # a sharded bank: serve the other processes' searches until all are done
    loo = LeaveOneOut(*(None if part is None else gather_rows(part) for part in loo))
    chosen = image.to(loo.rows.device)[loo.rows]
    loo = LeaveOneOut(loo.rows[chosen], loo.dn2[chosen], None if loo.map_part is None else loo.map_part[chosen], loo.maps)
    if model.image_score == "combined":
        model.learn_scales(loo)
    learned = quantile_thresholds(model.image_scores(loo.dn2, loo.map_part), loo.maps, hp.image_quantile,
                                  hp.pixel_quantile) if quantile else None
    model.set_thresholds(learned or Thresholds())
    scales = f"scales {float(model.dn2_scale):.6g}, {float(model.map_scale):.6g}" if model.image_score == "combined" else ""
    if model.level_balance != "none":
        scales = ", ".join(filter(None, [scales, _level_scales(model)]))
    rank_zero_info(leave_one_out_summary(learned, hp.image_quantile if quantile else None, hp.pixel_quantile,
                   image_samples, samples, mapped, time.perf_counter() - started, partial, scales))


def decide_search_radius(model: SpadeModel, rank: int) -> RadiusChoice:
    """Decide ``search_radius: auto`` (:mod:`lightning_ad.core.radius`): each process measures the rows of
    :meth:`SpadeModel.radius_rows` it scores, the evidence is gathered in bank row order (the same sum whatever
    the number of processes), and every process sets the same radius."""
    chosen = model.radius_rows().cpu()
    mine = scoring_rows(model, rank)
    mine = mine[torch.isin(mine, chosen)]
    evidence = model.radius_evidence(mine)
    rows = gather_rows(torch.cat([mine.double().unsqueeze(1), evidence], dim=1))
    rows = rows[rows[:, 0].argsort()]
    return model.set_search_radius(rows[:, 1:])
