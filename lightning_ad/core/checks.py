"""Argument checks, one helper per kind. Each raises :class:`~lightning_ad.errors.ConfigurationError`
naming the setting, its value and what is accepted."""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Tuple

from ..errors import ConfigurationError

__all__ = [
    "threshold_settings",
    "single_pass_trainer",
    "ks_fit_training_set",
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


def ks_fit_training_set(image_k: int, gallery_k: int, count: int, leave_one_out: bool, where: str = "") -> None:
    """Both K at most the ``count`` training images (``count - 1`` for leave-one-out thresholds)."""
    for name, k in (("image_k", image_k), ("gallery_k", gallery_k)):
        k_at_most(name, k, count, f"training images {where}".strip())
    if leave_one_out:
        for name, k in (("image_k", image_k), ("gallery_k", gallery_k)):
            k_at_most(name, k, count - 1, "training images left for leave-one-out thresholds (or set "
                      "image_threshold and pixel_threshold)")


def single_pass_trainer(trainer: Any) -> None:
    """A Trainer that can build the bank: one pass, validation (if any) once after it."""
    if trainer.min_epochs is not None and trainer.min_epochs > 1:
        raise ConfigurationError(
            f"trainer min_epochs={trainer.min_epochs}: SPADE's fit is a single pass over the training "
            "images (no training); set min_epochs to 1 or leave it unset.")
    has_val = sum(getattr(trainer, "num_val_batches", []) or []) > 0
    if has_val and (trainer.val_check_interval != 1.0 or trainer.check_val_every_n_epoch != 1):
        raise ConfigurationError("validation must run once, after the bank is complete: set trainer "
                                 "val_check_interval=1.0 and check_val_every_n_epoch=1.")


def threshold_settings(method: Any, image_quantile: Any, pixel_quantile: Any, samples: Any, image_threshold: Any,
                       pixel_threshold: Any, pro_max_fpr: Any, image_samples: Any = None) -> None:
    """The threshold and evaluation settings of :class:`~lightning_ad.lightning.module.Spade`
    (``samples``: threshold_samples, ``image_samples``: image_threshold_samples)."""
    one_of("threshold_method", method, ("quantile", "f1"))
    fraction("image_quantile", image_quantile)
    fraction("pixel_quantile", pixel_quantile)
    positive_int("threshold_samples", samples, optional=True)
    positive_int("image_threshold_samples", image_samples, optional=True)
    positive_number("image_threshold", image_threshold, optional=True, unit="a raw score")
    positive_number("pixel_threshold", pixel_threshold, optional=True, unit="a raw map value")
    fraction("pro_max_fpr", pro_max_fpr)


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
