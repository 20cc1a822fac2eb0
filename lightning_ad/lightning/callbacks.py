"""Callbacks that put results on disk: :class:`PredictionWriter` (``predict``) and :class:`TestReport` (``test``).

Both write every file atomically (a temporary file in the target folder, then
``os.replace``), so a reader never sees half a file and two processes writing the
same file leave one complete copy. File names come from each sample's ``relpath``
(its path relative to the data set's folder) made safe by :func:`sanitize_relpath`: they
always stay inside the output folder.

Pictures: see :mod:`lightning_ad.inference.visualize` (heatmap scale: the pixel threshold is
the middle colour; outlines: ground truth magenta, prediction white).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Set, Tuple

import numpy as np
import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter, Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from ..core.positions import spread_positions
from ..core.thresholds import decide
from ..data.io import image_size
from ..errors import ConfigurationError
from ..files import atomic_write
from ..inference import visualize as V
from ..inference.detector import Detection, overlay_for
from ..inference.geometry import restore_map
from .evaluation import Evaluation, evaluate
from .results import ImageResults

__all__ = ["PredictionWriter", "TestReport", "sanitize_relpath", "atomic_write", "save_map_tiff", "save_png"]

PREDICTIONS_CSV = "predictions.csv"
CSV_COLUMNS = ("path", "relpath", "image_score", "normalized_score", "label", "map_file", "overlay_file")
_PART_PREFIX = ".predictions.part-"


# ---------------------------------------------------------------------- files


def sanitize_relpath(relpath: Any, fallback: str = "image") -> PurePosixPath:
    """A relative POSIX path that cannot leave the folder it is joined to.

    Backslashes count as separators; a drive (``C:``), the root, empty, ``.`` and
    ``..`` components are dropped, as are control characters. ``"sub/a.png"`` stays
    ``sub/a.png``; ``"../../x.png"`` and ``"/etc/x.png"`` become ``x.png`` and
    ``etc/x.png``. An empty result becomes ``fallback``.
    """
    text = str(relpath if relpath is not None else "").replace("\\", "/")
    text = re.sub(r"^[A-Za-z]:", "", text)
    text = re.sub(r"[\x00-\x1f\x7f]", "_", text)
    parts = [p for p in text.split("/") if p not in ("", ".", "..")]
    return PurePosixPath(*parts) if parts else PurePosixPath(fallback)


def _is_within(child: Path, parent: Path) -> bool:
    """Whether ``child`` is ``parent`` or lies below it (after resolving links and ``..``)."""
    child_r, parent_r = os.path.realpath(child), os.path.realpath(parent)
    try:
        return os.path.commonpath([child_r, parent_r]) == parent_r
    except ValueError:  # different drives
        return False


def save_map_tiff(path: Path, anomaly_map: Any) -> None:
    """Raw map ``[H, W]`` as a float32 TIFF (PIL mode ``F``, uncompressed: lossless), atomically."""
    array = np.ascontiguousarray(V.to_numpy(anomaly_map), dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a map [H, W], got shape {tuple(array.shape)}")
    image = Image.fromarray(array)
    assert image.mode == "F"
    atomic_write(path, lambda handle: image.save(handle, format="TIFF"))


def save_png(path: Path, rgb: np.ndarray) -> None:
    """``[H, W, 3]`` uint8 as PNG, atomically."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def _image_for(images: Optional[Tensor], i: int, hw: Tuple[int, int]) -> np.ndarray:
    """Image ``i`` of the batch as ``[H, W, 3]`` uint8 at the map's size (grey when unavailable)."""
    if images is None:
        return np.full((*hw, 3), 128, np.uint8)
    rgb = V.image_to_uint8(images[i].detach().float().cpu())
    if rgb.shape[:2] != hw:
        rgb = np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.BILINEAR))
    return rgb


def _dataloaders(loaders: Any) -> List[Any]:
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return list(loaders)
    return [loaders]


def output_stems(relpaths: List[str]) -> Dict[str, PurePosixPath]:
    """Output base names (no extension) of a set's images: ``a.jpg`` gives ``a``, unless another
    image of the set shares that stem (``a.jpg`` beside ``a.png``): both then keep their
    extension (``a.jpg``, ``a.png``), so that no two outputs collide.

    >>> output_stems(["x/a.jpg", "x/a.png", "b.bmp"])
    {'x/a.jpg': PurePosixPath('x/a.jpg'), 'x/a.png': PurePosixPath('x/a.png'), 'b.bmp': PurePosixPath('b')}
    """
    safe = {r: sanitize_relpath(r) for r in relpaths}
    stems = [str(p.with_suffix("")) for p in safe.values()]
    return {r: (p if stems.count(str(p.with_suffix(""))) > 1 else p.with_suffix("")) for r, p in safe.items()}


class _Names:
    """Unique output base names per image: its stem (see :func:`output_stems`), ``<stem>~<index>`` on a clash."""

    def __init__(self, relpaths: Optional[List[str]] = None) -> None:
        self.stems = output_stems(relpaths or [])
        self.used: Set[str] = set()

    def claim(self, relpath: str, index: int, exists: Callable[[PurePosixPath], bool]) -> PurePosixPath:
        base = self.stems.get(relpath) or output_stems([relpath])[relpath]
        if str(base) in self.used or exists(base):
            base = base.with_name(f"{base.name}~{index}")
        self.used.add(str(base))
        return base


def detection_at_original_size(results: ImageResults, i: int, contract: Optional[Dict[str, Any]]) -> Optional[Detection]:
    """Image ``i`` of ``results`` as a :class:`~lightning_ad.inference.detector.Detection` at its file's own size
    (map NaN where the crop removed a border; see :mod:`lightning_ad.inference.detector`), or None when it has
    no file or the input contract is unknown."""
    path = results.path[i]
    if not contract or not path or not os.path.isfile(path):
        return None
    size = image_size(Path(path))
    full = restore_map(results.anomaly_map[i], size, contract)
    theta, decision = results.pixel_threshold, results.decision
    mask = decide(full, theta).numpy() if math.isfinite(theta) else None
    full = full.numpy()
    return Detection(
        score=float(results.score[i]), normalized_score=float(results.normalized_score[i]),
        decision=None if decision is None else bool(decision[i]), anomaly_map=full, mask=mask, size=tuple(size),
        path=path, image_threshold=results.image_threshold, pixel_threshold=theta,
    )


def _dataset_relpaths(loaders: Any) -> List[str]:
    """``relpath`` of every sample of the loaders' data sets (empty when they do not say)."""
    relpaths: List[str] = []
    for loader in _dataloaders(loaders):
        for sample in getattr(getattr(loader, "dataset", None), "samples", None) or ():
            path = getattr(sample, "path", None)
            relpaths.append(str(getattr(sample, "relpath", None) or (Path(path).name if path else "")))
    return relpaths


# ---------------------------------------------------------------------- prediction writer


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
                                  outlined, uninspected borders greyed and hatched

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
        self._names = _Names()
        self._count = 0

    # -------------------------------------------------------------- the folder

    @staticmethod
    def _input_folders(trainer: "pl.Trainer") -> List[Path]:
        """Folders of the images to predict: the datamodule's ``predict_dir`` and each sample's folder."""
        folders: Set[Path] = set()
        predict_dir = getattr(trainer.datamodule, "predict_dir", None) if trainer.datamodule is not None else None
        if predict_dir:
            folders.add(Path(predict_dir))
        for loader in _dataloaders(trainer.predict_dataloaders):
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
                if _is_within(folder, source):
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
        self._names = _Names(_dataset_relpaths(trainer.predict_dataloaders))
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
                    if not _is_within(target, out) or os.path.realpath(target) in inputs:
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
                    rgb = V.overlay(_image_for(prediction.image, i, anomaly_map.shape), anomaly_map, theta,
                                    pred_mask=pred, alpha=self.overlay_alpha)
                save_png(out / overlay_name, rgb)
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

        def write(handle: BinaryIO) -> None:
            import io

            text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
            writer = csv.writer(text)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(ordered)
            text.flush()
            text.detach()

        atomic_write(self.output_path / PREDICTIONS_CSV, write)
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


# ---------------------------------------------------------------------- test report


class TestReport(Callback):
    """Pictures of a ``test`` run, in ``<log_dir or default_root_dir>/test_report`` unless ``output_dir`` is set.

    * ``overlays/<stem>.png``: heatmap over each test image with the ground-truth
      outline (magenta) and the predicted outline (white, map >= pixel threshold);
      each process draws the images of its own batches.
    * ``roc_image.png``, ``roc_pixel.png`` (when the anomalous images have masks):
      ROC curves with the AUROC and the operating point at the threshold.
    * ``score_histogram.png``: image scores of normal and anomalous images, tau marked.

    The figures are drawn by rank 0 from ``pl_module.test_results`` once the module's
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
        if max_overlays is not None and (isinstance(max_overlays, bool) or not isinstance(max_overlays, int) or max_overlays < 0):
            raise ConfigurationError(f"test_report max_overlays={max_overlays!r} must be an integer >= 0 or null")
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
        self._names = _Names()

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
        self._names = _Names(_dataset_relpaths(trainer.test_dataloaders))
        self._chosen, self._budget = None, None
        if self.max_overlays is not None:
            loaders = _dataloaders(trainer.test_dataloaders)
            dataset = getattr(loaders[0], "dataset", None) if len(loaders) == 1 else None
            try:
                count = len(dataset)  # type: ignore[arg-type]
            except TypeError:
                count = None
            if count is not None:
                self._chosen = set(spread_positions(count, self.max_overlays))
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
            base = self._names.claim(outputs.relpath[i], index, lambda b: False)
            anomaly_map = outputs.anomaly_map[i]
            gt = outputs.mask[i] if bool(outputs.has_mask[i]) else None
            pred = pred_masks[i] if pred_masks is not None else None
            rgb = V.overlay(_image_for(outputs.image, i, anomaly_map.shape), anomaly_map, outputs.pixel_threshold,
                            gt_mask=gt, pred_mask=pred)
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
            rank_zero_warn("test_report: the module left no test_results: no ROC or histogram written.")
            return
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
        rank_zero_info(f"\ntest report written to {str(self.output_path)!r} ({', '.join(sorted(images)) or 'overlays only'})")

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
