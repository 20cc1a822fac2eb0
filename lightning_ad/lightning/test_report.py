"""The test report: pictures and a per-image CSV of a ``test`` run.

Names and atomic writes: :mod:`lightning_ad.lightning.outputs`. Pictures:
:mod:`lightning_ad.inference.visualize` (heatmap scale: the pixel threshold is the middle colour;
outlines: ground truth magenta, prediction white; a legend strip with the score and the colour
bar under each overlay).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from .. import checks
from ..core.spread import spread_indices
from ..files import atomic_write
from ..inference import visualize as V
from .evaluation import Evaluation, evaluate
from .outputs import OutputNames, batch_image, dataloaders, dataset_relpaths, save_csv, save_png
from .results import ImageResults

__all__ = ["TestReport", "TEST_CSV", "TEST_CSV_COLUMNS", "per_image_rows"]

#: The per-image table of a test run, in the report's folder.
TEST_CSV = "test_images.csv"
TEST_CSV_COLUMNS = (
    "path", "relpath", "label", "image_score", "normalized_score", "decision", "image_threshold", "pixel_threshold",
    "has_mask", "overlay_file",
)


def _number(value: float) -> str:
    """``repr`` of a finite float (exact round trip through ``float``), empty when unknown."""
    return repr(float(value)) if math.isfinite(float(value)) else ""


def per_image_rows(results: ImageResults, overlay_files: Optional[List[str]] = None) -> List[Tuple[Any, ...]]:
    """The rows of :data:`TEST_CSV` (columns :data:`TEST_CSV_COLUMNS`) of gathered test records, in their order.

    ``label`` is the ground truth (1 anomalous, 0 normal; empty when unknown), ``decision`` the
    prediction at the image threshold (1 / 0; empty when the threshold is unknown), scores and
    thresholds raw (``repr``: exact) except ``normalized_score`` (0.5 at the image threshold),
    ``has_mask`` 1 when the image has an annotated mask, ``overlay_file`` the overlay's name in the
    report's folder (empty when none was drawn).
    """
    normalized, decisions = results.normalized_score, results.decision
    files = overlay_files if overlay_files is not None else [""] * len(results)
    rows = []
    for i in range(len(results)):
        label = int(results.label[i])
        rows.append((
            results.path[i], results.relpath[i], label if label in (0, 1) else "", repr(float(results.score[i])),
            _number(normalized[i]), int(bool(decisions[i])) if decisions is not None else "",
            _number(results.image_threshold), _number(results.pixel_threshold), int(bool(results.has_mask[i])), files[i],
        ))
    return rows


class TestReport(Callback):
    """Pictures and a per-image table of a ``test`` run, in ``<log_dir or default_root_dir>/test_report``
    unless ``output_dir`` is set.

    * ``test_images.csv`` (:data:`TEST_CSV`): one row per test image, in the test set's order:
      ``path``, ``relpath``, ``label`` (ground truth), ``image_score`` (raw), ``normalized_score``,
      ``decision``, ``image_threshold``, ``pixel_threshold``, ``has_mask``, ``overlay_file``
      (see ``per_image_rows``); the scores are those of ``pl_module.test_results``.
    * ``overlays/<stem>.png``: heatmap over each test image with the ground-truth
      outline (magenta) and the predicted outline (white, map >= pixel threshold), and a
      legend strip under it (:func:`~lightning_ad.inference.visualize.with_legend`: score,
      normalised score, decision, the map's colour bar); each process draws the images of its
      own batches.
    * ``roc_image.png``, ``roc_pixel.png`` (when the anomalous images have masks):
      ROC curves with the AUROC and the operating point at the threshold.
    * ``score_histogram.png``: image scores of normal and anomalous images, tau marked.

    The table and the figures are written by rank 0 from ``pl_module.test_results`` once the module's
    ``on_test_epoch_end`` has gathered them (in ``on_test_end``: callbacks' epoch-end
    hooks run before the module's), and logged as images to every TensorBoardLogger
    of the trainer. Nothing happens outside ``test`` or when ``enabled`` is False.

    Args:
        output_dir: folder of the report (created; files in it are replaced).
        max_overlays: at most this many overlays, for test images evenly spread over
            the test set (by dataset index); None: all; 0: none.
        log_to_tensorboard: log the figures to TensorBoard loggers.
        enabled: False turns the report off.
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        output_dir: Optional[str] = None,
        max_overlays: Optional[int] = None,
        log_to_tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        checks.non_negative_int("test_report max_overlays", max_overlays, optional=True)
        self.output_dir = output_dir
        self.max_overlays = max_overlays
        self.log_to_tensorboard = bool(log_to_tensorboard)
        self.enabled = bool(enabled)
        #: the folder of the latest (or running) test call; None before the first.
        self.output_path: Optional[Path] = None
        self._active = False
        self._seen: Set[Tuple[int, int]] = set()
        self._chosen: Optional[Set[int]] = None
        self._budget: Optional[int] = None
        self._previous: Any = None
        self._names = OutputNames()

    def on_test_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._active = False
        if not self.enabled:
            return
        if self.output_dir is not None:
            folder = Path(self.output_dir).expanduser()
        else:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "test_report"  # log_dir: on every rank
        folder.mkdir(parents=True, exist_ok=True)
        self.output_path = folder
        self._seen = set()
        loaders = dataloaders(trainer.test_dataloaders)
        relpaths = dataset_relpaths(loaders)
        # one data set: names fixed by dataset index, the same on every process (and in the table)
        self._names = OutputNames(relpaths, range(len(relpaths)) if len(loaders) == 1 else None)
        self._chosen, self._budget = None, None
        if self.max_overlays is not None:
            dataset = getattr(loaders[0], "dataset", None) if len(loaders) == 1 else None
            try:
                count = len(dataset)  # type: ignore[arg-type]
            except TypeError:
                count = None
            if count is not None:
                self._chosen = set(spread_indices(count, self.max_overlays))
            else:  # unknown length: a share of the budget per process
                self._budget = math.ceil(self.max_overlays / max(1, trainer.world_size))
        self._previous = getattr(pl_module, "test_results", None)
        self._active = True

    def on_test_batch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or self.max_overlays == 0 or not isinstance(outputs, ImageResults):
            return
        assert self.output_path is not None
        pred_masks = outputs.pred_mask
        for i in range(len(outputs)):
            index = int(outputs.index[i])
            key = (dataloader_idx, index)
            if key in self._seen:
                continue  # a sample repeated by the distributed sampler
            if self._chosen is not None and index not in self._chosen:
                continue
            if self._budget is not None and len(self._seen) >= self._budget:
                return
            self._seen.add(key)
            base = self._names.name(outputs.relpath[i], index)
            anomaly_map = outputs.anomaly_map[i]
            gt = outputs.mask[i] if bool(outputs.has_mask[i]) else None
            pred = pred_masks[i] if pred_masks is not None else None
            rgb = V.overlay(batch_image(outputs.image, i, anomaly_map.shape), anomaly_map, outputs.pixel_threshold,
                            gt_mask=gt, pred_mask=pred)
            rgb = V.with_legend(rgb, outputs.pixel_threshold, float(outputs.score[i]), outputs.image_threshold)
            save_png(self.output_path / "overlays" / f"{base}.png", rgb)

    def on_test_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._active:
            return
        self._active = False
        if not trainer.is_global_zero:
            return
        assert self.output_path is not None
        results = getattr(pl_module, "test_results", None)
        if results is None or results is self._previous:
            rank_zero_warn(f"test_report: the module left no test_results: no {TEST_CSV}, ROC or histogram written.")
            return
        save_csv(self.output_path / TEST_CSV, TEST_CSV_COLUMNS, per_image_rows(results, self._overlay_files(results)))
        evaluation = getattr(pl_module, "test_evaluation", None) or evaluate(results)
        figures = self._figures(results, evaluation)
        images = {}
        for name, figure in figures.items():
            data = V.figure_to_png(figure)
            atomic_write(self.output_path / f"{name}.png", lambda handle, data=data: handle.write(data))
            images[name] = data
        if self.log_to_tensorboard:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    experiment = logger.experiment
                    for name, data in images.items():
                        experiment.add_image(
                            f"test_report/{name}", V.png_to_array(data), global_step=trainer.global_step, dataformats="HWC"
                        )
                    experiment.flush()
        written = ", ".join([TEST_CSV] + [f"{name}.png" for name in sorted(images)])
        written += ", overlays/" if self.max_overlays != 0 else ""
        rank_zero_info(f"\ntest report written to {str(self.output_path)!r} ({written})")

    def _overlay_files(self, results: ImageResults) -> List[str]:
        """The overlay each image got in this run (``overlays/<stem>.png``), empty where none was drawn."""
        assert self.output_path is not None
        files = []
        for relpath, index in zip(results.relpath, results.index.tolist()):
            name = f"overlays/{self._names.name(relpath, index)}.png"
            if self.max_overlays == 0 or (self._chosen is not None and index not in self._chosen):
                name = ""
            elif self._budget is not None and not (self.output_path / name).is_file():
                name = ""  # a share of the budget per process: only the files say which were drawn
            files.append(name)
        return files

    @staticmethod
    def _figures(results: ImageResults, evaluation: Evaluation) -> Dict[str, Any]:
        tau, theta = results.image_threshold, results.pixel_threshold
        figures: Dict[str, Any] = {}
        if evaluation.image_defined:
            known = results.label >= 0
            figures["roc_image"] = V.roc_figure(results.score[known], results.label[known], tau, title="image-level ROC")
        else:
            rank_zero_warn("test_report: the image ROC needs normal and anomalous test images: not drawn.")
        if evaluation.pixel_defined:
            figures["roc_pixel"] = V.roc_figure(results.anomaly_map, results.mask, theta, title="pixel-level ROC")
        figures["score_histogram"] = V.score_histogram_figure(results.score, results.label, tau, title="test image scores")
        return figures
