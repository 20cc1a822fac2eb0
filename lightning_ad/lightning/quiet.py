"""Lightning's tips and known, expected warnings silenced, without importing Lightning (the package applies it first).

The filters work on Lightning's logger names and on warning messages, so they can be installed before
Lightning is imported, and importing :mod:`lightning_ad` stays free of Lightning until a Lightning part is used.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_lightning", "EXPECTED_WARNINGS", "EXPECTED_INFO"]

#: Lightning and torch warnings that are expected with a frozen, training-free model.
EXPECTED_WARNINGS = (
    # the backbone is frozen in eval mode on purpose
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # a data set without a validation split serves an empty list
    r"Total length of `list` across ranks is zero",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # test/predict/validate restore a checkpoint written in another folder: nothing to resume
    r"The dirpath has changed from",
    # Lightning's own use of a deprecated torch API (not ours, not the user's)
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Lightning's packaging notice when tensorboard is not installed: the default logger is then a
    # CSVLogger, which works (metrics.csv); install tensorboard to get TensorBoard logs instead
    r"Starting from v1\.9\.0, `tensorboardX` has been removed as a dependency",
)

#: Lightning's info lines that are expected here: :class:`UntrainedModelSummary` (returned by
#: ``Spade.configure_callbacks``) replacing Lightning's default summary.
EXPECTED_INFO = frozenset({
    "The following callbacks returned in `LightningModule.configure_callbacks` will override existing callbacks "
    "passed to Trainer: ModelSummary",
})

_RANK_ZERO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero")


class _DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip" advertisements and the lines of :data:`EXPECTED_INFO`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.getMessage())
        return not (message.startswith("💡 Tip") or message in EXPECTED_INFO)


def quiet_lightning() -> None:
    """Silence Lightning's tips and :data:`EXPECTED_WARNINGS` (idempotent)."""
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
