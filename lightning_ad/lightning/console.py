"""What the console shows: only what the user should act on.

Lightning's advertising tips and known, expected warnings are silenced through Lightning's
logger and Python's warning filters; warnings about the user's data and settings stay.
:func:`quiet_lightning` is applied when the package is imported. :class:`UntrainedModelSummary`
is Lightning's model summary without the parameters a module declares untrained (``Spade``'s
``step_anchor``), so that fit does not claim a trainable parameter.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, List, Tuple

from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities.model_summary import ModelSummary as _Summary
from torch import nn

__all__ = ["quiet_lightning", "EXPECTED_WARNINGS", "UntrainedModelSummary", "bank_summary", "partial_bank_warning",
           "progress_bar", "repeated_note"]

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


class _UntrainedSummary(_Summary):
    """Lightning's summary data, leaving out the parameters in ``untrained`` (by identity)."""

    def __init__(self, model: Any, max_depth: int, untrained: Iterable[nn.Parameter]) -> None:
        self._untrained = {id(p) for p in untrained}
        super().__init__(model, max_depth=max_depth)

    def _counted(self) -> List[nn.Parameter]:
        return [p for p in self._model.parameters()
                if id(p) not in self._untrained and not isinstance(p, nn.parameter.UninitializedParameter)]

    @property
    def total_parameters(self) -> int:
        return sum(p.numel() for p in self._counted())

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._counted() if p.requires_grad)


class UntrainedModelSummary(ModelSummary):
    """Lightning's model summary without the parameters a module declares untrained.

    A module that has ``untrained_parameters()`` (``Spade``: ``step_anchor``, a scalar that
    requires a gradient only so that DDP and manual optimisation work, never changed) has them
    left out of the parameter counts and of the "other params" row, so a training-free model
    shows 0 trainable parameters. Other modules are summarised as Lightning does.
    """

    def _summary(self, trainer: Any, pl_module: Any) -> Any:
        from pytorch_lightning.strategies.deepspeed import DeepSpeedStrategy

        untrained = getattr(pl_module, "untrained_parameters", None)
        if untrained is None or isinstance(trainer.strategy, DeepSpeedStrategy):
            return super()._summary(trainer, pl_module)
        return _UntrainedSummary(pl_module, self._max_depth, untrained())


def bank_summary(model: Any, seconds: float, processes: int) -> str:
    """The status line after fit built the bank of ``model`` (a SpadeModel); starts on its own line."""
    rate = model.bank_size / max(seconds, 1e-9)
    return (f"\nSPADE bank: {model.bank_size} training images in {seconds:.2f} s ({rate:.1f} images/s on {processes} "
            f"process(es)), backbone {model.backbone_name}, levels {list(model.layers)}, "
            f"{model.bank.nbytes() / 2**20:.1f} MB")


def partial_bank_warning(bank_images: int, train_images: int) -> str:
    """The warning for a bank built from part of the training set, with both counts."""
    return (f"the bank holds {bank_images} of the {train_images} training images (limit_train_batches, fast_dev_run "
            "or max_steps cut the pass short): its scores and thresholds come from a partial bank. Fit without "
            "those trainer settings for a complete one.")


def repeated_note(skipped: List[Tuple[str, str]], shown: int = 5) -> str:
    """The line naming training images skipped because their content is already in the bank (``(skipped, kept)``)."""
    listed = "; ".join(f"{a} (same content as {b})" for a, b in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"skipped {len(skipped)} training image(s) already in the bank: {listed}{more}."


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A tqdm bar of ``total`` items while the block runs (``enabled`` False: a no-op); yields its ``update``."""
    if not enabled or total <= 0:
        yield lambda count: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, leave=False, dynamic_ncols=True) as bar:
        yield bar.update
