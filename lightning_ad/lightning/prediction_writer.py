"""The prediction writer: ``predict`` results on disk (a CSV, raw maps, overlays), once per image, under any number of processes.

Names and atomic writes: :mod:`lightning_ad.lightning.outputs`. Maps at each photo's own size:
:func:`lightning_ad.inference.photo_map.restore_map_and_mask` (the rule of the
:class:`~lightning_ad.inference.detector.Detector`). Pictures: :mod:`lightning_ad.inference.visualize`
(heatmap scale: the pixel threshold is the middle colour; outlines: prediction white; a legend
strip with the score and the colour bar under each overlay).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.utilities import rank_zero_info

from ..data.images import image_size
from ..errors import ConfigurationError
from ..inference import visualize as V
from ..inference.detection import Detection, overlay_for
from ..inference.photo_map import restore_map_and_mask
from .outputs import OutputNames, batch_image, dataloaders, dataset_relpaths, is_within, save_csv, save_map_tiff, save_png
from .results import ImageResults

__all__ = ["PredictionWriter", "CSV_COLUMNS", "PREDICTIONS_CSV", "detection_at_original_size"]

PREDICTIONS_CSV = "predictions.csv"
CSV_COLUMNS = ("path", "relpath", "image_score", "normalized_score", "label", "map_file", "overlay_file")
_PART_PREFIX = ".predictions.part-"


def detection_at_original_size(results: ImageResults, i: int, contract: Optional[Dict[str, Any]]) -> Optional[Detection]:
    """Image ``i`` of ``results`` as a :class:`~lightning_ad.inference.detection.Detection` at its file's own size
    (map NaN where the crop removed a border: :func:`~lightning_ad.inference.photo_map.restore_map_and_mask`), or
    None when it has no file or the input contract is unknown."""
    path = results.path[i]
    if not contract or not path or not os.path.isfile(path):
        return None
    size = image_size(Path(path))
    full, mask = restore_map_and_mask(results.anomaly_map[i], size, contract, results.pixel_threshold)
    decision = results.decision
    return Detection(
        score=float(results.score[i]), normalized_score=float(results.normalized_score[i]),
        decision=None if decision is None else bool(decision[i]), anomaly_map=full.numpy(),
        mask=None if mask is None else mask.numpy(), size=tuple(size), path=path,
        image_threshold=results.image_threshold, pixel_threshold=results.pixel_threshold,
    )


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results to disk, per batch, once per image, under any number of processes.

    Output folder (``output_dir``; default: a new ``<default_root_dir>/predictions/version_<n>``,
    never an existing one)::

        predictions.csv           path, relpath, image_score (raw), normalized_score
                                  (threshold = 0.5), label (1 anomalous / 0 normal at the
                                  image threshold; empty when it is unknown), map_file,
                                  overlay_file; one row per image, sorted by path
        maps/<stem>.tiff          raw anomaly map, float32 TIFF (lossless), at the image
                                  file's own size; NaN where the centre crop removed a
                                  border (not inspected; see :mod:`lightning_ad.inference.detector`)
        overlays/<stem>.png       heatmap over the image at its own size, predicted mask
                                  outlined, uninspected borders greyed and hatched; under
                                  it a legend strip (:func:`~lightning_ad.inference.visualize.with_legend`:
                                  score, normalised score, decision, the map's colour bar);
                                  an image narrower than the legend is padded on the right

    ``<stem>`` is the image's ``relpath`` without its extension (``sub/a.jpg`` gives
    ``sub/a.png``); images of the set that share a stem (``a.jpg`` beside ``a.png``)
    keep their extensions (``a.jpg.png``, ``a.png.png``) so that no output collides.

    An ``output_dir`` that exists and is not empty is refused, as is any folder that is,
    or lies inside, the folder of the input images; input images are never written.
    Each process writes its images and its own part of the CSV; after a barrier, rank 0
    merges the parts into ``predictions.csv``. It expects the
    :class:`~lightning_ad.lightning.results.ImageResults` returned by :meth:`lightning_ad.Spade.predict_step`.

    With your own ``Trainer``: ``pl.Trainer(callbacks=[PredictionWriter("out")]).predict(model, datamodule=dm)``.

    Args:
        output_dir: output folder (created); None: a new version folder under the
            trainer's ``default_root_dir``.
        write_maps: write the raw maps (TIFF).
        write_overlays: write the heatmap overlays (PNG).
        overlay_alpha: weight of the heatmap over the image.
        enabled: False turns the writer off (``predict`` still returns its outputs).
    """

    def __init__(
        self,
        output_dir: Optional[str] = None,
        write_maps: bool = True,
        write_overlays: bool = True,
        overlay_alpha: float = 0.5,
        enabled: bool = True,
    ) -> None:
        super().__init__("batch")
        if not 0.0 <= float(overlay_alpha) <= 1.0:
            raise ConfigurationError(f"prediction_writer overlay_alpha={overlay_alpha!r} must lie in [0, 1]")
        self.output_dir = output_dir
        self.write_maps = bool(write_maps)
        self.write_overlays = bool(write_overlays)
        self.overlay_alpha = float(overlay_alpha)
        self.enabled = bool(enabled)
        #: the folder of the latest (or running) predict call; None before the first.
        self.output_path: Optional[Path] = None
        self._active = False
        self._part: Optional[Any] = None
        self._part_writer: Optional[Any] = None
        self._names = OutputNames()
        self._count = 0

    # -------------------------------------------------------------- the folder

    @staticmethod
    def _input_folders(trainer: "pl.Trainer") -> List[Path]:
        """Folders of the images to predict: the datamodule's ``predict_dir`` and each sample's folder."""
        folders: Set[Path] = set()
        predict_dir = getattr(trainer.datamodule, "predict_dir", None) if trainer.datamodule is not None else None
        if predict_dir:
            folders.add(Path(predict_dir))
        for loader in dataloaders(trainer.predict_dataloaders):
            samples = getattr(getattr(loader, "dataset", None), "samples", None)
            for sample in samples or ():
                path = getattr(sample, "path", None)
                if path is not None:
                    folders.add(Path(path).parent)
        return sorted(folders)

    def _choose_folder(self, trainer: "pl.Trainer") -> Tuple[Optional[str], Optional[str]]:
        """(folder, None) after creating it, or (None, error message). Runs on rank 0."""
        inputs = self._input_folders(trainer)

        def inside_input(folder: Path) -> Optional[str]:
            for source in inputs:
                if is_within(folder, source):
                    return (
                        f"the prediction output folder {str(folder)!r} is, or lies inside, the folder of the input "
                        f"images {str(source)!r}: outputs are never written among the inputs. Set "
                        "--prediction_writer.output_dir (or trainer default_root_dir) to a folder outside it."
                    )
            return None

        if self.output_dir is not None:
            folder = Path(self.output_dir).expanduser()
            problem = inside_input(folder)
            if problem:
                return None, problem
            if folder.exists() and not folder.is_dir():
                return None, f"prediction_writer output_dir {str(folder)!r} exists and is not a folder."
            if folder.is_dir() and any(folder.iterdir()):
                return None, (
                    f"prediction_writer output_dir {str(folder)!r} exists and is not empty: prediction files are "
                    "never overwritten. Choose a new folder, or leave output_dir unset for a new version folder."
                )
            folder.mkdir(parents=True, exist_ok=True)
            return str(folder), None
        root = Path(trainer.default_root_dir) / "predictions"
        problem = inside_input(root)
        if problem:
            return None, problem
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"version_(\d+)", p.name))]
        version = max(taken, default=-1) + 1
        while True:
            folder = root / f"version_{version}"
            try:
                folder.mkdir()  # never reuse: fails when another run took it
                return str(folder), None
            except FileExistsError:
                version += 1

    def on_predict_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._active = False
        if not self.enabled:
            return
        decision: Tuple[Optional[str], Optional[str]] = (None, None)
        if trainer.is_global_zero:
            try:
                decision = self._choose_folder(trainer)
            except OSError as err:
                decision = (None, f"cannot create the prediction output folder: {err}")
        folder, problem = trainer.strategy.broadcast(decision, src=0)
        if problem:
            raise ConfigurationError(problem)
        assert folder is not None
        self.output_path = Path(folder)
        self._names = OutputNames(dataset_relpaths(trainer.predict_dataloaders))
        self._count = 0
        part = self.output_path / f"{_PART_PREFIX}{trainer.global_rank}.csv"
        self._part = open(part, "w", newline="", encoding="utf-8")
        self._part_writer = csv.writer(self._part)
        self._part_writer.writerow(("dataloader_idx", "index") + CSV_COLUMNS)
        self._active = True
        rank_zero_info(f"writing predictions to {str(self.output_path)!r}")

    # -------------------------------------------------------------- per batch

    def write_on_batch_end(
        self,
        trainer: "pl.Trainer",
        pl_module: "pl.LightningModule",
        prediction: Any,
        batch_indices: Optional[Any],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not self._active:
            return
        if not isinstance(prediction, ImageResults):
            raise ConfigurationError(
                "PredictionWriter expects the ImageResults returned by Spade.predict_step; disable it with "
                "--prediction_writer.enabled false for other modules."
            )
        assert self.output_path is not None and self._part_writer is not None and self._part is not None
        out = self.output_path
        inputs = {os.path.realpath(p) for p in prediction.path if p}
        tau, theta = prediction.image_threshold, prediction.pixel_threshold
        normalized, decisions, pred_masks = prediction.normalized_score, prediction.decision, prediction.pred_mask
        world, rank = trainer.world_size, trainer.global_rank
        contract = getattr(pl_module, "input_contract", None)
        for i in range(len(prediction)):
            index = int(prediction.index[i])
            if world > 1 and index % world != rank:
                continue  # another process owns this image (a stand-in read by a rank that owns none)
            relpath = prediction.relpath[i]
            base = self._names.claim(
                relpath, index,
                lambda b: (out / "maps" / f"{b}.tiff").exists() or (out / "overlays" / f"{b}.png").exists(),
            )
            map_name = f"maps/{base}.tiff" if self.write_maps else ""
            overlay_name = f"overlays/{base}.png" if self.write_overlays else ""
            for name in (map_name, overlay_name):
                if name:
                    target = out / name
                    if not is_within(target, out) or os.path.realpath(target) in inputs:
                        raise ConfigurationError(f"refusing to write {str(target)!r}: it would leave the output folder or replace an input")
            anomaly_map = prediction.anomaly_map[i]
            original = detection_at_original_size(prediction, i, contract)
            if map_name:
                save_map_tiff(out / map_name, original.anomaly_map if original is not None else anomaly_map)
            if overlay_name:
                if original is not None:
                    rgb = overlay_for(original, original.path, alpha=self.overlay_alpha)
                else:
                    pred = pred_masks[i] if pred_masks is not None else None
                    rgb = V.overlay(batch_image(prediction.image, i, anomaly_map.shape), anomaly_map, theta,
                                    pred_mask=pred, alpha=self.overlay_alpha)
                save_png(out / overlay_name, V.with_legend(rgb, theta, float(prediction.score[i]), tau))
            known = math.isfinite(tau)
            self._part_writer.writerow((
                dataloader_idx, index, prediction.path[i], relpath, repr(float(prediction.score[i])),
                repr(float(normalized[i])) if known else "",
                int(bool(decisions[i])) if decisions is not None else "",
                map_name, overlay_name,
            ))
            self._count += 1
        self._part.flush()

    # -------------------------------------------------------------- the end

    def _merge(self, world: int) -> int:
        assert self.output_path is not None
        rows: Dict[Tuple[str, str], List[str]] = {}
        parts = [self.output_path / f"{_PART_PREFIX}{rank}.csv" for rank in range(world)]
        for part in parts:
            if not part.is_file():
                raise RuntimeError(f"prediction part file {str(part)!r} is missing: a process did not finish.")
            with open(part, newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                next(reader, None)
                for row in reader:
                    rows.setdefault((row[0], row[1]), row[2:])  # each image once
        ordered = sorted(rows.values(), key=lambda r: (r[0], r[1]))
        save_csv(self.output_path / PREDICTIONS_CSV, CSV_COLUMNS, ordered)
        for part in parts:
            with contextlib.suppress(OSError):
                part.unlink()
        return len(ordered)

    def on_predict_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self._active:
            return
        self._active = False
        if self._part is not None:
            self._part.close()
            self._part = self._part_writer = None
        trainer.strategy.barrier("lightning_ad_prediction_writer_parts")
        if trainer.is_global_zero:
            count = self._merge(trainer.world_size)
            rank_zero_info(
                f"\npredictions of {count} images written to {str(self.output_path)!r} ({PREDICTIONS_CSV}"
                + (", maps/" if self.write_maps else "") + (", overlays/" if self.write_overlays else "") + ")"
            )
        trainer.strategy.barrier("lightning_ad_prediction_writer_csv")

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        """A failed run leaves no part file, and no folder when it had written nothing else."""
        if self._part is not None:
            with contextlib.suppress(OSError):
                self._part.close()
            self._part = self._part_writer = None
        if self._active and self.output_path is not None:
            with contextlib.suppress(OSError):
                (self.output_path / f"{_PART_PREFIX}{trainer.global_rank}.csv").unlink()
            with contextlib.suppress(OSError):
                self.output_path.rmdir()  # only when empty
        self._active = False
