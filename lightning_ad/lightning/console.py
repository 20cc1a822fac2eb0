"""What the console shows: only what the user should act on.

Lightning's advertising tips and known, expected warnings are silenced through Lightning's
logger and Python's warning filters; warnings about the user's data and settings stay.
:func:`quiet_lightning` (:mod:`lightning_ad.lightning.quiet`, which imports no Lightning) is applied when the
package is imported. :class:`UntrainedModelSummary`
is Lightning's model summary without the parameters a module declares untrained (``Spade``'s
``step_anchor``), so that fit does not claim a trainable parameter.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, List, Tuple

from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities.model_summary import ModelSummary as _Summary
from torch import nn

from .quiet import EXPECTED_WARNINGS, quiet_lightning

__all__ = ["quiet_lightning", "EXPECTED_WARNINGS", "UntrainedModelSummary", "bank_summary", "partial_bank_warning",
           "progress_bar", "repeated_note"]


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
    return (f"\nSPADE bank: {model.rows_held()} in {seconds:.2f} s ({rate:.1f} images/s on {processes} "
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
