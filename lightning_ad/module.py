"""The LightningModule shell around :class:`~lightning_ad.spade.SpadeModel`.

``fit`` runs one epoch over the normal training images: features are extracted
without gradients, gathered across processes by sample index (padding repeats of
the distributed sampler dropped) and stored as the bank; thresholds are then set
from leave-one-out scores of the training images. ``test`` scores every test image
and logs ``test/image_auroc``, ``test/pixel_auroc``, ``test/pro`` and the F1 at the
thresholds; ``predict`` returns each image's path, score and map.

There is no training, but Lightning needs two things from a module it fits: a
parameter that requires a gradient (DDP refuses a module without one) and an
optimiser step per batch (``global_step`` is what ``ModelCheckpoint`` saves on).
``step_anchor`` is that one scalar parameter: it is never used in a computation,
its optimiser is SGD with learning rate 0, and each training step gives it a zero
gradient and steps, which advances ``global_step`` and changes nothing. Manual
optimisation keeps Lightning from building any graph or calling ``backward``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from .data.datamodule import spread_positions
from .distributed import first_occurrences, gather_objects, gather_rows, world_size
from .errors import CheckpointError, ConfigurationError
from .knn import DEFAULT_CHUNK_BYTES
from .metrics import AUROC, PRO, f1_optimal_threshold, precision_recall_f1
from .spade import Features, SpadeModel
from .thresholds import normalize_scores, quantile_threshold

__all__ = ["Spade", "EvaluationResults"]

_CHECKPOINT_KEY = "lightning_ad"
_CHECKPOINT_FORMAT = 1


@dataclass
class EvaluationResults:
    """Per-image results of a test or validation epoch, gathered over processes, ordered by index.

    ``scores`` ``[N]`` float64 raw; ``labels`` ``[N]``; ``maps`` ``[N, H, W]`` raw;
    ``masks`` ``[N, H, W]`` uint8; ``has_mask`` ``[N]`` bool; ``paths``; ``indices`` ``[N]``.
    """

    indices: Tensor
    scores: Tensor
    labels: Tensor
    maps: Tensor
    masks: Tensor
    has_mask: Tensor
    paths: List[str]


class Spade(pl.LightningModule):
    """SPADE anomaly detection as a LightningModule (no training: fit builds a memory bank).

    Args:
        backbone: feature extractor: ``efficientnet_lite0`` (offline default),
            ``resnet18``, ``resnet50``, ``wide_resnet50_2`` (the paper's), ``wide_resnet101_2``.
        weights: ``imagenet``, a path to a state-dict file, or ``random`` (tests only).
        layers: pyramid levels for the maps: 1, 2, 3 = stride 4, 8, 16.
        image_k: K nearest training images averaged for the image score (paper: 50).
        gallery_k: nearest training images whose pyramid positions form the pixel gallery.
        kappa: nearest gallery features averaged per pixel (paper: 1).
        sigma: Gaussian smoothing of the maps in pixels (paper: 4).
        bank_dtype: storage precision of the bank: float32, float16 or bfloat16.
        knn_chunk_bytes: working memory bound of one block of kNN distances, in bytes.
        threshold_method: ``quantile``: thresholds at quantiles of leave-one-out scores
            of the training images (needs no anomaly); ``f1``: F1-optimal thresholds on
            the labelled validation set (a ``val_split`` of the datamodule, or ``validate``).
        image_quantile: quantile of the normal image scores that sets the image threshold.
        pixel_quantile: quantile of the normal pixel scores that sets the pixel threshold.
        threshold_samples: training images scored leave-one-out for the pixel threshold
            (evenly spread; ``None``: all). Image scores use every training image.
        image_threshold: fixed image threshold (raw score), overriding the learned one.
        pixel_threshold: fixed pixel threshold (raw score), overriding the learned one.
        pro_max_fpr: upper false-positive rate of the PRO integral.
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
        bank_dtype: str = "float32",
        knn_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        threshold_method: str = "quantile",
        image_quantile: float = 0.95,
        pixel_quantile: float = 0.999,
        threshold_samples: Optional[int] = 32,
        image_threshold: Optional[float] = None,
        pixel_threshold: Optional[float] = None,
        pro_max_fpr: float = 0.3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        try:
            self.model = SpadeModel(
                backbone, weights, layers, image_k, gallery_k, kappa, sigma, bank_dtype, knn_chunk_bytes
            )
        except ValueError as err:
            raise ConfigurationError(str(err)) from None
        if threshold_method not in ("quantile", "f1"):
            raise ConfigurationError(f"threshold_method={threshold_method!r}: choose 'quantile' or 'f1'")
        for name, value in (("image_quantile", image_quantile), ("pixel_quantile", pixel_quantile)):
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ConfigurationError(f"{name}={value!r} must lie in (0, 1]")
        if threshold_samples is not None and (isinstance(threshold_samples, bool) or not isinstance(threshold_samples, int) or threshold_samples < 1):
            raise ConfigurationError(f"threshold_samples={threshold_samples!r} must be a positive integer or null")
        for name, value in (("image_threshold", image_threshold), ("pixel_threshold", pixel_threshold)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name}={value!r} must be a positive number (a raw squared distance) or null")
        if not (isinstance(pro_max_fpr, (int, float)) and 0 < pro_max_fpr <= 1):
            raise ConfigurationError(f"pro_max_fpr={pro_max_fpr!r} must lie in (0, 1]")
        self.automatic_optimization = False
        # See the module docstring: never used in a computation, only stepped with lr 0.
        self.step_anchor = nn.Parameter(torch.zeros(1))
        self.image_auroc = AUROC(sync_on_compute=False)
        self.pixel_auroc = AUROC(sync_on_compute=False)
        self.pro = PRO(max_fpr=pro_max_fpr, sync_on_compute=False)
        self._train_parts: Optional[List[Tuple[Tensor, Tensor, List[Tensor]]]] = None
        self._train_image_size: Optional[Tuple[int, int]] = None
        self._eval_parts: List[Dict[str, Any]] = []
        self._fallback_index = 0
        self._fit_started = 0.0
        self.fit_images_per_second: Optional[float] = None
        self.test_results: Optional[EvaluationResults] = None
        self.val_results: Optional[EvaluationResults] = None

    # ------------------------------------------------------------------ thresholds

    @property
    def image_threshold(self) -> float:
        """Image threshold in use: the user's, else the learned one (NaN when unknown)."""
        if self.hparams.image_threshold is not None:
            return float(self.hparams.image_threshold)
        return float(self.model.image_threshold)

    @property
    def pixel_threshold(self) -> float:
        """Pixel threshold in use: the user's, else the learned one (NaN when unknown)."""
        if self.hparams.pixel_threshold is not None:
            return float(self.hparams.pixel_threshold)
        return float(self.model.pixel_threshold)

    # ------------------------------------------------------------------ batches

    def _unpack(self, batch: Any) -> Dict[str, Any]:
        """Accept our dict batches, ``(images, labels, ...)`` tuples or bare image tensors."""
        if isinstance(batch, dict):
            if "image" not in batch:
                raise ConfigurationError("a batch dict must hold the images under the key 'image'")
            out = dict(batch)
        elif isinstance(batch, (list, tuple)):
            out = {"image": batch[0]}
            if len(batch) > 1 and isinstance(batch[1], Tensor):
                out["label"] = batch[1]
        elif isinstance(batch, Tensor):
            out = {"image": batch}
        else:
            raise ConfigurationError(f"unsupported batch type {type(batch).__name__}: give a dict with 'image'")
        images = out["image"]
        size = images.shape[0]
        if "index" not in out:
            if world_size() > 1 and self._fallback_index == 0:
                rank_zero_warn(
                    "batches carry no 'index': under several processes, samples repeated by the distributed "
                    "sampler cannot be removed. Put each sample's dataset index under 'index'."
                )
            offset = self.global_rank * 10**12
            out["index"] = torch.arange(self._fallback_index, self._fallback_index + size) + offset
            self._fallback_index += size
        out.setdefault("label", torch.full((size,), -1, dtype=torch.long))
        out.setdefault("mask", torch.zeros((size,) + tuple(images.shape[-2:]), dtype=torch.uint8))
        out.setdefault("has_mask", torch.zeros(size, dtype=torch.bool))
        out.setdefault("path", [""] * size)
        if not isinstance(out["has_mask"], Tensor):
            out["has_mask"] = torch.as_tensor(out["has_mask"], dtype=torch.bool)
        return out

    # ------------------------------------------------------------------ fit

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.step_anchor], lr=0.0)

    def on_fit_start(self) -> None:
        trainer = self.trainer
        if trainer.min_epochs is not None and trainer.min_epochs > 1:
            raise ConfigurationError(
                f"trainer min_epochs={trainer.min_epochs}: SPADE's fit is a single pass over the training "
                "images (no training); set min_epochs to 1 or leave it unset."
            )
        if self._has_val_data() and (trainer.val_check_interval != 1.0 or trainer.check_val_every_n_epoch != 1):
            raise ConfigurationError(
                "validation must run once, after the bank is complete: set trainer val_check_interval=1.0 and "
                "check_val_every_n_epoch=1."
            )

    def _has_val_data(self) -> bool:
        try:
            return sum(self.trainer.num_val_batches) > 0
        except Exception:  # noqa: BLE001 - loaders not yet set up
            return False

    def on_train_start(self) -> None:
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__"):
            return
        count = len(dataset)
        hp = self.hparams
        for name in ("image_k", "gallery_k"):
            k = getattr(hp, name)
            if k > count:
                raise ConfigurationError(
                    f"model {name}={k} is larger than the {count} training images; set --model.{name} to at most {count}."
                )
        if hp.threshold_method == "quantile" and hp.image_threshold is None and max(hp.image_k, hp.gallery_k) > count - 1:
            raise ConfigurationError(
                f"leave-one-out thresholds need image_k and gallery_k <= {count - 1} (training images minus one); "
                "lower them, or set image_threshold and pixel_threshold."
            )

    def on_train_epoch_start(self) -> None:
        if self.model.is_fitted:
            rank_zero_warn(
                f"this model already holds a bank of {self.model.bank_size} images: fit replaces it (it does not add)."
            )
            self.model.reset_bank()
        self._train_parts = []
        self._fallback_index = 0
        self._fit_started = time.perf_counter()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        data = self._unpack(batch)
        images = data["image"]
        features = self.model.extract(images)
        self._train_image_size = (int(images.shape[-2]), int(images.shape[-1]))
        assert self._train_parts is not None
        self._train_parts.append(
            (data["index"].to(images.device), features.pooled.detach(), [f.detach() for f in features.pyramid])
        )
        optimizer = self.optimizers()
        self.step_anchor.grad = torch.zeros_like(self.step_anchor)
        optimizer.step()  # lr 0, zero gradient: advances global_step only
        return None

    def on_validation_epoch_start(self) -> None:
        # Lightning validates at the end of the last training batch, before on_train_epoch_end.
        self._eval_parts = []
        if self.trainer.state.fn == TrainerFn.FITTING and self._train_parts is not None and not self.trainer.sanity_checking:
            self._finalize_bank()

    def on_train_epoch_end(self) -> None:
        if self._train_parts is not None:
            self._finalize_bank()
        if not self.trainer.should_stop and (self.trainer.max_epochs is None or self.trainer.max_epochs != 1):
            rank_zero_info("SPADE's bank is complete after one pass: stopping fit after this epoch.")
        self.trainer.should_stop = True

    def _finalize_bank(self) -> None:
        parts, self._train_parts = self._train_parts, None
        assert parts is not None
        device = self.model.bank_index.device
        if parts:
            index = torch.cat([p[0] for p in parts]).to(device)
            pooled = torch.cat([p[1] for p in parts]).float()
            pyramid = [torch.cat([p[2][i] for p in parts]).float() for i in range(len(self.model.layers))]
        else:  # a rank without batches still joins the collectives
            index = torch.zeros(0, dtype=torch.long, device=device)
            pooled = torch.zeros(0, self.model.pooled_dim, device=device)
            pyramid = []
        # image size and per-level shapes from a rank that saw batches (a rank without any still joins)
        shapes = (self._train_image_size, [tuple(level.shape[1:]) for level in pyramid]) if parts else None
        known = next((shape for shape in gather_objects(shapes) if shape is not None), None)
        if known is None:
            raise RuntimeError("fit saw no training batch: the bank cannot be built (check limit_train_batches).")
        image_size, level_shapes = known
        if not pyramid:
            pyramid = [torch.zeros((0, *shape), device=device) for shape in level_shapes]
        index = gather_rows(index)
        pooled = gather_rows(pooled)
        pyramid = [gather_rows(level) for level in pyramid]
        if index.numel() == 0:
            raise RuntimeError("fit saw no training image: the bank cannot be built.")
        keep = first_occurrences(index)
        self.model.set_bank(Features([level[keep] for level in pyramid], pooled[keep]), image_size, index[keep])
        seconds = time.perf_counter() - self._fit_started
        #: Training images per second of the feature extraction, over all processes (wall time of rank 0).
        self.fit_images_per_second = self.model.bank_size / max(seconds, 1e-9)
        rank_zero_info(
            f"SPADE bank: {self.model.bank_size} training images in {seconds:.2f} s "
            f"({self.fit_images_per_second:.1f} images/s on {world_size()} process(es)), backbone "
            f"{self.model.backbone_name}, levels {list(self.model.layers)}, {self._bank_megabytes():.1f} MB"
        )
        if self.hparams.threshold_method == "quantile":
            started = time.perf_counter()
            self._fit_quantile_thresholds()
            rank_zero_info(f"thresholds computed in {time.perf_counter() - started:.2f} s")

    def _bank_megabytes(self) -> float:
        tensors = [self.model.bank_pooled] + self.model.bank_levels()
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    def _fit_quantile_thresholds(self) -> None:
        """Thresholds at quantiles of leave-one-out scores of the training images."""
        hp = self.hparams
        model = self.model
        count = model.bank_size
        if max(model.image_k, model.gallery_k) > count - 1:
            rank_zero_warn("too few training images for leave-one-out thresholds: thresholds stay unset.")
            return
        rows = torch.arange(count, device=model.bank_index.device)
        image_scores, _ = model.nearest_images(model.bank_pooled.float(), exclude=rows)
        samples = count if hp.threshold_samples is None else min(hp.threshold_samples, count)
        chosen = rows[spread_positions(count, samples)]
        mine = chosen[self.global_rank :: world_size()]
        if mine.numel():
            maps = model.score_bank(mine).anomaly_maps
        else:
            maps = torch.zeros((0, *model.image_size), device=rows.device)
        maps = gather_rows(maps)
        model.image_threshold.fill_(quantile_threshold(image_scores, hp.image_quantile))
        model.pixel_threshold.fill_(quantile_threshold(maps, hp.pixel_quantile))
        rank_zero_info(
            f"thresholds from leave-one-out scores of normal images: image {float(model.image_threshold):.6g} "
            f"(quantile {hp.image_quantile} of {count}), pixel {float(model.pixel_threshold):.6g} "
            f"(quantile {hp.pixel_quantile} of {samples} images' pixels)"
        )

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint[_CHECKPOINT_KEY] = {
            "format": _CHECKPOINT_FORMAT,
            "backbone": self.model.backbone_name,
            "layers": list(self.model.layers),
            "bank_size": self.model.bank_size,
            "image_size": list(self.model.image_size),
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        meta = checkpoint.get(_CHECKPOINT_KEY)
        if meta is None:
            raise CheckpointError(
                "this checkpoint was not written by lightning_ad's Spade (no 'lightning_ad' section)."
            )
        problems = []
        if meta.get("backbone") != self.model.backbone_name:
            problems.append(f"backbone {meta.get('backbone')!r} (configured: {self.model.backbone_name!r})")
        if list(meta.get("layers", [])) != list(self.model.layers):
            problems.append(f"layers {meta.get('layers')} (configured: {list(self.model.layers)})")
        if problems:
            raise CheckpointError(
                "the checkpoint's bank was fitted with " + " and ".join(problems)
                + ". Configure the model the same way (--model.backbone / --model.layers) or fit again."
            )
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if fitting:
            complete = "the bank was complete" if meta.get("bank_size") else "before the bank was complete"
            raise CheckpointError(
                f"fit cannot resume from a checkpoint (this one was saved {complete}): SPADE builds its bank in "
                "one pass. Run fit again without ckpt_path."
            )
        if not meta.get("bank_size"):
            raise CheckpointError(
                "this checkpoint holds no memory bank: it was saved before fit completed (an interrupted fit, "
                "or a checkpoint saved during the pass). Use the checkpoint written at the end of fit, or fit again."
            )

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True, assign: bool = False):  # type: ignore[override]
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except ValueError as err:
            raise CheckpointError(str(err)) from None

    # ------------------------------------------------------------------ evaluation

    def _require_fitted(self) -> None:
        if not self.model.is_fitted:
            raise ConfigurationError(
                "the model has no memory bank: run fit first, or pass a fitted checkpoint (--ckpt_path PATH)."
            )

    def _evaluate_batch(self, batch: Any) -> Dict[str, Any]:
        data = self._unpack(batch)
        images = data["image"]
        out = self.model(images)
        record = {
            "index": data["index"].detach().cpu(),
            "score": out.image_scores.detach().double().cpu(),
            "label": data["label"].detach().cpu(),
            "map": out.anomaly_maps.detach().float().cpu(),
            "mask": data["mask"].detach().to(torch.uint8).cpu().reshape(out.anomaly_maps.shape),
            "has_mask": data["has_mask"].detach().cpu(),
            "path": list(data["path"]),
        }
        self._eval_parts.append(record)
        return {
            "image_scores": out.image_scores,
            "anomaly_maps": out.anomaly_maps,
            "normalized_scores": normalize_scores(out.image_scores, self.image_threshold),
            "pred_labels": out.image_scores >= self.image_threshold,
            "pred_masks": out.anomaly_maps >= self.pixel_threshold,
            "labels": data["label"],
            "masks": data["mask"],
            "paths": data["path"],
            "relpaths": list(data.get("relpath", [os.path.basename(p) for p in data["path"]])),
            "indices": data["index"],
        }

    def _gather_results(self) -> EvaluationResults:
        parts, self._eval_parts = self._eval_parts, []
        if parts:
            cat = {key: torch.cat([p[key] for p in parts]) for key in ("index", "score", "label", "map", "mask", "has_mask")}
            paths = [path for p in parts for path in p["path"]]
        else:
            h, w = self.model.image_size
            cat = {
                "index": torch.zeros(0, dtype=torch.long), "score": torch.zeros(0, dtype=torch.float64),
                "label": torch.zeros(0, dtype=torch.long), "map": torch.zeros(0, h, w),
                "mask": torch.zeros(0, h, w, dtype=torch.uint8), "has_mask": torch.zeros(0, dtype=torch.bool),
            }
            paths = []
        gathered = {key: gather_rows(value) for key, value in cat.items()}  # CPU rows; NCCL is handled inside
        all_paths = [p for rank_paths in gather_objects(paths) for p in rank_paths]
        keep = first_occurrences(gathered["index"])
        return EvaluationResults(
            indices=gathered["index"][keep],
            scores=gathered["score"][keep],
            labels=gathered["label"][keep],
            maps=gathered["map"][keep],
            masks=gathered["mask"][keep],
            has_mask=gathered["has_mask"][keep].bool(),
            paths=[all_paths[i] for i in keep.tolist()],
        )

    @staticmethod
    def _compute(metric: Any, *args: Tensor) -> float:
        metric.reset()
        metric.update(*args)
        value = float(metric.compute())
        metric.reset()
        return value

    def _log_metrics(self, stage: str, results: EvaluationResults) -> Dict[str, float]:
        labels, scores = results.labels, results.scores
        values: Dict[str, float] = {}
        skipped: List[str] = []
        anomalous, normal = int((labels == 1).sum()), int((labels == 0).sum())
        if anomalous and normal:
            values["image_auroc"] = self._compute(self.image_auroc, scores, labels)
        else:
            skipped.append(
                f"image AUROC (the {stage} set has {anomalous} anomalous and {normal} normal images; both are needed)"
            )
        pixel_ok = anomalous > 0 and bool(results.has_mask[labels == 1].all())
        positives = int(results.masks.sum()) if pixel_ok else 0
        negatives = results.masks.numel() - positives
        if pixel_ok and positives and negatives:
            values["pixel_auroc"] = self._compute(self.pixel_auroc, results.maps, results.masks)
            values["pro"] = self._compute(self.pro, results.maps, results.masks)
        else:
            reason = (
                "no anomalous image" if anomalous == 0
                else "anomalous images without masks" if not pixel_ok
                else "masks mark no anomalous pixel" if positives == 0 else "no normal pixel"
            )
            skipped.append(f"pixel AUROC and PRO ({reason})")
        tau, theta = self.image_threshold, self.pixel_threshold
        if anomalous and math.isfinite(tau):
            precision, recall, f1 = precision_recall_f1(scores, labels.clamp_min(0), tau)
            values.update(image_f1=float(f1), image_precision=float(precision), image_recall=float(recall))
        if pixel_ok and positives and math.isfinite(theta):
            _, _, f1 = precision_recall_f1(results.maps, results.masks, theta)
            values["pixel_f1"] = float(f1)
        if math.isfinite(tau):
            values["image_threshold"] = tau
        if math.isfinite(theta):
            values["pixel_threshold"] = theta
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, rank_zero_only=True)
        if skipped:
            rank_zero_warn(f"{stage}: not computed: " + "; ".join(skipped) + ".")
        return values

    def validation_step(self, batch: Any, batch_idx: int) -> Optional[Dict[str, Any]]:
        if self.trainer.sanity_checking or not self.model.is_fitted:
            return None
        return self._evaluate_batch(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._eval_parts = []
            return
        if not self.model.is_fitted:
            self._eval_parts = []
            rank_zero_warn("validation skipped: the model has no bank yet.")
            return
        results = self._gather_results()
        self.val_results = results
        if self.hparams.threshold_method == "f1":
            self._fit_f1_thresholds(results)
        self._log_metrics("val", results)

    def _fit_f1_thresholds(self, results: EvaluationResults) -> None:
        labels = results.labels
        if (labels == 1).any() and (labels == 0).any():
            threshold, f1, _, _ = f1_optimal_threshold(results.scores, labels)
            self.model.image_threshold.fill_(float(threshold))
            rank_zero_info(f"image threshold at the F1-optimal point of the validation set: {float(threshold):.6g} (F1 {float(f1):.4f})")
        else:
            rank_zero_warn("threshold_method='f1' needs normal and anomalous validation images: image threshold unchanged.")
        pixel_ok = bool((labels == 1).any()) and bool(results.has_mask[labels == 1].all()) and bool(results.masks.any())
        if pixel_ok:
            threshold, f1, _, _ = f1_optimal_threshold(results.maps, results.masks)
            self.model.pixel_threshold.fill_(float(threshold))
            rank_zero_info(f"pixel threshold at the F1-optimal point of the validation set: {float(threshold):.6g} (F1 {float(f1):.4f})")
        else:
            rank_zero_warn("threshold_method='f1' needs validation masks: pixel threshold unchanged.")

    def on_test_epoch_start(self) -> None:
        self._require_fitted()
        self._eval_parts = []
        self.test_results = None
        self._fallback_index = 0

    def test_step(self, batch: Any, batch_idx: int) -> Dict[str, Any]:
        return self._evaluate_batch(batch)

    def on_test_epoch_end(self) -> None:
        results = self._gather_results()
        self.test_results = results
        self._log_metrics("test", results)

    def on_predict_epoch_start(self) -> None:
        self._require_fitted()
        self._fallback_index = 0

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Any]:
        data = self._unpack(batch)
        out = self.model(data["image"])
        tau, theta = self.image_threshold, self.pixel_threshold
        return {
            "paths": list(data["path"]),
            "relpaths": list(data.get("relpath", [os.path.basename(p) for p in data["path"]])),
            "indices": data["index"],
            "image_scores": out.image_scores,
            "normalized_scores": normalize_scores(out.image_scores, tau),
            "pred_labels": out.image_scores >= tau if math.isfinite(tau) else torch.zeros_like(out.image_scores, dtype=torch.bool),
            "anomaly_maps": out.anomaly_maps,
            "pred_masks": out.anomaly_maps >= theta if math.isfinite(theta) else torch.zeros_like(out.anomaly_maps, dtype=torch.bool),
            "image_threshold": tau,
            "pixel_threshold": theta,
        }

    def forward(self, images: Tensor):  # type: ignore[override]
        """Raw image scores ``[B]`` and maps ``[B, H, W]`` for images ``[B, 3, H, W]`` in [0, 1]."""
        return self.model(images)
