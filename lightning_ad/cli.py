"""``lightning-ad``: LightningCLI for :class:`~lightning_ad.module.Spade` and any LightningDataModule."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from .errors import CheckpointError, LightningADError
from .module import Spade

# Hyperparameters the bank depends on: a checkpoint and the configured model must agree.
_BANK_DEFINING = ("backbone", "layers")

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

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` and keep the configuration given now.

        LightningCLI would copy the checkpoint's hyperparameters over the parsed
        configuration, silently replacing what the user set (``--model.image_k``, ...).
        Here the configuration given now wins: the checkpoint brings the bank and the
        thresholds; where its hyperparameters differ, a message lists them, and a
        different backbone or set of levels (the bank would not fit) is an error.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        path = Path(ckpt_path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} does not exist (--ckpt_path).")
        try:
            checkpoint = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - any failure means the file is unusable
            raise CheckpointError(
                f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                "Is it a complete .ckpt file written by lightning-ad fit?"
            ) from None
        meta = checkpoint.get("lightning_ad") if isinstance(checkpoint, dict) else None
        if not isinstance(meta, dict):
            raise CheckpointError(
                f"checkpoint {str(path)!r} was not written by lightning_ad (no 'lightning_ad' section)."
            )
        model_config = self.config[subcommand].get("model")
        configured = _as_dict(model_config)
        saved = checkpoint.get("hyper_parameters", {}) or {}
        conflicts = [
            f"{name}: checkpoint {saved[name]!r}, configured {configured.get(name)!r}"
            for name in _BANK_DEFINING
            if name in saved and _normalise(saved[name]) != _normalise(configured.get(name))
        ]
        if conflicts:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit the configured model ({'; '.join(conflicts)}). Set "
                + " ".join(f"--model.{c.split(':')[0]}" for c in conflicts)
                + " as at fit time, or fit again."
            )
        differences = [
            f"{name} {saved[name]!r} -> {configured[name]!r}"
            for name in sorted(saved)
            if name in configured and _normalise(saved[name]) != _normalise(configured[name])
        ]
        if differences:
            rank_zero_info(
                f"checkpoint {path.name}: using the configuration given now, which differs from fit time in "
                + ", ".join(differences)
            )

    def predict(self, **kwargs) -> None:
        """``trainer.predict``; the prediction writer saves every result, so by default
        (``return_predictions`` unset) the maps are not also kept in memory."""
        if kwargs.get("return_predictions") is None:
            kwargs["return_predictions"] = False
        self.trainer.predict(**kwargs)

    def after_validate(self) -> None:
        """With ``threshold_method: f1``, save the checkpoint with the thresholds set on the validation set.

        It goes beside the given checkpoint as ``<name>-f1.ckpt`` (``-f1-2`` ... if that
        exists); the given checkpoint is never modified.
        """
        model = self.model
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if getattr(model.hparams, "threshold_method", None) != "f1" or not ckpt_path:
            return
        if model.val_results is None:
            rank_zero_info("validate: no validation image was scored (set --data.val_split); no checkpoint written.")
            return
        source = Path(ckpt_path)
        target = source.with_name(f"{source.stem}-f1.ckpt")
        counter = 2
        while target.exists():
            target = source.with_name(f"{source.stem}-f1-{counter}.ckpt")
            counter += 1
        self.trainer.save_checkpoint(target)
        rank_zero_info(
            f"checkpoint with F1-optimal thresholds (image {model.image_threshold:.6g}, pixel "
            f"{model.pixel_threshold:.6g}): {target}"
        )

    def before_fit(self) -> None:
        if self.config.get(self.subcommand, {}).get("test_after_fit") and self.datamodule is not None:
            self.datamodule.setup("test")  # test-set problems show up before the long extraction

    def after_fit(self) -> None:
        trainer = self.trainer
        callback = trainer.checkpoint_callback
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        if path:
            rank_zero_info(f"fitted checkpoint: {path}")
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            trainer.test(self.model, datamodule=self.datamodule)


def _as_dict(namespace: Any) -> Dict[str, Any]:
    if namespace is None:
        return {}
    if hasattr(namespace, "as_dict"):
        return namespace.as_dict()
    return dict(namespace)


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


# Lightning warnings that are expected here and would only confuse: the backbone is frozen
# in eval mode on purpose, and a data set without a validation split serves an empty list.
_EXPECTED_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"Total length of `list` across ranks is zero",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)


def main(args: Optional[List[str]] = None) -> None:
    """Console entry point; user-facing errors are printed without a traceback (exit status 2)."""
    for pattern in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
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
