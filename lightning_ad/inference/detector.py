"""The Trainer-free detector: a fitted checkpoint in; files, PIL images, arrays or tensors of any size in; one record per image out.

::

    detector = Detector.from_checkpoint("fit.ckpt")
    for found in detector(["a.png", pil_image, uint8_array]):
        print(found.score, found.decision, found.anomaly_map.shape)   # map at the image's own size

Inputs (a single item or a list; sizes may differ)
    * a path (``str`` / ``Path``): decoded by :func:`lightning_ad.data.io.load_image`, with its
      rules (EXIF orientation, the modes' rules below, grey -> RGB, alpha dropped) and its errors
      (:class:`~lightning_ad.errors.ImageDecodeError` naming the file);
    * encoded image bytes (``bytes``, ``bytearray``, ``memoryview``: a file's content, PNG, JPEG,
      BMP, TIFF, WebP or PNM): decoded by the same rules as a file
      (:func:`lightning_ad.data.io.decode_image_bytes`), so they score exactly as the file;
    * a numpy array ``[H, W, 3]``, ``[H, W, 1]`` or ``[H, W]`` (the array rule): ``uint8`` as is,
      ``bool`` as 0 / 255, ``uint16`` scaled by 255/65535 and rounded (as 16-bit files), float in
      [0, 1] quantised to 8 bits (``round(255 x)``); other integer types, float values outside
      [0, 1] or not finite, and any other shape (4 channels included: an array has no mode that
      says whether it is RGBA, BGRA or CMYK) are refused with a
      :class:`~lightning_ad.errors.DataError` naming the input;
    * a PIL image: oriented by its EXIF tag, then read by the rule of its pixel array
      ``np.asarray(image)``, so it scores exactly as that array or is refused with an error that
      names its mode and this rule. Only what the mode says is applied first: the alpha channel
      dropped (``LA``, ``RGBA``, ``PA``), the palette looked up (``P``), other colour spaces
      converted by PIL (``CMYK``, ``YCbCr`` ...). So ``1`` is 0 / 255, ``L``, ``RGB`` and ``I;16``
      are read as uint8 / uint16 arrays, ``F`` must hold values in [0, 1], and ``I`` (int32) is
      refused (e.g. ``image.convert("I")``), except when it was decoded from a 16-bit file (PNG,
      PGM/PPM, 16-bit TIFF: Pillow opens some as ``I``), which is 16-bit data as the file is;
    * a torch tensor ``[3, H, W]``, ``[1, H, W]`` or ``[H, W]`` (channels first), ``uint8``,
      ``uint16``, ``bool`` or float in [0, 1], converted as the arrays; a 4-D tensor
      ``[B, 3, H, W]`` (or array ``[B, H, W, 3]``) is taken as ``B`` images.

    Anything else (``None``, a number, a dict ...) is refused with a
    :class:`~lightning_ad.errors.DataError` naming its type and what is accepted.

Every image is then brought to 8-bit RGB ``[H0, W0, 3]`` and goes through the checkpoint's
input contract with :class:`~lightning_ad.data.transforms.Preprocess` (resize to
``image_size``, bilinear with antialiasing, then centre crop to ``crop_size``), exactly as
the datamodules serve it, so a picture scores the same here as in ``lightning-ad predict``.

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

    The rule is two fixed matrices per image size (:func:`map_resize_matrices`); the
    exported models (:mod:`lightning_ad.inference.export`) bake the same matrices in.

Thresholds are raw feature distances: those in use in the checkpoint (set by hand or learned,
:func:`~lightning_ad.inference.checkpoint.thresholds_in_use`); NaN when unknown (then ``decision`` and
``mask`` are None and ``normalized_score`` is NaN).

Growing the bank: :meth:`Detector.add_normal` adds confirmed-good images and returns a new detector
(this one is left as it is), with everything learned from the bank learned again, optionally written
to a new checkpoint.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..core.calibration import CalibrationSettings
from ..core.spade import SpadeModel
from ..core.thresholds import decide, normalize_scores
from ..data.io import array_to_rgb, decode_image_bytes, load_image, pil_to_rgb
from ..data.transforms import Preprocess
from ..errors import CheckpointError, ConfigurationError, DataError
from . import checkpoint as ckpt
from .geometry import crop_offsets, map_resize_matrices, restore_map

__all__ = [
    "Detector",
    "Detection",
    "saved_contract",
    "crop_offsets",
    "map_resize_matrices",
    "restore_map",
    "as_rgb_uint8",
    "overlay_for",
    "load_model",
]

ImageInput = Union[str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray, Tensor]

#: Hatch period (pixels) and grey of the uninspected border in overlays.
_HATCH_PERIOD = 8
_BORDER_GREY = 128


# ---------------------------------------------------------------------- the input contract


def saved_contract(meta: Dict[str, Any]) -> Dict[str, Any]:
    """``{"image_size": [H, W], "crop_size": [h, w] or None}`` of a checkpoint's lightning_ad section.

    Checkpoints written before the contract was recorded served the bank's size
    (``meta["image_size"]``) with no crop.
    """
    contract = meta.get("input")
    if isinstance(contract, dict) and contract.get("image_size") is not None:
        crop = contract.get("crop_size")
        return {"image_size": [int(v) for v in contract["image_size"]],
                "crop_size": [int(v) for v in crop] if crop is not None else None}
    size = meta.get("image_size")
    if not size or len(size) != 2 or not all(int(v) > 0 for v in size):
        raise CheckpointError("this checkpoint records no input size (lightning_ad section without 'image_size'): fit again.")
    return {"image_size": [int(v) for v in size], "crop_size": None}


# ---------------------------------------------------------------------- inputs


#: What a Detector takes, for messages.
ACCEPTED = ("a path (str or Path), encoded image bytes (bytes, bytearray or memoryview: a file's content), a PIL "
            "image, a numpy array or a torch tensor")
_ENCODED = (bytes, bytearray, memoryview)


def _describe(item: Any, position: int) -> str:
    if isinstance(item, (np.ndarray, Tensor)):
        return f"input {position} ({type(item).__name__} of shape {tuple(item.shape)}, dtype {item.dtype})"
    if isinstance(item, Image.Image):
        return f"input {position} (PIL image {item.size[0]}x{item.size[1]})"
    if isinstance(item, _ENCODED):
        return f"input {position} ({type(item).__name__}, {memoryview(item).nbytes} bytes)"
    return f"input {position} ({type(item).__name__})"


def as_rgb_uint8(item: ImageInput, position: int = 0) -> np.ndarray:
    """One input (see the module rules) as an ``[H0, W0, 3]`` uint8 RGB array."""
    what = _describe(item, position)
    if isinstance(item, (str, Path)):
        return load_image(Path(item))
    if isinstance(item, _ENCODED):
        return decode_image_bytes(item, what)
    if isinstance(item, Image.Image):
        return pil_to_rgb(item, what)
    if isinstance(item, Tensor):
        tensor = item.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3):
            tensor = tensor.permute(1, 2, 0)
        elif tensor.ndim != 2:
            raise DataError(f"{what}: an image tensor must be [3, H, W], [1, H, W] or [H, W] (channels first).")
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        if tensor.dtype == torch.uint16:
            tensor = tensor.to(torch.int32)
            return array_to_rgb(tensor.numpy().astype(np.uint16), what)
        return array_to_rgb(tensor.numpy(), what)
    if isinstance(item, np.ndarray):
        return array_to_rgb(item, what)
    raise DataError(f"{what}: unsupported image type; pass {ACCEPTED}.")


def _flatten(images: Union[ImageInput, Iterable[ImageInput]]) -> List[ImageInput]:
    if isinstance(images, (str, Path, Image.Image) + _ENCODED):
        return [images]
    if isinstance(images, Tensor):
        return list(images.unbind(0)) if images.ndim == 4 else [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (Mapping, set, frozenset)) or not isinstance(images, Iterable):
        raise DataError(f"images of type {type(images).__name__}: unsupported; pass {ACCEPTED}, or a list of them.")
    items: List[ImageInput] = []
    for item in images:
        if isinstance(item, (Tensor, np.ndarray)) and item.ndim == 4:
            items.extend(item.unbind(0) if isinstance(item, Tensor) else list(item))
        else:
            items.append(item)
    return items


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class Detection:
    """The result of one image.

    Attributes:
        score: raw image score (the checkpoint's ``image_score``: a statistic of the map, or DN2).
        normalized_score: ``score`` mapped to [0, 1) with the image threshold at 0.5 (NaN when unknown).
        decision: ``score >= image_threshold`` (None when the threshold is unknown).
        anomaly_map: float32 ``[H0, W0]`` raw map at the image's original size; NaN where the
            centre crop removed the pixel (not inspected).
        mask: bool ``[H0, W0]``, ``anomaly_map >= pixel_threshold`` (False where not inspected);
            None when the pixel threshold is unknown.
        size: ``(H0, W0)``.
        path: the file, for path inputs (else None).
        image_threshold, pixel_threshold: the thresholds used (raw; NaN: unknown).
    """

    score: float
    normalized_score: float
    decision: Optional[bool]
    anomaly_map: np.ndarray = field(repr=False)
    mask: Optional[np.ndarray] = field(repr=False)
    size: Tuple[int, int]
    path: Optional[str] = None
    image_threshold: float = math.nan
    pixel_threshold: float = math.nan

    @property
    def inspected(self) -> np.ndarray:
        """bool ``[H0, W0]``: the pixels the model saw (not removed by the crop)."""
        return np.isfinite(self.anomaly_map)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {"score": self.score, "normalized_score": None if math.isnan(self.normalized_score) else self.normalized_score,
                "decision": self.decision, "size": list(self.size), "path": self.path}

    def overlay(self, image: ImageInput, alpha: float = 0.5) -> np.ndarray:
        """See :func:`overlay_for`."""
        return overlay_for(self, image, alpha=alpha)


def overlay_for(detection: Detection, image: ImageInput, alpha: float = 0.5) -> np.ndarray:
    """The heatmap of ``detection`` over ``image`` (any input form, at its original size): ``[H0, W0, 3]`` uint8.

    Colours follow :mod:`lightning_ad.inference.visualize` (fixed scale, pixel threshold at the middle
    colour), with the predicted mask outlined. Pixels the model did not inspect (NaN in the
    map) are shown greyed out with diagonal hatching.
    """
    from . import visualize

    rgb = as_rgb_uint8(image)
    if tuple(rgb.shape[:2]) != tuple(detection.size):
        raise DataError(f"overlay: the image is {rgb.shape[0]}x{rgb.shape[1]} but the detection is "
                        f"{detection.size[0]}x{detection.size[1]}: pass the image that was scored.")
    inspected = detection.inspected
    values = np.where(inspected, detection.anomaly_map, 0.0)
    out = visualize.overlay(rgb, values, detection.pixel_threshold, pred_mask=detection.mask, alpha=alpha)
    if not inspected.all():
        yy, xx = np.mgrid[0 : rgb.shape[0], 0 : rgb.shape[1]]
        hatch = ((yy + xx) % _HATCH_PERIOD) < 2
        grey = (rgb.astype(np.float32).mean(axis=2, keepdims=True) * 0.5 + _BORDER_GREY * 0.5).astype(np.uint8)
        border = np.repeat(grey, 3, axis=2)
        border[hatch] = 64
        out = np.where(inspected[:, :, None], out, border)
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------- the model


def model_settings(hyper_parameters: Dict[str, Any], meta: Dict[str, Any]) -> Dict[str, Any]:
    """:class:`SpadeModel` keyword arguments of a checkpoint: every parameter of its signature that the
    checkpoint's hyper-parameters name (scoring settings older checkpoints predate at the values they
    were fitted with; ``knn_chunk_bytes`` is ``chunk_bytes``), the others at their defaults; weights
    ``random`` (the state dict brings the real ones). Backbone and levels fall back to the lightning_ad
    section of checkpoints that predate their hyper-parameters."""
    saved = {**ckpt.saved_settings(hyper_parameters), "weights": "random"}
    if "knn_chunk_bytes" in saved:
        saved["chunk_bytes"] = saved["knn_chunk_bytes"]
    for name in ("backbone", "layers"):
        if name not in saved and name in meta:
            saved[name] = meta[name]
    names = set(inspect.signature(SpadeModel).parameters) - {"backbone_module"}
    return {name: saved[name] for name in names if name in saved}


def load_model(path: Union[str, Path]) -> Tuple[SpadeModel, Dict[str, Any], Dict[str, Any]]:
    """``(model, hyper_parameters, lightning_ad section)`` of a fitted checkpoint (CPU, eval mode).

    Raises :class:`~lightning_ad.errors.CheckpointError` for a missing file, a file not
    written by lightning_ad, or a checkpoint without a complete bank.
    """
    checkpoint = ckpt.read_checkpoint(path)
    meta = checkpoint[ckpt.META_KEY]
    ckpt.check_usable(meta, fitting=False)
    hp = dict(checkpoint.get("hyper_parameters") or {})
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds no state_dict.")
    try:
        with warnings.catch_warnings():
            # the state dict brings the trained weights: the random initialisation is never used
            warnings.filterwarnings("ignore", message=r".*uses RANDOM weights.*", category=UserWarning)
            model = SpadeModel(**model_settings(hp, meta))
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - hyper-parameters this version cannot build
        raise CheckpointError(f"checkpoint {str(path)!r}: cannot build its model ({type(err).__name__}: {err}).") from None
    ckpt.check_compatible(meta, model.backbone_name, model.layers, model.aggregate_levels, source=f"checkpoint {str(path)!r}")
    own = {key[len("model."):]: value for key, value in state.items() if key.startswith("model.")}
    try:
        model.load_state_dict(own)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {str(path)!r}: its state dict does not load ({str(err).splitlines()[0][:300]}).") from None
    model.eval()
    return model, hp, meta


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
        "thresholds": {"image": finite(image_threshold), "pixel": finite(pixel_threshold)},
    }


class Detector:
    """Score images of any size with a fitted SPADE model, without a Trainer.

    Build it with :meth:`from_checkpoint`; call it on one input or a list (see the module
    docstring) to get one :class:`Detection` per image, in order.

    Args:
        model: a fitted :class:`SpadeModel`.
        contract: the input contract ``{"image_size": [H, W], "crop_size": [h, w] or None}``.
        image_threshold: raw image threshold (NaN: unknown).
        pixel_threshold: raw pixel threshold (NaN: unknown).
        device: where the model runs.
        batch_size: images per forward pass.
        meta: extra facts reported by :attr:`info`.
    """

    def __init__(self, model: SpadeModel, contract: Dict[str, Any], image_threshold: float = math.nan,
                 pixel_threshold: float = math.nan, device: Union[str, torch.device] = "cpu", batch_size: int = 8,
                 meta: Optional[Dict[str, Any]] = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size={batch_size!r} must be a positive integer")
        model.require_fitted()
        self.contract = {"image_size": list(contract["image_size"]),
                         "crop_size": list(contract["crop_size"]) if contract.get("crop_size") else None}
        self.preprocess = Preprocess(self.contract["image_size"], self.contract["crop_size"])
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
        """The detector of a checkpoint written by ``lightning-ad fit`` (see :func:`load_model` for its errors)."""
        model, hp, meta = load_model(path)
        thresholds = ckpt.thresholds_in_use(model, hp, meta)
        detector = cls(model, saved_contract(meta), image_threshold=thresholds.image, pixel_threshold=thresholds.pixel,
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
        meta = {**self._meta, "bank_size": model.bank_size, "bank_changed": changed if model.bank_size > before else
                self._meta.get("bank_changed"), "threshold_source": {**self._meta.get("threshold_source", {}),
                                                                     **(model.calibration or {})}}
        grown = Detector(model, self.contract, float(model.image_threshold), float(model.pixel_threshold),
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
    def info(self) -> Dict[str, Any]:
        """JSON-serialisable facts: input contract, backbone, levels, K values, thresholds, version."""
        return {
            "input": dict(self.contract),
            "model_input_size": list(self.model.image_size),
            **scoring_facts(self.model, self.image_threshold, self.pixel_threshold),
            "scores": "raw feature distances; normalized = score / (2 t) below the image threshold t, "
                      "1 - t / (2 score) above (0.5 at t)",
            **{k: v for k, v in self._meta.items() if k in ("threshold_source", "bank_changed")},
        }

    # ------------------------------------------------------------------ scoring

    def prepare(self, images: Union[ImageInput, Iterable[ImageInput]]) -> List[Tuple[np.ndarray, Optional[str]]]:
        """Inputs -> ``[(rgb uint8 [H0, W0, 3], path or None)]`` (decoding and checks only)."""
        items = _flatten(images)
        out = []
        for position, item in enumerate(items):
            path = str(item) if isinstance(item, (str, Path)) else None
            out.append((as_rgb_uint8(item, position), path))
        return out

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
                full = restore_map(small, size, self.contract)
                mask = decide(full, self.pixel_threshold).numpy() if math.isfinite(self.pixel_threshold) else None
                full = full.numpy()
                decision = decided if math.isfinite(self.image_threshold) else None
                results.append(Detection(score=float(score), normalized_score=float(norm), decision=decision,
                                         anomaly_map=full, mask=mask, size=size, path=path,
                                         image_threshold=self.image_threshold, pixel_threshold=self.pixel_threshold))
        return results

    def __repr__(self) -> str:
        return (f"Detector(backbone={self.model.backbone_name!r}, bank={self.model.bank_size} images, "
                f"input={self.contract}, device={str(self.device)!r})")
