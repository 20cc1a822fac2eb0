"""Checks and sorted counts shared by the metrics: finite scores, binary targets of the same shape, both classes."""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np
import torch
from torch import Tensor


def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except Exception as err:  # pragma: no cover - depends on the input object
        raise ValueError(f"`{name}` must be a tensor or array-like, got {type(x).__name__}") from err


def _check_scores(scores: Any, name: str = "scores") -> Tensor:
    """Validate real finite scores; return them in a dtype that sorts exactly."""
    scores = _as_tensor(scores, name)
    if scores.dtype == torch.bool or scores.is_complex():
        raise ValueError(f"`{name}` must be a real floating point or integer tensor, got dtype {scores.dtype}")
    if scores.numel() == 0:
        raise ValueError(f"`{name}` is empty: the metric is undefined without samples")
    if scores.is_floating_point():
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.float()  # exact widening, keeps ties
        if not bool(torch.isfinite(scores).all()):
            n_nan = int(torch.isnan(scores).sum())
            n_inf = int(torch.isinf(scores).sum())
            raise ValueError(
                f"`{name}` must be finite, but contains {n_nan} NaN and {n_inf} infinite value(s)"
            )
    else:
        scores = scores.to(torch.float64)
    return scores


def _check_target(target: Any, name: str = "target") -> Tensor:
    """Validate a binary target (bool, or values in {0, 1}); return it as ``bool``."""
    target = _as_tensor(target, name)
    if target.dtype == torch.bool:
        return target
    if target.is_complex():
        raise ValueError(f"`{name}` must be binary (bool or values in {{0, 1}}), got dtype {target.dtype}")
    is_one = target == 1
    if not bool((is_one | (target == 0)).all()):
        bad = target[~(is_one | (target == 0))]
        raise ValueError(
            f"`{name}` must be binary (bool or values in {{0, 1}}), "
            f"but contains other values, e.g. {bad[:5].tolist()}"
        )
    return is_one


def _check_same_shape(scores: Tensor, target: Tensor, s_name: str = "scores", t_name: str = "target") -> None:
    if scores.shape != target.shape:
        raise ValueError(
            f"`{s_name}` and `{t_name}` must have the same shape, "
            f"got {tuple(scores.shape)} and {tuple(target.shape)}"
        )


def _check_both_classes(n_pos: int, n_neg: int, metric: str) -> None:
    if n_pos == 0:
        raise ValueError(
            f"`target` contains no positive (anomalous, 1) sample: {metric} is undefined "
            "when only the negative class is present"
        )
    if n_neg == 0:
        raise ValueError(
            f"`target` contains no negative (normal, 0) sample: {metric} is undefined "
            "when only the positive class is present"
        )


def _prepare_binary(scores: Any, target: Any) -> Tuple[Tensor, Tensor]:
    scores = _check_scores(scores)
    target = _check_target(target)
    _check_same_shape(scores, target)
    return scores.reshape(-1), target.reshape(-1).to(scores.device)


def _to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _distinct_sorted(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct values of a 1-D array in ascending order and where each starts.

    Returns ``(distinct, starts)``: ``values.size - starts[k]`` elements are
    ``>= distinct[k]``.  A value-only ``np.sort`` (SIMD accelerated, far faster
    than an argsort).
    """
    v = np.sort(values)
    is_new = np.empty(v.size, dtype=bool)
    is_new[0] = True
    np.not_equal(v[1:], v[:-1], out=is_new[1:])
    starts = np.flatnonzero(is_new)
    return v[starts], starts


def _count_per_value(distinct: np.ndarray, subset: np.ndarray) -> np.ndarray:
    """How many elements of ``subset`` equal each entry of ``distinct`` (``subset`` ⊆ ``distinct``)."""
    # sorting the queries first makes the binary searches cache friendly
    return np.bincount(np.searchsorted(distinct, np.sort(subset)), minlength=distinct.size)


def _sorted_counts(scores: Tensor, target: Tensor) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positive counts at every distinct score, descending.

    Returns numpy arrays ``(thresholds, tps, fps)``: ``thresholds[k]`` is the
    ``k``-th largest distinct score, ``tps[k]``/``fps[k]`` (``int64``) count the
    positives/negatives with ``score >= thresholds[k]``.  Cost: one sort of all
    scores plus a sort and search of the smaller class.
    """
    s = _to_numpy(scores)
    t = _to_numpy(target)
    distinct, starts = _distinct_sorted(s)
    n_at_least = s.size - starts[::-1]  # samples with score >= threshold, descending thresholds
    if 2 * int(t.sum()) <= t.size:  # search the smaller class
        tps = np.cumsum(_count_per_value(distinct, s[t])[::-1])
        fps = n_at_least - tps
    else:
        fps = np.cumsum(_count_per_value(distinct, s[~t])[::-1])
        tps = n_at_least - fps
    return distinct[::-1], tps, fps
