"""SPADE as a plain ``torch.nn.Module``: feature extraction, memory bank, kNN scoring.

Cohen and Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020.

* Image score (DN2): mean squared Euclidean distance from the test image's pooled
  vector to its ``image_k`` nearest training vectors.
* Pixel map: the gallery of a test image is every pyramid position of its
  ``gallery_k`` nearest training images; the score of a position is the mean
  squared distance to its ``kappa`` nearest gallery features at the same level.
  Each level's map is upsampled (bilinear) to the input size, the levels are
  averaged and the result is smoothed by a Gaussian of ``sigma`` pixels.

The bank is held in registered buffers, so it is part of ``state_dict`` and of
every checkpoint. Its size is unknown before fit: loading a state dict sizes the
buffers first. This module is usable without a Trainer::

    model = SpadeModel("efficientnet_lite0", image_k=5, gallery_k=5)
    model.fit_bank(train_images)                 # [N, 3, H, W] in [0, 1]
    scores, maps = model(test_images)            # [B], [B, H, W]
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import FeatureExtractor, LEVEL_STRIDES, backbone_channels, build_backbone, validate_levels
from .errors import NumericalError
from .filters import gaussian_blur
from .knn import DEFAULT_CHUNK_BYTES, grouped_knn, knn

__all__ = ["SpadeModel", "SpadeOutput", "Features", "BANK_DTYPES", "check_finite"]

#: Accepted names of the bank storage precision.
BANK_DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class Features(NamedTuple):
    """Backbone output: ``pyramid`` (one ``[B, C_l, H_l, W_l]`` per level) and ``pooled`` ``[B, D]``."""

    pyramid: List[Tensor]
    pooled: Tensor


class SpadeOutput(NamedTuple):
    """``image_scores`` ``[B]`` and ``anomaly_maps`` ``[B, H, W]``: raw squared distances."""

    image_scores: Tensor
    anomaly_maps: Tensor


def check_finite(tensor: Tensor, what: str) -> Tensor:
    """Raise :class:`~lightning_ad.errors.NumericalError` (a ``FloatingPointError``) on NaN or infinity."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NumericalError(
            f"{what} contain {bad} NaN or infinite values. Check the input images (all-constant or "
            "corrupt files) and, with mixed precision, try precision=32 or bank_dtype='float32'."
        )
    return tensor


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


class SpadeModel(nn.Module):
    """SPADE: frozen backbone, memory bank in buffers, kNN scoring.

    Args:
        backbone: name of the feature extractor (see :data:`lightning_ad.backbones.BACKBONES`).
        weights: ``"imagenet"``, a state-dict path, or ``"random"`` (tests only).
        layers: pyramid levels used for the maps, among 1, 2, 3 (stride 4, 8, 16).
        image_k: K of the image score (nearest training images averaged).
        gallery_k: nearest training images whose positions form a pixel gallery.
        kappa: nearest gallery features averaged per position.
        sigma: Gaussian smoothing of the maps, in pixels of the input (0: none).
        bank_dtype: storage precision of the bank: ``float32``, ``float16`` or
            ``bfloat16`` (distances are always accumulated in float32).
        chunk_bytes: upper bound, in bytes, of one block of distances of the kNN search.
        backbone_module: an already built extractor (then ``weights`` is ignored).
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
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        backbone_module: Optional[FeatureExtractor] = None,
    ) -> None:
        super().__init__()
        self.layers = validate_levels(layers)
        self.image_k = _positive_int("image_k", image_k)
        self.gallery_k = _positive_int("gallery_k", gallery_k)
        self.kappa = _positive_int("kappa", kappa)
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma={sigma!r} must be a finite number >= 0 (pixels)")
        self.sigma = float(sigma)
        if bank_dtype not in BANK_DTYPES:
            raise ValueError(f"bank_dtype={bank_dtype!r}: choose one of {sorted(BANK_DTYPES)}")
        self.bank_dtype = BANK_DTYPES[bank_dtype]
        self.chunk_bytes = _positive_int("chunk_bytes", chunk_bytes)
        self.backbone_name = backbone
        self.channels, self.pooled_dim = backbone_channels(backbone, self.layers)
        self.backbone = backbone_module if backbone_module is not None else build_backbone(backbone, self.layers, weights)
        if list(self.backbone.level_channels()) != list(self.channels):
            raise ValueError("backbone_module does not match the backbone name and layers")
        self.register_buffer("bank_index", torch.zeros(0, dtype=torch.long))
        self.register_buffer("bank_image_size", torch.zeros(2, dtype=torch.long))
        # Decision thresholds on raw scores (NaN until set: see lightning_ad.thresholds).
        self.register_buffer("image_threshold", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("pixel_threshold", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("bank_pooled", torch.zeros(0, self.pooled_dim, dtype=self.bank_dtype))
        for level, channels in zip(self.layers, self.channels):
            self.register_buffer(self._level_key(level), torch.zeros(0, 0, 0, channels, dtype=self.bank_dtype))

    # ------------------------------------------------------------------ bank

    @staticmethod
    def _level_key(level: int) -> str:
        return f"bank_level{level}"

    def bank_levels(self) -> List[Tensor]:
        """Bank pyramid, one ``[N, H_l, W_l, C_l]`` tensor per level (channels last)."""
        return [getattr(self, self._level_key(level)) for level in self.layers]

    @property
    def bank_size(self) -> int:
        """Number of training images in the bank (0 before fit)."""
        return int(self.bank_index.numel())

    @property
    def is_fitted(self) -> bool:
        return self.bank_size > 0

    def reset_bank(self) -> None:
        """Empty the bank (back to the unfitted state)."""
        device = self.bank_index.device
        self.bank_index = torch.zeros(0, dtype=torch.long, device=device)
        self.bank_image_size = torch.zeros(2, dtype=torch.long, device=device)
        self.bank_pooled = torch.zeros(0, self.pooled_dim, dtype=self.bank_dtype, device=device)
        for level, channels in zip(self.layers, self.channels):
            setattr(self, self._level_key(level), torch.zeros(0, 0, 0, channels, dtype=self.bank_dtype, device=device))
        self.image_threshold.fill_(float("nan"))
        self.pixel_threshold.fill_(float("nan"))

    def set_bank(self, features: Features, image_size: Tuple[int, int], index: Optional[Tensor] = None) -> None:
        """Store the features of the training images as the bank.

        Args:
            features: pyramid ``[N, C_l, H_l, W_l]`` per level and pooled ``[N, D]``.
            image_size: ``(H, W)`` of the input images the features come from.
            index: ``[N]`` distinct sample ids (dataset indices); rows are stored sorted
                by it. Defaults to ``0 .. N - 1``.
        """
        pooled = features.pooled
        num = pooled.shape[0]
        if num == 0:
            raise ValueError("cannot build a bank from zero training images")
        if index is None:
            index = torch.arange(num, device=pooled.device)
        index = index.to(device=pooled.device, dtype=torch.long)
        if index.shape != (num,) or torch.unique(index).numel() != num:
            raise ValueError("bank index must hold one distinct id per training image")
        order = torch.argsort(index)
        check_finite(pooled, "training features (pooled)")
        device = self.bank_index.device
        self.bank_index = index[order].to(device)
        self.bank_image_size = torch.tensor([int(image_size[0]), int(image_size[1])], device=device)
        self.bank_pooled = pooled[order].to(device=device, dtype=self.bank_dtype).contiguous()
        if len(features.pyramid) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} pyramid levels, got {len(features.pyramid)}")
        for level, fmap in zip(self.layers, features.pyramid):
            check_finite(fmap, f"training features (level {level})")
            bank = fmap[order].permute(0, 2, 3, 1).to(device=device, dtype=self.bank_dtype).contiguous()
            setattr(self, self._level_key(level), bank)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        # Size the bank buffers from the incoming tensors (unknown before fit), after
        # checking that they fit this backbone and these levels.
        incoming = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        levels_in = sorted(int(k[len("bank_level"):]) for k in incoming if k.startswith("bank_level"))
        if "bank_pooled" in incoming:
            problems = []
            if levels_in != list(self.layers):
                problems.append(f"levels {levels_in} (configured: {list(self.layers)})")
            pooled = incoming["bank_pooled"]
            if pooled.ndim != 2 or pooled.shape[1] != self.pooled_dim:
                problems.append(f"pooled size {tuple(pooled.shape[1:])} (backbone {self.backbone_name}: {self.pooled_dim})")
            for level, channels in zip(self.layers, self.channels):
                value = incoming.get(self._level_key(level))
                if value is not None and (value.ndim != 4 or value.shape[-1] != channels):
                    problems.append(f"level {level} has {value.shape[-1] if value.ndim else '?'} channels ({self.backbone_name}: {channels})")
            sizes = {int(v.shape[0]) for k, v in incoming.items() if k.startswith("bank_") and k != "bank_image_size"}
            if len(sizes) > 1:
                problems.append(f"bank tensors disagree on the number of images {sorted(sizes)}")
            if problems:
                raise ValueError(
                    "the memory bank in this state dict does not fit the configured model "
                    f"(backbone={self.backbone_name!r}, layers={list(self.layers)}): " + "; ".join(problems)
                    + ". Configure the backbone and layers the bank was fitted with, or fit again."
                )
            device = self.bank_index.device
            if "bank_index" in incoming:
                self.bank_index = torch.zeros_like(incoming["bank_index"], device=device)
            self.bank_pooled = torch.zeros(pooled.shape, dtype=self.bank_dtype, device=device)
            for level in self.layers:
                value = incoming[self._level_key(level)]
                setattr(self, self._level_key(level), torch.zeros(value.shape, dtype=self.bank_dtype, device=device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # ------------------------------------------------------------------ features

    def extract(self, images: Tensor) -> Features:
        """Images ``[B, 3, H, W]`` in [0, 1] -> :class:`Features` (no gradient)."""
        with torch.no_grad():
            pyramid, pooled = self.backbone(images)
        return Features(list(pyramid), pooled)

    def fit_bank(self, images: Iterable[Tensor] | Tensor, batch_size: int = 32) -> None:
        """Build the bank from normal images (a tensor ``[N, 3, H, W]`` or an iterable of batches)."""
        batches = images.split(batch_size) if isinstance(images, Tensor) else images
        parts, size = [], None
        for batch in batches:
            if size is not None and tuple(batch.shape[-2:]) != size:
                raise ValueError("fit_bank: all training images must have the same size")
            size = tuple(batch.shape[-2:])
            parts.append(self.extract(batch))
        if not parts or size is None:
            raise ValueError("fit_bank needs at least one training image")
        self.set_bank(
            Features(
                [torch.cat([p.pyramid[i] for p in parts]) for i in range(len(self.layers))],
                torch.cat([p.pooled for p in parts]),
            ),
            image_size=size,
        )

    # ------------------------------------------------------------------ scoring

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("the SPADE memory bank is empty: fit the model (or load a fitted checkpoint) first")

    def nearest_images(self, pooled: Tensor, exclude: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Image scores ``[B]`` and the ``gallery_k`` nearest bank rows ``[B, gallery_k]``.

        ``exclude`` (``[B]`` bank rows, leave-one-out) removes each query's own row.
        """
        self._require_fitted()
        available = self.bank_size - (1 if exclude is not None else 0)
        for name, k in (("image_k", self.image_k), ("gallery_k", self.gallery_k)):
            if k > available:
                raise ValueError(
                    f"{name}={k} is larger than the {available} training images available"
                    + (" (leave-one-out)" if exclude is not None else "")
                    + f"; set {name} to at most {available}."
                )
        k = max(self.image_k, self.gallery_k)
        result = knn(pooled.float(), self.bank_pooled, k, chunk_bytes=self.chunk_bytes, exclude=exclude)
        scores = result.distances[:, : self.image_k].mean(dim=1)
        return scores, result.indices[:, : self.gallery_k]

    def level_maps(self, pyramid: Sequence[Tensor], neighbours: Tensor) -> List[Tensor]:
        """Per-level maps ``[B, H_l, W_l]``: mean squared distance to the kappa nearest gallery features."""
        self._require_fitted()
        maps = []
        for level, fmap, bank in zip(self.layers, pyramid, self.bank_levels()):
            batch, channels, height, width = fmap.shape
            if bank.shape[1:3] != (height, width):
                raise ValueError(
                    f"level {level} (stride {LEVEL_STRIDES[level]}) features are {height}x{width} but the bank "
                    f"holds {bank.shape[1]}x{bank.shape[2]}: score images of the size the bank was fitted at "
                    f"({bank.shape[1] * LEVEL_STRIDES[level]}x{bank.shape[2] * LEVEL_STRIDES[level]} pixels)."
                )
            queries = fmap.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
            dist = grouped_knn(
                queries, bank.reshape(bank.shape[0], height * width, channels), neighbours, self.kappa,
                chunk_bytes=self.chunk_bytes,
            )
            maps.append(dist.mean(dim=-1).reshape(batch, height, width))
        return maps

    def combine(self, level_maps: Sequence[Tensor], size: Tuple[int, int]) -> Tensor:
        """Upsample each level map to ``size`` (bilinear), average the levels, smooth: ``[B, H, W]``."""
        up = [F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False) for m in level_maps]
        combined = torch.stack(up).mean(dim=0).squeeze(1)
        return gaussian_blur(combined, self.sigma) if self.sigma > 0 else combined

    def score_features(self, features: Features, size: Tuple[int, int], exclude: Optional[Tensor] = None) -> SpadeOutput:
        """Scores and maps from extracted features (``exclude``: leave-one-out bank rows)."""
        check_finite(features.pooled, "test features (pooled)")
        scores, neighbours = self.nearest_images(features.pooled, exclude=exclude)
        maps = self.combine(self.level_maps(features.pyramid, neighbours), size)
        check_finite(scores, "image scores")
        check_finite(maps, "anomaly maps")
        return SpadeOutput(scores, maps)

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(H, W)`` of the images the bank was built from (``(0, 0)`` before fit)."""
        return int(self.bank_image_size[0]), int(self.bank_image_size[1])

    def forward(self, images: Tensor) -> SpadeOutput:
        """Images ``[B, 3, H, W]`` in [0, 1] -> image scores ``[B]`` and maps ``[B, H, W]``."""
        self._require_fitted()
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if size != self.image_size:
            raise ValueError(
                f"images are {size[0]}x{size[1]} pixels but the bank was built from {self.image_size[0]}x"
                f"{self.image_size[1]} images: use the same image_size and crop_size as for fit."
            )
        return self.score_features(self.extract(images), size)

    def score_bank(self, rows: Optional[Tensor] = None, batch_size: int = 8) -> SpadeOutput:
        """Leave-one-out scores of bank rows (training images) against the rest of the bank.

        ``rows``: bank rows to score (default: all). Maps are at the bank's input size.
        """
        self._require_fitted()
        if rows is None:
            rows = torch.arange(self.bank_size, device=self.bank_index.device)
        size = self.image_size
        scores, maps = [], []
        for chunk in rows.split(batch_size):
            pyramid = [bank[chunk].float().permute(0, 3, 1, 2) for bank in self.bank_levels()]
            out = self.score_features(Features(pyramid, self.bank_pooled[chunk].float()), size, exclude=chunk)
            scores.append(out.image_scores)
            maps.append(out.anomaly_maps)
        return SpadeOutput(torch.cat(scores), torch.cat(maps))
