"""The stateful forms (``torchmetrics.Metric``) of the exact metrics: every score kept, computed once at the end."""

from __future__ import annotations

from typing import Any, List

from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .inputs import _check_same_shape, _check_scores, _check_target
from .pro import _check_max_fpr, _to_nhw, per_region_overlap
from .roc import binary_auroc

__all__ = ['AUROC', 'PRO']


class _KeepAllMetric(Metric):
    """Keeps every score and target (``dist_reduce_fx="cat"``); :meth:`compute` applies the exact
    functional form once, over everything seen (subclasses set ``_compute_exact``)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    scores: List[Tensor]
    target: List[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def _compute_exact(self, scores: Tensor, target: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute(self) -> Tensor:
        """The metric over everything seen so far (``float64`` scalar)."""
        if isinstance(self.scores, list) and len(self.scores) == 0:
            raise ValueError(f"{type(self).__name__}.compute() called without data: call update() first")
        return self._compute_exact(dim_zero_cat(self.scores), dim_zero_cat(self.target))


class AUROC(_KeepAllMetric):
    """Exact image- or pixel-level AUROC of raw anomaly scores (see :func:`binary_auroc`).

    All scores and targets are kept (``dist_reduce_fx="cat"``) and the exact
    area is computed once in :meth:`compute`.

    Args:
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = AUROC()
        >>> metric.update(torch.tensor([1200.0, 4800.0]), torch.tensor([0, 0]))
        >>> metric.update(torch.tensor([3500.0, 4800.0]), torch.tensor([1, 1]))
        >>> metric.compute()
        tensor(0.6250, dtype=torch.float64)
    """

    def update(self, scores: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Add a batch: ``scores`` of any shape (flattened) and ``target`` of the same shape."""
        scores = _check_scores(scores)
        target = _check_target(target)
        _check_same_shape(scores, target)
        self.scores.append(scores.detach().reshape(-1))
        self.target.append(target.reshape(-1).to(scores.device))

    def _compute_exact(self, scores: Tensor, target: Tensor) -> Tensor:
        return binary_auroc(scores, target)


class PRO(_KeepAllMetric):
    """Per-region overlap up to ``max_fpr`` over a stream of maps (see :func:`per_region_overlap`).

    Args:
        max_fpr: upper FPR integration limit, in ``(0, 1]``.
        kwargs: forwarded to :class:`torchmetrics.Metric`.

    ``update`` takes anomaly maps ``[B, H, W]`` or ``[B, 1, H, W]`` and masks of
    the same shape; all batches must share ``H`` and ``W``.

    Example:
        >>> import torch
        >>> metric = PRO(max_fpr=0.3)
        >>> metric.update(torch.tensor([[[900.0, 5.0], [3.0, 2.0]]]), torch.tensor([[[1, 0], [0, 0]]]))
        >>> metric.update(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), torch.zeros(1, 2, 2))
        >>> metric.compute()
        tensor(1., dtype=torch.float64)
    """

    def __init__(self, max_fpr: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_fpr = _check_max_fpr(max_fpr)

    def update(self, maps: Tensor, masks: Tensor) -> None:  # type: ignore[override]
        """Add a batch of anomaly maps ``[B, H, W]``/``[B, 1, H, W]`` and masks (same shape)."""
        maps = _check_scores(maps, "maps")
        masks = _check_target(masks, "masks")
        _check_same_shape(maps, masks, "maps", "masks")
        maps = _to_nhw(maps, "maps")
        masks = _to_nhw(masks, "masks")
        hw = (int(maps.shape[1]), int(maps.shape[2]))
        if len(self.scores) > 0 and tuple(self.scores[0].shape[1:]) != hw:
            raise ValueError(
                f"all batches must have the same spatial size: got {hw}, "
                f"expected {tuple(self.scores[0].shape[1:])}"
            )
        self.scores.append(maps.detach())
        self.target.append(masks.to(maps.device))

    def _compute_exact(self, scores: Tensor, target: Tensor) -> Tensor:
        return per_region_overlap(scores, target, max_fpr=self.max_fpr)
