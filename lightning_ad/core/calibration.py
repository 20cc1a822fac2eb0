"""What fit learns from the good images once the bank is built, in one place for every path that builds or
grows a bank (the LightningModule's fit, :meth:`SpadeModel.fit_bank`, ``Detector.add_normal``, the server).

In order:

1. ``search_radius: auto``: decided from leave-one-out distances of spread training images
   (:mod:`lightning_ad.core.radius`).
2. ``level_balance``'s level scales and the ``combined`` score's scales, from leave-one-out scores.
3. The thresholds in use: set by hand (kept as given), or learned at quantiles of normal scores.
   The normal scores are leave-one-out scores of the training images (each scored against the others);
   a bank of fewer than ``few_shot_below`` images (default :data:`FEW_SHOT_IMAGES`) adds the scores of :data:`~lightning_ad.core.views.THRESHOLD_VIEWS`
   of each image (small turns), scored against the other images, or against the bank itself when it holds a
   single image (see docs: thresholds).

``model`` is a :class:`~lightning_ad.core.spade.SpadeModel` throughout (not imported: ``SpadeModel.fit_bank`` and
``add_images`` call this module). Rows are split over processes and gathered in bank-row order, so every process learns the same values
whatever their number. :func:`calibrate` returns the record that the checkpoint keeps (``thresholds``).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..distributed import gather_rows, rank_and_world
from ..errors import ConfigurationError
from .radius import AUTO, RadiusChoice
from .records import LeaveOneOut
from .spread import spread_indices
from .thresholds import Thresholds, quantile_threshold
from .views import THRESHOLD_VIEWS, views_of

__all__ = ["CalibrationSettings", "FEW_SHOT_IMAGES", "calibrate", "decide_search_radius", "leave_one_out_selection",
           "scoring_rows", "thresholds_note"]

#: Default of ``few_shot_below``: banks of fewer images than this learn their thresholds from views of the images too
#: (and keep the images).
FEW_SHOT_IMAGES = 32


class CalibrationSettings(NamedTuple):
    """How thresholds are set. ``learn``: at quantiles of normal scores (``threshold_method: quantile``);
    ``image_threshold`` / ``pixel_threshold``: set by hand (raw scores; None: learned, or left as they are
    without ``learn``); ``few_shot_below``: banks of fewer images add the scores of views of their images
    (0: never)."""

    learn: bool = True
    image_quantile: float = 0.95
    pixel_quantile: float = 0.999
    threshold_samples: Optional[int] = 128
    image_threshold_samples: Optional[int] = 1000
    image_threshold: Optional[float] = None
    pixel_threshold: Optional[float] = None
    few_shot_below: int = FEW_SHOT_IMAGES

    @classmethod
    def from_hparams(cls, hp: Any, learn: Optional[bool] = None) -> "CalibrationSettings":
        """From a ``Spade`` module's (or a checkpoint's) hyper-parameters."""
        get = hp.get if isinstance(hp, dict) else lambda name, default=None: getattr(hp, name, default)
        return cls(learn=(get("threshold_method", "quantile") == "quantile") if learn is None else learn,
                   image_quantile=get("image_quantile", 0.95), pixel_quantile=get("pixel_quantile", 0.999),
                   threshold_samples=get("threshold_samples", 128), image_threshold_samples=get("image_threshold_samples", 1000),
                   image_threshold=get("image_threshold"), pixel_threshold=get("pixel_threshold"),
                   few_shot_below=get("few_shot_below", FEW_SHOT_IMAGES))


def scoring_rows(model: Any, rank: int) -> Tensor:
    """The bank rows this process scores leave-one-out: every P-th row, or, with a sharded bank, the rows it holds."""
    _, processes = rank_and_world()
    if model.bank.sharding == "sharded" and processes > 1:  # the training images' rows it holds (not their views)
        return model.bank.held().cpu()[: model.bank_size].nonzero().flatten()
    return torch.arange(model.bank_size)[rank::processes]


def leave_one_out_selection(count: int, uses_maps: bool, samples: Optional[int],
                            image_samples: Optional[int]) -> Tuple[Tensor, Tensor]:
    """``(image, pixel)``: ``[count]`` bool masks over bank rows scored leave-one-out.

    ``image``: the rows whose image scores set the image threshold and the combined score's
    scales; every row for DN2 (cheap), ``image_samples`` evenly spread rows (None: all) for a
    map-based score, whose every image score needs a map. ``pixel``: the ``samples`` evenly spread
    rows (None: all) whose maps set the pixel threshold.
    """
    def spread(limit: Optional[int]) -> Tensor:
        mask = torch.zeros(count, dtype=torch.bool)
        mask[spread_indices(count, count if limit is None else min(limit, count))] = True
        return mask

    return (spread(image_samples) if uses_maps else spread(None)), spread(samples)


def decide_search_radius(model: Any) -> RadiusChoice:
    """Decide ``search_radius: auto``: each process measures the rows of :meth:`SpadeModel.radius_rows` it scores,
    the evidence is gathered in bank row order, and every process sets the same radius."""
    rank, _ = rank_and_world()
    chosen = model.radius_rows().cpu()
    mine = scoring_rows(model, rank)
    mine = mine[torch.isin(mine, chosen)]
    evidence = model.radius_evidence(mine)
    rows = gather_rows(torch.cat([mine.double().unsqueeze(1), evidence], dim=1))
    rows = rows[rows[:, 0].argsort()]
    return model.set_search_radius(rows[:, 1:])


def _view_scores(model: Any, images: Tensor, batch_size: int = 8) -> LeaveOneOut:
    """Scores of the :data:`THRESHOLD_VIEWS` of the bank's images ``[n, 3, H, W]`` (bank row order): each view
    against the other images, or against the bank itself when it holds one image. Every process scores all of
    them (a few-shot bank is small); ``rows``: the source row of each view."""
    device = model.bank.index.device
    views = views_of(images, THRESHOLD_VIEWS)
    rows = torch.arange(images.shape[0], device=device).repeat_interleave(len(THRESHOLD_VIEWS))
    alone = model.bank_size < 2
    dn2, parts, maps = [], [], []
    for chunk, source in zip(views.split(batch_size), rows.split(batch_size)):
        features = model.extract(chunk.to(device))
        scores, neighbours = model.nearest_images(features.pooled, exclude=None if alone else source)
        chunk_maps = model.combine(model.level_maps(features.pyramid, neighbours), model.image_size)
        dn2.append(scores)
        parts.append(model.map_part(chunk_maps) if model.uses_maps else None)
        maps.append(chunk_maps)
    part = torch.cat(parts) if model.uses_maps else None
    return LeaveOneOut(rows, torch.cat(dn2), part, torch.cat(maps))


def _leave_one_out(model: Any, settings: CalibrationSettings, progress: Optional[Callable[[int, str], Any]]
                   ) -> Tuple[LeaveOneOut, int]:
    """Leave-one-out scores of the selected rows, gathered in bank-row order (only the image rows kept),
    and the number of maps computed."""
    rank, _ = rank_and_world()
    image, keep = leave_one_out_selection(model.bank_size, model.uses_maps, settings.threshold_samples,
                                          settings.image_threshold_samples)
    scored = image | keep
    mine = scoring_rows(model, rank)
    mine = mine[scored[mine]]
    total = len(mine) if model.uses_maps else int(keep[mine].sum())
    with (progress(total, "leave-one-out maps") if progress is not None else nullcontext(lambda n: None)) as update:
        loo = model.leave_one_out(mine.to(model.bank.index.device), keep, progress=update)
    model.end_scoring()  # a sharded bank: serve the other processes' searches until all are done
    loo = LeaveOneOut(*(None if part is None else gather_rows(part) for part in loo))
    chosen = image.to(loo.rows.device)[loo.rows]
    mapped = int(scored.sum()) if model.uses_maps else int(keep.sum())
    return LeaveOneOut(loo.rows[chosen], loo.dn2[chosen], None if loo.map_part is None else loo.map_part[chosen], loo.maps), mapped


def calibrate(model: Any, settings: CalibrationSettings, *, say: Callable[[str], Any] = print,
              progress: Optional[Callable[[int, str], Any]] = None, decide_radius: bool = True) -> Dict[str, Any]:
    """Learn from the bank of ``model`` what fit learns (module docstring); returns the thresholds' record.

    ``say``: where the one-line reports go. ``progress(total, what)``: a context manager yielding ``update(n)``
    (a progress bar), or None. ``decide_radius``: decide ``search_radius: auto`` afresh (fit), or keep a decision.
    Collective under several processes: every process calls it.
    """
    model.require_fitted()
    started, count = time.perf_counter(), model.bank_size
    image_k, gallery_k = model.image_k, model.gallery_k
    rows, views = len(model.bank), model.views_per_image
    if max(image_k, gallery_k) >= rows:
        left = f"{rows - 1 - views} leave-one-out" if count > 1 else "no leave-one-out score: the bank holds one image"
        say(f"image_k={image_k} and gallery_k={gallery_k} with {model.rows_held()}: scoring uses "
            f"{min(image_k, rows)} and {min(gallery_k, rows)} ({left}).")
    if model.search_radius_setting == AUTO and (decide_radius or not model.radius_decided):
        say(decide_search_radius(model).describe())
    few_shot = count < settings.few_shot_below
    images = model.few_shot_images if few_shot else None
    if few_shot and (images is None or images.shape[0] != count):
        images = None  # a bank built without keeping its images (a checkpoint of an older version)
    if count < 2 and images is None:
        raise ConfigurationError("a bank of one image learns its thresholds from views of that image, but the image "
                                 "is not in the model: fit it again with this version.")
    if count < 2 and model.learns_at_fit:
        raise ConfigurationError(
            f"image_score={model.image_score!r} and level_balance={model.level_balance!r} learn scales from leave-one-out "
            "scores: they need at least 2 training images (or use image_score topq and level_balance none).")
    if model.level_balance != "none":
        model.set_level_scales(_level_moments(model))
    learn_thresholds = settings.learn and (settings.image_threshold is None or settings.pixel_threshold is None)
    loo, mapped = (_leave_one_out(model, settings, progress) if count >= 2 and (learn_thresholds or model.image_score == "combined")
                   else (None, 0))
    if model.image_score == "combined":
        model.learn_scales(loo)
    record: Dict[str, Any] = {"image": _hand("image", settings.image_threshold), "pixel": _hand("pixel", settings.pixel_threshold)}
    learned = Thresholds()
    if learn_thresholds:
        parts = [p for p in (loo, _view_scores(model, images) if images is not None else None) if p is not None]
        scores = torch.cat([model.image_scores(p.dn2, p.map_part) for p in parts])
        maps = torch.cat([p.maps for p in parts])
        views = sum(int(p.maps.shape[0]) for p in parts if p is not loo)
        rule = _rule(count, views)
        learned = Thresholds(quantile_threshold(scores, settings.image_quantile), quantile_threshold(maps, settings.pixel_quantile))
        if settings.image_threshold is None:
            record["image"] = {"source": "learned", "rule": rule, "quantile": settings.image_quantile, "scores": int(scores.numel())}
        if settings.pixel_threshold is None:
            record["pixel"] = {"source": "learned", "rule": rule, "quantile": settings.pixel_quantile, "maps": int(maps.shape[0])}
        mapped += views
    elif not settings.learn:  # threshold_method f1: the validation set sets what is not set by hand
        for level in ("image", "pixel"):
            if record[level]["source"] != "set by hand":
                record[level] = {"source": "not set yet", "rule": "F1-optimal on the validation set (validate)"}
    model.set_thresholds(Thresholds(
        settings.image_threshold if settings.image_threshold is not None else learned.image,
        settings.pixel_threshold if settings.pixel_threshold is not None else learned.pixel))
    say(thresholds_note(model, record, mapped, time.perf_counter() - started))
    return record


def _hand(level: str, value: Optional[float]) -> Dict[str, Any]:
    return {"source": "set by hand", "value": float(value)} if value is not None else {"source": "unset"}


def _rule(count: int, views: int) -> str:
    if not views:
        return f"leave-one-out scores of {count} training images"
    if count < 2:
        return f"{views} views of the one training image (turns of {_turns()} degrees) scored against it"
    return (f"leave-one-out scores of {count} training images and {views} views of them (turns of {_turns()} degrees), "
            "each scored against the other images")


def _turns() -> str:
    return ", ".join(name.split(":")[1] for name in THRESHOLD_VIEWS)


def _level_moments(model: Any) -> Tensor:
    rank, _ = rank_and_world()
    mine = scoring_rows(model, rank)
    balance = model.balance_rows()
    moments = model.level_moments(mine[torch.isin(mine, balance.to(mine.device))])
    model.end_scoring()
    return gather_rows(moments.unsqueeze(0)).sum(dim=0)


def thresholds_note(model: Any, record: Dict[str, Any], maps: int = 0, seconds: float = 0.0) -> str:
    """One line: each threshold in use, and where it comes from (set by hand, or learned by which rule)."""
    parts: List[str] = []
    for level, value in (("image", float(model.image_threshold)), ("pixel", float(model.pixel_threshold))):
        entry = record.get(level) or {}
        shown = f"{value:.6g}" if math.isfinite(value) else "unset"
        if entry.get("source") == "learned":
            scores = f"{entry['scores']} scores" if level == "image" else f"the pixels of {entry['maps']} maps"
            few = level == "image" and entry["scores"] * (1 - entry["quantile"]) < 1
            parts.append(f"{level} {shown} (learned: quantile {entry['quantile']} of {scores}"
                         + (": too few scores for that quantile, it lies near their maximum" if few else "") + ")")
        else:
            parts.append(f"{level} {shown} ({entry.get('source', 'unset')}{': ' + entry['rule'] if entry.get('rule') else ''})")
    rules = {(record.get(level) or {}).get("rule") for level in ("image", "pixel")
             if (record.get(level) or {}).get("source") == "learned"}
    tail = f"; from {rules.pop()}" if len(rules) == 1 else ""
    timing = f", {maps} maps in {seconds:.2f} s" if maps else ""
    return f"thresholds: {', '.join(parts)}{tail}{timing}"
