"""The Trainer-free detector: a fitted checkpoint in; files, PIL images, arrays or tensors of any size in; one record per image out.

::

    detector = Detector.from_checkpoint("fit.ckpt")
    for found in detector(["a.png", pil_image, uint8_array]):
        print(found.score, found.decision, found.anomaly_map.shape)   # map at the image's own size

Inputs (a single item or a list; sizes may differ): paths, encoded image bytes, PIL images, numpy
arrays and torch tensors, by the rules of :mod:`lightning_ad.data.inputs` (which also names what it
refuses, and why).

Every image is then brought to 8-bit RGB ``[H0, W0, 3]`` and goes through the checkpoint's
input contract (:class:`~lightning_ad.data.contract.InputContract`) with
:class:`~lightning_ad.data.transforms.Preprocess` (resize to ``image_size``, bilinear with
antialiasing, then centre crop to ``crop_size``), exactly as the datamodules serve it, so a
picture scores the same here as in ``lightning-ad predict``. The checkpoint is read by
:mod:`lightning_ad.inference.checkpoint` (:func:`~lightning_ad.inference.checkpoint.load_model`).

Maps at the original size (the rule)
    The model's map covers the crop ``[h, w]`` of the resized image ``[Hr, Wr]``, whose
    top-left corner is at ``(top, left)`` (torchvision's centre crop). Pixel ``(y, x)`` of the
    original image ``[H0, W0]`` has its centre at ``sy = (y + 0.5) Hr / H0`` in the resized
    image (likewise ``sx``).

    * It was inspected when the resized pixel holding that centre, ``floor(sy)``, lies in
      ``top .. top + h - 1`` (and likewise for ``x``); otherwise the crop removed it: its
      value is NaN and it is never in the mask.
    * An inspected pixel gets the map bilinearly interpolated (``align_corners=False``
      convention) at ``(sy - 0.5 - top, sx - 0.5 - left)`` in the crop's pixel grid, clamped
      to the crop (the edge value is repeated, as ``F.interpolate`` does at borders). So
      values and validity are resized separately and NaN never bleeds into inspected pixels.
    * Without a crop this is plain ``F.interpolate(map, (H0, W0), mode="bilinear",
      align_corners=False)``.

    The rule is two fixed matrices per image size
    (:func:`~lightning_ad.inference.geometry.map_resize_matrices`); the exported models
    (:mod:`lightning_ad.inference.export`) bake the same matrices in.

Thresholds are raw feature distances: those in use in the checkpoint (set by hand or learned,
:func:`~lightning_ad.inference.checkpoint.thresholds_in_use`); NaN when unknown (then ``decision`` and
``mask`` are None and ``normalized_score`` is NaN).

Each image's result is a :class:`~lightning_ad.inference.detection.Detection`.

Growing the bank: :meth:`Detector.add_normal` adds confirmed-good images and returns a new detector
(this one is left as it is), with everything learned from the bank learned again, optionally written
to a new checkpoint.
"""

from __future__ import annotations

import copy
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .. import checks
from ..core.calibration import CalibrationSettings
from ..core.spade import SpadeModel
from ..core.thresholds import decide, normalize_scores
from ..data.contract import ContractLike, InputContract

# Names this module held before they moved, still importable from here; import them from their homes:
# the inputs (lightning_ad.data.inputs), checkpoint reading (.checkpoint), the record's picture (.detection).
from ..data.inputs import (
    ImageInput,
    as_rgb_uint8,  # noqa: F401
    read_images,
)
from ..errors import CheckpointError, ConfigurationError, DataError
from . import checkpoint as ckpt
from .checkpoint import load_model, model_settings, saved_contract  # noqa: F401
from .detection import (
    Detection,
    overlay_for,  # noqa: F401
)
from .geometry import crop_offsets, map_resize_matrices, restore_map  # noqa: F401
from .photo_map import restore_map_and_mask

__all__ = ["Detector", "scoring_facts"]


def scoring_facts(model: SpadeModel, image_threshold: float, pixel_threshold: float) -> Dict[str, Any]:
    """JSON facts of what makes a score: version, backbone, levels, K values, image score, thresholds (None: unknown)."""
    from ..version import __version__

    def finite(value: float) -> Optional[float]:
        return value if math.isfinite(value) else None

    return {
        "lightning_ad_version": __version__, "backbone": model.backbone_name, "layers": list(model.layers),
        "image_k": model.image_k, "gallery_k": model.gallery_k, "image_score": model.image_score,
        "image_score_q": model.image_score_q, "search_radius": model.search_radius, "kappa": model.kappa, "sigma": model.sigma,
        "aggregate_levels": list(model.aggregate_levels), "pixel_distance": model.pixel_distance,
        "level_balance": model.level_balance, "level_weights": None if model.level_weights is None else list(model.level_weights),
        "level_scales": [float(v) for v in model.level_scales] if model.level_balance != "none" else None, "bank_size": model.bank_size,
        "bank_augment": model.bank_augment, "thresholds": {"image": finite(image_threshold), "pixel": finite(pixel_threshold)},
    }


class Detector:
    """Score images of any size with a fitted SPADE model, without a Trainer.

    Build it with :meth:`from_checkpoint`; call it on one input or a list (see the module
    docstring) to get one :class:`~lightning_ad.inference.detection.Detection` per image, in order.

    Args:
        model: a fitted :class:`SpadeModel`.
        contract: the input contract: an :class:`~lightning_ad.data.contract.InputContract` or its dict form
            ``{"image_size": [H, W], "crop_size": [h, w] or None}``.
        image_threshold: raw image threshold (NaN: unknown).
        pixel_threshold: raw pixel threshold (NaN: unknown).
        device: where the model runs.
        batch_size: images per forward pass.
        meta: extra facts reported by :attr:`info`.
    """

    def __init__(self, model: SpadeModel, contract: ContractLike, image_threshold: float = math.nan,
                 pixel_threshold: float = math.nan, device: Union[str, torch.device] = "cpu", batch_size: int = 8,
                 meta: Optional[Dict[str, Any]] = None) -> None:
        checks.positive_int("batch_size", batch_size)
        model.require_fitted()
        #: The input contract the images are prepared by.
        self.input_contract = InputContract.of(contract)
        self.preprocess = self.input_contract.preprocess()
        if tuple(self.preprocess.output_size) != tuple(model.image_size):
            raise CheckpointError(
                f"the input contract {self.contract} serves {list(self.preprocess.output_size)} images but the bank "
                f"was fitted at {list(model.image_size)}: the checkpoint is inconsistent; fit again."
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.image_threshold = float(image_threshold)
        self.pixel_threshold = float(pixel_threshold)
        self.batch_size = batch_size
        self._meta = dict(meta or {})

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], device: Union[str, torch.device] = "cpu", batch_size: int = 8) -> "Detector":
        """The detector of a checkpoint written by ``lightning-ad fit`` (see
        :func:`~lightning_ad.inference.checkpoint.load_model` for its errors)."""
        model, hp, meta = ckpt.load_model(path)
        thresholds = ckpt.thresholds_in_use(model, hp, meta)
        detector = cls(model, ckpt.fitted_contract(meta), image_threshold=thresholds.image, pixel_threshold=thresholds.pixel,
                       device=device, batch_size=batch_size,
                       meta={"checkpoint": str(path), "bank_size": int(meta.get("bank_size", model.bank_size)),
                             "threshold_source": meta.get("thresholds") or {}, "bank_changed": meta.get("bank_changed")})
        detector._source = (Path(path), hp)
        return detector

    # ------------------------------------------------------------------ growing the bank

    def add_normal(self, images: Union[ImageInput, Iterable[ImageInput]], save_to: Optional[Union[str, Path]] = None,
                   say: Optional[Any] = None) -> "Detector":
        """A new detector whose bank also holds ``images`` (confirmed good; any input :meth:`__call__` takes), with
        its thresholds, scales and ``search_radius: auto`` learned again as a fit on all the images would. This
        detector is left as it is (requests in flight finish on it). An image already in the bank (same content)
        is skipped and named. ``save_to``: write the new checkpoint there, atomically (a new file; the checkpoint
        this detector came from is never changed). ``say``: where the report lines go (default: print)."""
        say = print if say is None else say
        prepared = self.prepare(images)
        if not prepared:
            raise DataError("add_normal: no image given.")
        source = getattr(self, "_source", None)
        if save_to is not None and source is None:
            raise ConfigurationError("add_normal(save_to=...) needs a detector built with Detector.from_checkpoint: "
                                     "the new checkpoint is made from that one.")
        hp = source[1] if source is not None else {}
        if save_to is not None and Path(save_to).resolve() == source[0].resolve():
            raise ConfigurationError(f"add_normal: save_to={str(save_to)!r} is the checkpoint this detector came from; "
                                     "name a new file (the old checkpoint is kept as it was).")
        model = copy.deepcopy(self.model)
        if model.bank.streams and save_to is not None:  # new rows go to files of their own beside the new checkpoint
            model.bank.directory = str(Path(save_to).parent)
        batch = torch.stack([self.preprocess.image(rgb) for rgb, _ in prepared])
        names = [path or f"image {i}" for i, (_, path) in enumerate(prepared)]
        settings = CalibrationSettings.from_hparams(hp, learn=True)
        kept = (float(model.image_threshold), float(model.pixel_threshold))
        if hp.get("threshold_method") == "f1":  # F1 thresholds came from a validation set: kept as they are
            settings = settings._replace(image_threshold=settings.image_threshold if settings.image_threshold is not None
                                         else kept[0], pixel_threshold=settings.pixel_threshold
                                         if settings.pixel_threshold is not None else kept[1])
        before = model.bank_size
        with torch.inference_mode():
            skipped = model.add_images(batch.to(self.device), batch_size=self.batch_size, settings=settings, say=say)
        for position, earlier in skipped:
            say(f"skipped {names[position]}: its content is already in the "
                + ("bank." if earlier < 0 else f"images given ({names[earlier]})."))
        changed = datetime.now(timezone.utc).isoformat(timespec="seconds")
        learned = dict(model.calibration or {})
        if hp.get("threshold_method") == "f1":  # kept from the validation set: their record stays as it was
            learned = {k: v for k, v in learned.items() if k not in ("image", "pixel") or hp.get(f"{k}_threshold") is not None}
        meta = {**self._meta, "bank_size": model.bank_size, "bank_changed": changed if model.bank_size > before else
                self._meta.get("bank_changed"), "threshold_source": {**self._meta.get("threshold_source", {}),
                                                                     **learned}}
        grown = Detector(model, self.input_contract, float(model.image_threshold), float(model.pixel_threshold),
                         device=self.device, batch_size=self.batch_size, meta=meta)
        if save_to is not None:
            grown._source = (Path(save_to), hp)
            grown._meta["checkpoint"] = str(save_to)
            ckpt.write_grown(source[0], Path(save_to), model, meta["threshold_source"], changed)
        elif source is not None:
            grown._source = source
        return grown

    # ------------------------------------------------------------------ facts

    @property
    def contract(self) -> Dict[str, Any]:
        """The input contract in its dict form ``{"image_size": [H, W], "crop_size": [h, w] or None}``."""
        return self.input_contract.as_dict()

    @property
    def info(self) -> Dict[str, Any]:
        """JSON-serialisable facts: input contract, backbone, levels, K values, thresholds, version."""
        return {
            "input": self.input_contract.as_dict(),
            "model_input_size": list(self.model.image_size),
            **scoring_facts(self.model, self.image_threshold, self.pixel_threshold),
            "scores": "raw feature distances; normalized = score / (2 t) below the image threshold t, "
                      "1 - t / (2 score) above (0.5 at t)",
            **{k: v for k, v in self._meta.items() if k in ("threshold_source", "bank_changed")},
        }

    # ------------------------------------------------------------------ scoring

    def prepare(self, images: Union[ImageInput, Iterable[ImageInput]]) -> List[Tuple[np.ndarray, Optional[str]]]:
        """Inputs -> ``[(rgb uint8 [H0, W0, 3], path or None)]`` (decoding and checks only:
        :func:`~lightning_ad.data.inputs.read_images`)."""
        return read_images(images)

    def score_tensor(self, batch: Tensor) -> Tuple[Tensor, Tensor]:
        """Raw scores ``[B]`` and maps ``[B, h, w]`` of preprocessed images ``[B, 3, h, w]`` in [0, 1]."""
        with torch.inference_mode():
            out = self.model(batch.to(self.device))
        return out.image_scores.detach().cpu(), out.anomaly_maps.detach().cpu()

    def __call__(self, images: Union[ImageInput, Iterable[ImageInput]]) -> List[Detection]:
        prepared = self.prepare(images)
        results: List[Detection] = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            batch = torch.stack([self.preprocess.image(rgb) for rgb, _ in chunk])
            scores, maps = self.score_tensor(batch)
            normalized = normalize_scores(scores.double(), self.image_threshold)
            decisions = decide(scores, self.image_threshold).tolist()
            for (rgb, path), score, norm, small, decided in zip(chunk, scores.double().tolist(), normalized.tolist(), maps, decisions):
                size = (int(rgb.shape[0]), int(rgb.shape[1]))
                full, mask = restore_map_and_mask(small, size, self.input_contract, self.pixel_threshold)
                full, mask = full.numpy(), (mask.numpy() if mask is not None else None)
                decision = decided if math.isfinite(self.image_threshold) else None
                results.append(Detection(score=float(score), normalized_score=float(norm), decision=decision,
                                         anomaly_map=full, mask=mask, size=size, path=path,
                                         image_threshold=self.image_threshold, pixel_threshold=self.pixel_threshold))
        return results

    def __repr__(self) -> str:
        return (f"Detector(backbone={self.model.backbone_name!r}, bank={self.model.bank_size} images, "
                f"input={self.contract}, device={str(self.device)!r})")
