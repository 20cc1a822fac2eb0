"""``lightning-ad``: LightningCLI for :class:`~lightning_ad.module.Spade` and any LightningDataModule."""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from .errors import LightningADError
from .module import Spade

__all__ = ["SpadeCLI", "main"]


class SpadeCLI(LightningCLI):
    """LightningCLI with ``fit``/``validate``/``test``/``predict`` and one extra option.

    ``--test_after_fit true`` runs ``test`` right after ``fit`` with the same trainer
    (the demo config uses it, so one command fits, scores and prints metrics).
    """

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[override]
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, run test on the fitted model with the same trainer and datamodule.",
        )
        # On by default, configurable as --prediction_writer.* and --test_report.* (enabled: false turns one off).
        from .callbacks import PredictionWriter, TestReport

        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(TestReport, "test_report")

    def predict(self, **kwargs) -> None:
        """``trainer.predict``; the prediction writer saves every result, so by default
        (``return_predictions`` unset) the maps are not also kept in memory."""
        if kwargs.get("return_predictions") is None:
            kwargs["return_predictions"] = False
        self.trainer.predict(**kwargs)

    def after_fit(self) -> None:
        trainer = self.trainer
        callback = trainer.checkpoint_callback
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        if path:
            rank_zero_info(f"fitted checkpoint: {path}")
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            trainer.test(self.model, datamodule=self.datamodule)


def main(args: Optional[List[str]] = None) -> None:
    """Console entry point; user-facing errors are printed without a traceback (exit status 2)."""
    try:
        SpadeCLI(
            Spade,
            pl.LightningDataModule,
            subclass_mode_data=True,
            trainer_defaults={"max_epochs": 1, "num_sanity_val_steps": 0},
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except LightningADError as err:
        if os.environ.get("LIGHTNING_AD_DEBUG"):
            raise
        message = str(err).strip().splitlines()[-1] if "Original Traceback" in str(err) else str(err)
        print(f"lightning-ad: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
