"""Rows on their way into the bank: checked finite, and grown batch by batch."""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import Tensor

from ..distributed import gather_objects
from ..errors import ConfigurationError, NumericalError

__all__ = ["check_finite", "shapes_seen_by_any_process"]


def check_finite(tensor: Tensor, what: str) -> Tensor:
    """Raise :class:`~lightning_ad.errors.NumericalError` (a ``FloatingPointError``) on NaN or infinity."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NumericalError(
            f"{what} contain {bad} NaN or infinite values. Check the input images (all-constant or "
            "corrupt files) and, with mixed precision, try precision=32 or bank_dtype='float32'."
        )
    return tensor


class _GrowingRows:
    """Rows ``[n, *tail]`` appended batch by batch into one buffer that doubles when full.

    Few, large allocations: small per-batch tensors kept alive between each batch's large
    temporaries fragment glibc's heap, which then never shrinks (measured: 0.9 GB more peak RSS
    writing 10,000 Lite0 images, 11 GB at 100,000).
    """

    def __init__(self, tail: Tuple[int, ...], dtype: torch.dtype) -> None:
        self.data, self.count = torch.empty((0, *tail), dtype=dtype), 0

    def append(self, rows: Tensor) -> None:
        need = self.count + int(rows.shape[0])
        if need > self.data.shape[0]:
            grown = torch.empty((max(need, 2 * self.data.shape[0], 256), *self.data.shape[1:]), dtype=self.data.dtype)
            grown[: self.count] = self.data[: self.count]
            self.data = grown
        self.data[self.count : need] = rows
        self.count = need

    def rows(self) -> Tensor:
        return self.data[: self.count]


def shapes_seen_by_any_process(shapes: Any) -> Any:
    """The first ``shapes`` (what this process's training batches looked like, None without one) that any process
    saw, in rank order: a process without batches shapes its empty rows after it. Collective. Raises
    :class:`~lightning_ad.errors.ConfigurationError` when no process saw a training batch."""
    known = next((s for s in gather_objects(shapes) if s is not None), None)
    if known is None:
        raise ConfigurationError("fit saw no training batch: the bank cannot be built (check limit_train_batches).")
    return known
