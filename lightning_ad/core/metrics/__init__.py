"""Exact anomaly-detection metrics for raw (unbounded) anomaly scores.

Anomaly scores produced by SPADE are feature distances (squared or not): non-negative
numbers of arbitrary magnitude (``0.001`` as well as ``5000``).  The binary
metrics of torchmetrics squash any input outside ``[0, 1]`` with a sigmoid,
which maps all large distances to ``1.0`` and turns them into ties.  The
functions here never transform the scores: only their order matters, every
distinct score is a threshold (no binning), and counts are accumulated in
``int64``/``float64``.  All of them run in ``O(n log n)`` and are fully
vectorised (numpy on the CPU, dominated by one value sort of all scores;
tensors on an accelerator are copied to the host), so tens of millions of
pixels take a few seconds.

Conventions shared by every function:

* ``scores`` is a real tensor (any shape, flattened) of finite values; larger
  means more anomalous.  NaN or infinite scores raise ``ValueError``.
* ``target`` / ``masks`` has the same shape; it is ``bool`` or holds only the
  values ``0`` (normal) and ``1`` (anomalous).
* A pixel/sample is *predicted anomalous at threshold* ``t`` when
  ``score >= t``.
* Results are ``torch.float64`` tensors on the device of ``scores``.


Modules: :mod:`.roc` (:func:`binary_roc`, :func:`binary_auroc`), :mod:`.f1` (:func:`precision_recall_f1`,
:func:`f1_optimal_threshold`), :mod:`.pro` (:func:`per_region_overlap`), :mod:`.classes` (:class:`AUROC`,
:class:`PRO`), and the checks they share, ``inputs``.
"""

from typing import TYPE_CHECKING, Any

from .f1 import f1_optimal_threshold, precision_recall_f1
from .pro import per_region_overlap
from .roc import binary_auroc, binary_roc

if TYPE_CHECKING:
    from .classes import AUROC, PRO

__all__ = [
    "AUROC",
    "PRO",
    "binary_auroc",
    "binary_roc",
    "f1_optimal_threshold",
    "per_region_overlap",
    "precision_recall_f1",
]


def __getattr__(name: str) -> Any:
    """The ``torchmetrics.Metric`` classes, imported on first use (torchmetrics is slow to import; the functional forms
    need none of it)."""
    if name in ("AUROC", "PRO"):
        from . import classes

        value = getattr(classes, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_ad.core.metrics' has no attribute {name!r}")
