"""The LightningModule shell around :class:`~lightning_ad.core.spade.SpadeModel`: hooks, gathering, logging.

``fit`` runs one pass over the normal training images: features are extracted
without gradients, gathered across processes by sample index (padding repeats of
the distributed sampler dropped) and stored as the bank; thresholds are then set
from leave-one-out scores of the training images (:mod:`lightning_ad.core.thresholds`).
``test`` scores every test image as :class:`~lightning_ad.lightning.results.ImageResults`,
gathers them and logs what :func:`~lightning_ad.lightning.evaluation.evaluate` finds defined
(``test/image_auroc``, ``test/pixel_auroc``, ``test/pro``, F1 at the thresholds);
``predict`` returns the records.

There is no training, but Lightning needs two things from a module it fits: a
parameter that requires a gradient (DDP refuses a module without one) and an
optimiser step per batch (``global_step`` is what ``ModelCheckpoint`` saves on).
``step_anchor`` is that one scalar parameter: it is never used in a computation,
its optimiser is SGD with learning rate 0, and each training step gives it a zero
gradient and steps, which advances ``global_step`` and changes nothing. Manual
optimisation keeps Lightning from building any graph or calling ``backward``.

The metrics are computed once per epoch on the gathered, de-duplicated records by
the functional forms: torchmetrics' own synchronisation would count the distributed
sampler's padding repeats twice (the ``Metric`` classes in :mod:`lightning_ad.core.metrics`
serve users who accumulate their own streams).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from .. import checks
from ..bank.content import content_ids
from ..core.calibration import FEW_SHOT_IMAGES, CalibrationSettings, calibrate
from ..core.knn import DEFAULT_CHUNK_BYTES
from ..core.radius import AUTO
from ..core.spade import SpadeModel
from ..core.thresholds import Thresholds, calibration_overlap, check_threshold_settings, f1_thresholds
from ..distributed import first_occurrences, gather_rows, world_size
from ..errors import ConfigurationError
from ..inference import checkpoint as ckpt
from .collect import BankCollector, single_pass_trainer
from .console import UntrainedModelSummary, bank_summary, partial_bank_warning, progress_bar, repeated_note
from .evaluation import Evaluation, evaluate
from .results import ImageResults, as_batch_dict

__all__ = ["Spade"]


class Spade(pl.LightningModule):
    """SPADE anomaly detection as a LightningModule (no training: fit builds a memory bank).

    The flat signature repeats :class:`SpadeModel`'s on purpose: LightningCLI builds ``--model.*`` from it.

    Args:
        backbone: ``efficientnet_lite0`` (offline default), ``efficientnet_lite1``, ``efficientnet_lite2``
            (offline with the extra ``efficientnet-lite``), ``resnet18``, ``resnet50``, ``wide_resnet50_2``
            (the paper's), ``wide_resnet101_2``, or ``timm/<name>`` (a timm model with stride 4/8/16 features).
        weights: ``imagenet``, a path to a state-dict file, or ``random`` (tests only).
        layers: pyramid levels for the maps: 1, 2, 3 = stride 4, 8, 16.
        image_k: K nearest training images averaged for the image score (paper: 50).
        gallery_k: nearest training images whose pyramid positions form the pixel gallery.
        kappa: nearest gallery features averaged per pixel (paper: 1).
        sigma: Gaussian smoothing of the maps in pixels (paper: 4).
        image_score: ``topq`` (default: mean of the map's top image_score_q), ``dn2`` (the paper's: pooled-vector
            distance to the image_k nearest), ``max`` (of the map), ``combined`` (DN2 and map max, each over its median
            leave-one-out score of the training images, summed). All but dn2 map training images at fit
            (image_threshold_samples of them).
        image_score_q: fraction of the map's pixels averaged by ``topq`` (0.05: the top 5 %).
        search_radius: the pixel search looks within this many input pixels of the same place in the gallery_k
            nearest training images (ceil(search_radius / stride) cells per level); ``null``: every position of
            them (the paper's search, about 100 times the work at K=50); ``auto`` (default): decided at fit from
            how far the parts move between the training images (8 or 16 px at 224 x 224, or every position; docs: search).
        aggregate_levels: levels whose features are 3x3 means (PatchCore's local aggregation), bank and queries
            alike; ``[]``: none (the paper). Part of the bank: a checkpoint is used with its own.
        pixel_distance: ``euclidean`` (default) or ``squared`` (the paper's): the distance a position scores.
        level_balance: ``none``, ``mean`` or ``std``: each level's map over that statistic of leave-one-out maps
            of 32 training images, learned at fit, so that no level dominates the mean by its units.
        level_weights: one weight per entry of layers in the mean of the levels (null: equal).
        bank_dtype: storage precision of the bank: float32, float16 or bfloat16.
        knn_chunk_bytes: working memory bound of one block of kNN distances, in bytes.
        bank_storage: ``memory``, or ``disk``: pyramid rows streamed to files at fit, read on demand (docs: Large banks).
        bank_sharding: ``replicated``, or ``sharded``: each process keeps its share of the pyramid rows (exact).
        bank_device: ``auto``, ``host`` (pinned host memory, galleries copied per batch) or ``accelerator``.
        bank_dir: folder of a disk or sharded bank's files (default: the log folder), named in the checkpoint
            with their SHA-256 (changed files are refused).
        bank_augment: ``none`` (default), ``flips``, ``rotations`` or ``flips+rotations``: views of each training
            image added to the bank beside it, as the few-shot detectors do (docs: few good parts); rotations need
            square crops. Part of the bank: a checkpoint is used with its own.
        threshold_method: ``quantile``: thresholds at quantiles of leave-one-out scores of the training
            images (needs no anomaly); ``f1``: F1-optimal on the labelled validation set (``val_split``).
        image_quantile: quantile of the normal image scores that sets the image threshold.
        pixel_quantile: quantile of the normal pixel scores that sets the pixel threshold.
        threshold_samples: training images scored leave-one-out for the pixel threshold (evenly
            spread; ``None``: all).
        image_threshold_samples: training images scored leave-one-out for the image threshold and the
            combined scales of a map-based image score (evenly spread; ``None``: all; a map costs about
            0.2 s on 2 CPU cores). ``dn2`` uses every training image.
        image_threshold: fixed image threshold (raw score), overriding the learned one.
        pixel_threshold: fixed pixel threshold (raw score), overriding the learned one.
        pro_max_fpr: upper false-positive rate of the PRO integral.
        few_shot_below: a bank of fewer training images learns its thresholds from their leave-one-out scores and
            the scores of small turns of them (docs: thresholds), and keeps the images for when it grows (0: never).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        weights: Optional[str] = "imagenet",
        layers: Sequence[int] = (1, 2, 3),
        image_k: int = 50,
        gallery_k: int = 50,
        kappa: int = 1,
        sigma: float = 4.0,
        image_score: str = "topq",
        image_score_q: float = 0.05,
        search_radius: Union[float, Literal["auto"], None] = "auto",
        aggregate_levels: Sequence[int] = (1, 2),
        pixel_distance: str = "euclidean",
        level_balance: str = "none",
        level_weights: Optional[Sequence[float]] = None,
        bank_dtype: str = "float32",
        knn_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        bank_storage: str = "memory", bank_sharding: str = "replicated", bank_device: str = "auto",
        bank_dir: Optional[str] = None,
        bank_augment: str = "none",
        threshold_method: str = "quantile",
        image_quantile: float = 0.95,
        pixel_quantile: float = 0.999,
        threshold_samples: Optional[int] = 128,
        image_threshold_samples: Optional[int] = 1000,
        image_threshold: Optional[float] = None,
        pixel_threshold: Optional[float] = None,
        pro_max_fpr: float = 0.3,
        few_shot_below: int = FEW_SHOT_IMAGES,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = SpadeModel(backbone=backbone, weights=weights, layers=layers, image_k=image_k, gallery_k=gallery_k, kappa=kappa,
                                sigma=sigma, image_score=image_score, image_score_q=image_score_q, search_radius=search_radius,
                                aggregate_levels=aggregate_levels, pixel_distance=pixel_distance, level_balance=level_balance,
                                level_weights=level_weights, bank_dtype=bank_dtype,
                                chunk_bytes=knn_chunk_bytes, bank_storage=bank_storage, bank_sharding=bank_sharding,
                                bank_device=bank_device, bank_dir=bank_dir, bank_augment=bank_augment)
        check_threshold_settings(threshold_method, image_quantile, pixel_quantile, threshold_samples,
                                  image_threshold, pixel_threshold, pro_max_fpr, image_threshold_samples)
        checks.non_negative_int("few_shot_below", few_shot_below)
        self.automatic_optimization = False
        self.step_anchor = nn.Parameter(torch.zeros(1))
        # Saved in the checkpoint: where the thresholds come from (method, partial bank, F1 images), how fit
        # prepared its images (checkpoint.input_contract), and the datamodule's configuration (from the CLI).
        self.threshold_source: Dict[str, Any] = {}
        self.input_contract: Optional[Dict[str, Any]] = None
        self.datamodule_config: Optional[Dict[str, Any]] = None
        self.radius_record: Optional[Dict[str, Any]] = None  # what search_radius was at fit, and its evidence
        self.bank_changed: Optional[str] = None  # when the bank last changed (ISO 8601, UTC)
        self._stale_thresholds: List[str] = []
        self._collector: Optional[BankCollector] = None  # during fit, until the bank is complete
        self._parts: List[Any] = []
        self._fallback_index, self._train_count, self._fit_started = 0, None, 0.0
        self.fit_images_per_second: Optional[float] = None  # of the last fit, over all processes
        self.test_results: Optional[ImageResults] = None  # gathered records of the last test
        self.test_evaluation: Optional[Evaluation] = None
        self.val_results: Optional[ImageResults] = None

    @property
    def image_threshold(self) -> float:
        """Image threshold in use (the model's: set by hand or learned; NaN when unknown)."""
        return float(self.model.image_threshold)

    @property
    def pixel_threshold(self) -> float:
        """Pixel threshold in use (the model's: set by hand or learned; NaN when unknown)."""
        return float(self.model.pixel_threshold)

    def _batch(self, batch: Any) -> Dict[str, Any]:
        """The batch as a dict; without ``index``, ids unique per process (see :func:`as_batch_dict`)."""
        data = as_batch_dict(batch, first_id=self.global_rank * 10**12 + self._fallback_index, processes=world_size())
        self._fallback_index += int(data["image"].shape[0])
        return data

    def untrained_parameters(self) -> List[nn.Parameter]:
        """Parameters that require a gradient but are never trained: ``step_anchor`` (see the module docstring)."""
        return [self.step_anchor]

    def configure_callbacks(self) -> List[pl.Callback]:
        """Lightning's default model summary, as :class:`~lightning_ad.lightning.console.UntrainedModelSummary`: it leaves
        ``step_anchor`` out, so fit does not claim a trainable parameter. A summary of your own (or none) is kept."""
        trainer = self._trainer
        defaults = [c for c in (trainer.callbacks if trainer is not None else []) if type(c) is ModelSummary]
        if not defaults:
            return []
        return [UntrainedModelSummary(max_depth=defaults[0]._max_depth, **getattr(defaults[0], "_summarize_kwargs", {}))]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.step_anchor], lr=0.0)  # see the module docstring

    def on_fit_start(self) -> None:
        single_pass_trainer(self.trainer)

    def on_train_start(self) -> None:
        contract, fitted = ckpt.input_contract(self.trainer.datamodule), self.input_contract
        if self.model.is_fitted and (problem := ckpt.contract_mismatch(fitted, contract)):
            raise ConfigurationError(f"the new good images cannot join this bank: {problem}")
        self.input_contract = contract if contract is not None else fitted
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        self._train_count = len(dataset) if hasattr(dataset, "__len__") else None

    def on_train_epoch_start(self) -> None:
        extend = self.model.is_fitted
        if extend:
            rank_zero_info(f"adding the training images to the bank of {self.model.bank_size} images (images already "
                           "in it are skipped); everything learned from the bank is learned again.")
        self._collector = BankCollector(self.model, self.hparams.bank_dir, self.trainer, extend=extend)
        self._few_shot = self._train_count is None or self._train_count < self.hparams.few_shot_below
        self._kept_images: List[Any] = []
        self._parts, self._fallback_index, self._fit_started = [], 0, time.perf_counter()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        data = self._batch(batch)
        ids = content_ids(data["image"])
        rows, features = self.model.bank_rows(data["image"], ids)  # with bank_augment, the views' rows too
        names = list(data.get("relpath") or data.get("path") or [f"training image {int(i)}" for i in data["index"]])
        names += [name for name in names for _ in range(self.model.views_per_image)]  # a view has its image's name
        self._collector.append(rows, features, tuple(data["image"].shape[-2:]), names)
        if self._few_shot:  # a few-shot bank keeps its images: its thresholds come from their views too
            self._kept_images.append((ids, data["image"].detach().float().cpu()))
            if sum(len(i) for i, _ in self._kept_images) >= self.hparams.few_shot_below:  # the bank will not be few-shot
                self._few_shot, self._kept_images = False, []
        self.step_anchor.grad = torch.zeros_like(self.step_anchor)
        self.optimizers().step()  # lr 0, zero gradient: advances global_step only

    def on_validation_epoch_start(self) -> None:
        # Lightning validates at the end of the last training batch, before on_train_epoch_end.
        if self.trainer.state.fn == TrainerFn.FITTING and not self.trainer.sanity_checking and self._collector is not None:
            self._finalize_bank()
        self._parts = []

    def on_train_epoch_end(self) -> None:
        if self.trainer.state.fn == TrainerFn.FITTING and self._collector is not None:
            self._finalize_bank()
        if not self.trainer.should_stop and self.trainer.max_epochs != 1:
            rank_zero_info("SPADE's bank is complete after one pass: stopping fit after this epoch.")
        self.trainer.should_stop = True

    def _finalize_bank(self) -> None:
        known = self.model.bank.index.clone() if self._collector.extend else None
        skipped, self._collector = self._collector.finish(), None
        if skipped:
            rank_zero_info(repeated_note(skipped))
        self._keep_few_shot_images(known)
        seconds = time.perf_counter() - self._fit_started
        self.fit_images_per_second = self.model.bank_size / max(seconds, 1e-9)
        rank_zero_info(bank_summary(self.model, seconds, world_size()))
        self.threshold_source = ckpt.threshold_source(self.hparams.threshold_method, self.model.bank_size, self._train_count)
        if self.threshold_source["partial_bank"]:
            rank_zero_warn(partial_bank_warning(self.model.bank_size, self._train_count))
        self.model.forget_learned()
        self._calibrate(CalibrationSettings.from_hparams(self.hparams), decide_radius=True)
        self.bank_changed = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def _keep_few_shot_images(self, known: Optional[Tensor]) -> None:
        """Gather the images kept by a few-shot fit (one per content id) and keep those new to the bank in the model."""
        parts, self._kept_images = self._kept_images, []
        limit = self.hparams.few_shot_below
        if not bool(gather_rows(torch.tensor([int(self._few_shot)])).all()):  # a process saw too many images to keep
            return self.model.keep_few_shot_images(None, None, limit)
        ids = gather_rows(torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long))
        images = gather_rows(torch.cat([x for _, x in parts]) if parts else torch.zeros(0, 3, *self.model.image_size))
        keep = first_occurrences(ids)
        ids, images = ids[keep], images[keep]
        if known is not None:
            new = ~torch.isin(ids, known.cpu())
            ids, images = ids[new], images[new]
        self.model.keep_few_shot_images(ids, images, self.hparams.few_shot_below)

    def _calibrate(self, settings: CalibrationSettings, decide_radius: bool) -> None:
        """What fit learns from the bank (:func:`~lightning_ad.core.calibration.calibrate`), recorded for the checkpoint."""
        bar = self.global_rank == 0 and self._trainer is not None and self.trainer.progress_bar_callback is not None
        record = calibrate(self.model, settings, say=rank_zero_info, decide_radius=decide_radius,
                           progress=(lambda total, what: progress_bar(total, what, bar)))
        self.threshold_source = {**self.threshold_source, **record}
        if self.model.search_radius_setting != AUTO or self.model.radius_choice is not None:
            self.radius_record = ckpt.radius_record(self.model)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        scoring = {name: self.hparams[name] for name in ckpt.SCORING_SETTINGS}
        checkpoint[ckpt.META_KEY] = ckpt.meta_section(self.model, self.threshold_source, self.input_contract,
                                                      self.datamodule_config, scoring, self.radius_record, self.bank_changed)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        meta = ckpt.section(checkpoint)
        ckpt.check_compatible(meta, self.model.backbone_name, self.model.layers, self.model.aggregate_levels,
                              bank_augment=self.model.bank_augment)
        ckpt.check_usable(meta, fitting=self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING)
        self.threshold_source = dict(meta.get("thresholds") or {})
        self.input_contract, self.datamodule_config = meta.get("input"), meta.get("datamodule")
        self.radius_record, self.bank_changed = meta.get("search_radius"), meta.get("bank_changed")
        self._stale_thresholds = ckpt.scoring_changes(ckpt.fitted_scoring(checkpoint), dict(self.hparams), int(meta["bank_size"]))

    def _check_serving(self) -> None:
        """Before test/predict: the data is prepared as at fit, and thresholds match the scoring settings."""
        self.model.require_fitted()
        if problem := ckpt.contract_mismatch(self.input_contract, ckpt.input_contract(self.trainer.datamodule)):
            raise ConfigurationError(problem)
        if self._stale_thresholds:
            rank_zero_info(f"scoring settings differ from fit time ({', '.join(self._stale_thresholds)}): thresholds "
                           "learned again from the bank, as fit does.")
            self.threshold_source = {**self.threshold_source, "method": "quantile", "recomputed": self._stale_thresholds}
            self._stale_thresholds = []
            self._calibrate(CalibrationSettings.from_hparams(self.hparams, learn=True), decide_radius=False)
        self._apply_hand_thresholds()

    def _apply_hand_thresholds(self) -> None:
        """``image_threshold`` / ``pixel_threshold`` given now: they become the thresholds in use, with a line
        naming the checkpoint's value they replace."""
        for level in ("image", "pixel"):
            given, buffer = self.hparams[f"{level}_threshold"], getattr(self.model, f"{level}_threshold")
            if given is None or float(given) == float(buffer):
                continue
            rank_zero_info(f"{level} threshold {float(given):.6g}, set by hand (the checkpoint's: {float(buffer):.6g}, "
                           f"{(self.threshold_source.get(level) or {}).get('source', 'learned')}).")
            buffer.fill_(float(given))
            self.threshold_source = {**self.threshold_source, level: {"source": "set by hand", "value": float(given)}}

    def _score(self, batch: Any) -> ImageResults:
        data = self._batch(batch)
        return ImageResults.from_batch(data, *self.model(data["image"]), self.image_threshold, self.pixel_threshold)

    def _collect(self, batch: Any) -> ImageResults:
        record = self._score(batch)
        self._parts.append(replace(record, image=None))
        return record

    def _gathered(self) -> ImageResults:
        self.model.end_scoring()  # a sharded bank: serve the other processes' searches until all are done
        parts, self._parts = self._parts, []
        return (ImageResults.cat(parts) if parts else ImageResults.empty(self.model.image_size)).gather()

    def _log_evaluation(self, stage: str, results: ImageResults) -> Evaluation:
        """Log what :func:`evaluate` finds defined (once, on rank 0: results are already gathered)."""
        evaluation = evaluate(results, self.hparams.pro_max_fpr)
        for name, value in evaluation.metrics.items():
            self.log(f"{stage}/{name}", value, rank_zero_only=True)
        if evaluation.skipped:
            rank_zero_warn(f"{stage}: not computed: " + "; ".join(evaluation.skipped) + ".")
        return evaluation

    def validation_step(self, batch: Any, batch_idx: int) -> Optional[ImageResults]:
        return None if self.trainer.sanity_checking or not self.model.is_fitted else self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.model.is_fitted:
            self._parts = []
            return
        results = self.val_results = self._gathered()
        if self.hparams.threshold_method == "f1":
            learned, notes = f1_thresholds(results.score, results.label, results.anomaly_map, results.mask, results.has_mask)
            hand = {level: self.hparams[f"{level}_threshold"] is not None for level in ("image", "pixel")}
            self.model.set_thresholds(Thresholds(math.nan if hand["image"] else learned.image,
                                                 math.nan if hand["pixel"] else learned.pixel))
            rank_zero_info("\n".join(notes))
            rule = {"source": "learned", "rule": f"F1-optimal on {len(results.path)} validation images"}
            self.threshold_source = {**self.threshold_source, "method": "f1", "calibration_paths": list(results.path),
                                     **{level: rule for level in ("image", "pixel") if not hand[level]}}
            results = replace(results, image_threshold=self.image_threshold, pixel_threshold=self.pixel_threshold)
        self._log_evaluation("val", results)

    def on_test_epoch_start(self) -> None:
        self._check_serving()
        self._parts, self._fallback_index, self.test_results = [], 0, None

    def test_step(self, batch: Any, batch_idx: int) -> ImageResults:
        return self._collect(batch)

    def on_test_epoch_end(self) -> None:
        results = self.test_results = self._gathered()
        if reused := calibration_overlap(self.threshold_source, results.path):
            rank_zero_warn(reused)
        self.test_evaluation = self._log_evaluation("test", results)

    def on_predict_epoch_start(self) -> None:
        self._check_serving()
        self._fallback_index = 0

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> ImageResults:
        return self._score(batch)

    def on_predict_epoch_end(self) -> None:
        self.model.end_scoring()  # processes may hold different numbers of images to predict

    def forward(self, images: Tensor):  # type: ignore[override]
        """Raw image scores ``[B]`` and maps ``[B, H, W]`` for images ``[B, 3, H, W]`` in [0, 1]."""
        return self.model(images)
