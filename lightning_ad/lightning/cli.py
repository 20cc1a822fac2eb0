"""``lightning-ad``: LightningCLI for :class:`~lightning_ad.lightning.module.Spade` and any LightningDataModule."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_info

from ..data.datamodule import AnomalyDataModule
from ..distributed import end_process_group
from ..errors import CheckpointError
from ..inference.checkpoint import META_KEY, SCORING_SETTINGS, check_compatible, read_checkpoint, saved_settings
from .console import quiet_lightning
from .module import Spade

__all__ = ["SpadeCLI", "run_cli"]


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
        from .prediction_writer import PredictionWriter
        from .test_report import TestReport

        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(TestReport, "test_report")

    def parse_arguments(self, parser, args) -> None:  # type: ignore[override]
        """``test``/``predict``/``validate`` with ``--ckpt_path`` and no ``--config`` or ``--data``: the
        datamodule the checkpoint was fitted with is the default (given options still apply)."""
        if args is None:
            sys.argv[1:] = _with_checkpoint_data(sys.argv[1:])
        elif isinstance(args, (list, tuple)):
            args = _with_checkpoint_data(list(args))
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Reconcile ``--ckpt_path`` with the configuration given now.

        LightningCLI's own version of this (private) hook copies the checkpoint's
        hyperparameters over everything parsed, silently replacing what the user set; this
        override is the only place to stop that. Here:

        * a model or input setting the user did not give (left at its default) comes from the
          checkpoint, and a line names those that make the scores;
        * a scoring setting given differently is honoured: the module recomputes the
          thresholds from the bank (leave-one-out) and says so;
        * an input setting (resize, crop) given differently is refused when the run starts;
        * another backbone or other levels (the bank would not fit) is an error.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
            return
        path = Path(ckpt_path)
        checkpoint = read_checkpoint(path)
        meta, saved = checkpoint[META_KEY], saved_settings(checkpoint.get("hyper_parameters"))
        config = self.config[subcommand]
        defaults = self._parser(subcommand).get_defaults().get("model")
        taken = []
        for name, value in sorted(saved.items()):
            if name in config.model and _normalise(config.model[name]) == _normalise(defaults.get(name)) \
                    and _normalise(value) != _normalise(config.model[name]):
                config.model[name] = value
                if name in SCORING_SETTINGS or name in ("backbone", "layers", "aggregate_levels", "weights", "bank_augment"):
                    taken.append(f"{name}={value!r}")  # what makes the scores; the rest is taken quietly
        check_compatible(meta, config.model["backbone"], config.model["layers"] or [], config.model["aggregate_levels"] or [],
                         source=f"checkpoint {str(path)!r}", bank_augment=config.model.get("bank_augment") or "none")
        contract = meta.get("input")
        init_args = getattr(config.get("data"), "init_args", None)
        if contract and init_args is not None:
            signature = inspect.signature(AnomalyDataModule.__init__).parameters  # the datamodules' defaults
            for name, default in ((n, signature[n].default) for n in ("image_size", "crop_size")):
                if name in init_args and _normalise(init_args[name]) == _normalise(default) \
                        and _normalise(init_args[name]) != _normalise(contract[name]):
                    init_args[name] = contract[name]
                    taken.append(f"data {name}={contract[name]!r}")
        if taken:
            rank_zero_info(f"from checkpoint {path.name}: " + ", ".join(taken))

    def before_instantiate_classes(self) -> None:
        """``predict`` logs no metric: unless a logger is given, the trainer gets none (Lightning's default
        logger would only announce itself, or warn that tensorboard is missing, and leave an empty folder)."""
        if self.subcommand == "predict":
            trainer = self.config[self.subcommand]["trainer"]
            if trainer.get("logger") in (None, True):
                trainer["logger"] = False

    def fit(self, model: Spade, **kwargs) -> None:
        """``trainer.fit``; with ``--ckpt_path`` of a fitted checkpoint, its bank grows by the datamodule's training
        images (those already in it skipped) and everything learned from the bank is learned again: the new
        checkpoint goes to this run's folder, and the given one is left as it was. (A SPADE fit has no loop state
        to resume: the checkpoint is read as a bank, not resumed.)"""
        ckpt_path = kwargs.pop("ckpt_path", None)
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            checkpoint = read_checkpoint(ckpt_path)
            if not checkpoint[META_KEY].get("bank_size"):
                raise CheckpointError(f"checkpoint {str(ckpt_path)!r} holds no complete bank to add images to: fit "
                                      "without --ckpt_path.")
            model.on_load_checkpoint(checkpoint)
            model.load_state_dict(checkpoint["state_dict"])
            rank_zero_info(f"fit from checkpoint {Path(ckpt_path).name}: its bank of {model.model.bank_size} images "
                           "grows by the training images; the checkpoint itself is not changed.")
            ckpt_path = None
        self.trainer.fit(model, ckpt_path=ckpt_path, **kwargs)

    def validate(self, **kwargs) -> None:
        """``trainer.validate``, loading checkpoints with ``weights_only=True`` unless told otherwise."""
        self.trainer.validate(**_weights_only(kwargs))

    def test(self, **kwargs) -> None:
        """``trainer.test``, loading checkpoints with ``weights_only=True`` unless told otherwise."""
        self.trainer.test(**_weights_only(kwargs))

    def predict(self, **kwargs) -> None:
        """``trainer.predict``; the prediction writer saves every result, so by default
        (``return_predictions`` unset) the maps are not also kept in memory."""
        if kwargs.get("return_predictions") is None:
            kwargs["return_predictions"] = False
        # predict logs no metric: a logger would only leave an empty version folder behind
        self.trainer.loggers = []
        self.trainer.predict(**_weights_only(kwargs))

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
        self.trainer.save_checkpoint(target, weights_only=True)  # the bank, thresholds and settings; no loop state
        rank_zero_info(
            f"checkpoint with F1-optimal thresholds (image {model.image_threshold:.6g}, pixel "
            f"{model.pixel_threshold:.6g}): {target}"
        )

    def before_fit(self) -> None:
        # the checkpoint remembers its datamodule, so that test/predict need only --ckpt_path
        data = self.config_init[self.subcommand].get("data") if self.datamodule is not None else None
        if data is not None:
            dumped = self._parser(self.subcommand).dump(self.config[self.subcommand], format="json", skip_check=True)
            self.model.datamodule_config = json.loads(dumped).get("data")
        if self.config.get(self.subcommand, {}).get("test_after_fit") and self.datamodule is not None:
            self.datamodule.setup("test")  # test-set problems show up before the long extraction

    def after_fit(self) -> None:
        trainer = self.trainer
        callback = trainer.checkpoint_callback
        path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        if path:
            rank_zero_info(f"\nfitted checkpoint: {path}")
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            trainer.test(self.model, datamodule=self.datamodule)


class _SaveConfig(SaveConfigCallback):
    """Saves the run's configuration beside its logs, except for ``predict`` (which logs nothing)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            super().setup(trainer, pl_module, stage)


def _weights_only(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    if kwargs.get("weights_only") is None:
        kwargs["weights_only"] = True
    return kwargs


def _with_checkpoint_data(argv: List[str]) -> List[str]:
    """``argv`` with ``--data <the checkpoint's datamodule>`` after the subcommand, when a
    ``test``/``predict``/``validate`` run names a checkpoint and neither a config nor a datamodule."""
    if not argv or argv[0] not in ("test", "predict", "validate"):
        return argv
    if any(a in ("-c", "--config", "--data") or a.startswith(("--config=", "--data=")) for a in argv):
        return argv
    ckpt = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--ckpt_path"), None)
    ckpt = ckpt or next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None)
    if not ckpt or not Path(ckpt).is_file():
        return argv
    data = read_checkpoint(ckpt)[META_KEY].get("datamodule")
    if not isinstance(data, dict) or "class_path" not in data:
        return argv
    rank_zero_info(f"data: {data['class_path']} as configured at fit time (checkpoint {Path(ckpt).name})")
    return [argv[0], "--data", json.dumps(data)] + argv[1:]


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def run_cli(args: Optional[List[str]] = None) -> SpadeCLI:
    """``fit``/``validate``/``test``/``predict`` through :class:`SpadeCLI` (``args`` None: ``sys.argv``). The console
    command is :func:`lightning_ad.command.main`, which also prints user-facing errors."""
    quiet_lightning()
    cli = SpadeCLI(
        Spade,
        pl.LightningDataModule,
        subclass_mode_data=True,
        trainer_defaults={"max_epochs": 1, "num_sanity_val_steps": 0},
        # nothing in the method is random (no shuffling, no sampling, a frozen backbone), so no seed is
        # needed; 0 (the configs' value) keeps `weights: random` runs repeatable without Lightning's
        # "No seed found" warning
        seed_everything_default=0,
        save_config_callback=_SaveConfig,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
    end_process_group()  # every process leaves the group together (see lightning_ad.distributed)
    return cli
