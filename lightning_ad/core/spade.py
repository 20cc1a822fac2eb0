"""SPADE as a plain ``torch.nn.Module``: feature extraction and kNN scoring around a memory bank.

Cohen and Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", 2020.

* Image score (``image_score``): ``dn2``, the paper's, the mean squared Euclidean
  distance from the test image's pooled vector to its ``image_k`` nearest training
  vectors; ``max``, the maximum of the (smoothed) pixel map; ``topq``, the mean of the
  map's top ``image_score_q`` fraction of pixels; ``combined``, DN2 and the map maximum
  each divided by its median over leave-one-out scores of the training images
  (``dn2_scale``, ``map_scale``: registered buffers, learned when the bank is fitted),
  summed.
* Pixel map: the gallery of a test image is the pyramid positions of its
  ``gallery_k`` nearest training images: with ``search_radius=None`` every position
  (the paper's search), else those within ``search_radius`` input pixels of the same
  place (``ceil(search_radius / stride)`` cells each way at each level; see
  :mod:`lightning_ad.core.windowed`). The features of the ``aggregate_levels`` are 3x3 means
  (bank and queries alike). The score of a position is the mean distance (``pixel_distance``:
  ``euclidean``, or ``squared`` as in the paper) to its ``kappa`` nearest gallery features at
  the same level. Each level's map is upsampled (bilinear) to the input size, the levels are
  averaged (weighted by ``level_weights`` and over the scales of ``level_balance``: see
  :mod:`lightning_ad.core.levels`) and the result is smoothed by a Gaussian of ``sigma`` pixels.

The bank is a :class:`~lightning_ad.bank.memory_bank.MemoryBank` (registered buffers: part of
``state_dict`` and of every checkpoint), and so are the decision thresholds. This
module is usable without a Trainer::

    model = SpadeModel(backbone="efficientnet_lite0", image_k=5, gallery_k=5)
    model.fit_bank(train_images)                 # [N, 3, H, W] in [0, 1]
    scores, maps = model(test_images)            # [B], [B, H, W]
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import checks
from ..bank import BANK_DEVICES, BANK_DTYPES, BANK_SHARDINGS, BANK_STORAGES, MemoryBank, check_finite, rename_legacy_keys
from ..distributed import world_size
from ..errors import ConfigurationError
from .backbones import LEVEL_STRIDES, FeatureExtractor, backbone_channels, build_backbone, validate_levels
from .growth import BankGrowth
from .image_scores import IMAGE_SCORES, image_score_from_parts, map_part_of, map_score
from .inputs import check_image_range
from .knn import DEFAULT_CHUNK_BYTES, knn
from .leave_one_out import LEVEL_BALANCE_IMAGES, LeaveOneOutScoring
from .levels import LEVEL_BALANCES, PIXEL_DISTANCES, aggregate_pyramid, combine_levels, position_scores
from .radius import AUTO, RadiusChoice, RadiusDecision, decode_radius
from .records import Features, LeaveOneOut, SpadeOutput
from .sharded import drain_sharded, sharded_grouped_knn
from .thresholds import Thresholds
from .tracing import exporting
from .views import BANK_AUGMENTS, VIEW_BIT
from .windowed import gallery_bytes, gallery_search, min_window_candidates, window_cells

__all__ = [
    "SpadeModel", "SpadeOutput", "combine_levels", "LeaveOneOut", "Features", "IMAGE_SCORES", "map_score", "map_part_of",
    "image_score_from_parts", "BANK_DTYPES", "check_finite", "check_image_range", "LEVEL_BALANCE_IMAGES"]


#: Images per backbone call on a CPU (see :meth:`SpadeModel.extract`).
_CPU_SLICE = 8


class SpadeModel(BankGrowth, LeaveOneOutScoring, RadiusDecision, nn.Module):
    """SPADE: frozen backbone, memory bank, kNN scoring. Arguments are keyword-only.

    Args:
        backbone: name of the feature extractor (see :mod:`lightning_ad.core.backbones`).
        weights: ``"imagenet"``, a state-dict path, or ``"random"`` (tests only).
        layers: pyramid levels used for the maps, among 1, 2, 3 (stride 4, 8, 16).
        aggregate_levels: levels whose features are replaced by the mean of their 3x3 neighbourhood
            (in the bank and the queries); those not in ``layers`` are ignored. ``[]``: none (the paper).
        image_k: K of the image score (nearest training images averaged).
        gallery_k: nearest training images whose positions form a pixel gallery.
        kappa: nearest gallery features averaged per position.
        sigma: Gaussian smoothing of the maps, in pixels of the input (0: none).
        image_score: ``topq`` (default), ``dn2`` (the paper's), ``max`` or ``combined`` (see the module docstring).
        image_score_q: fraction of the map's pixels averaged by ``topq``, in (0, 1].
        pixel_distance: ``euclidean`` (default) or ``squared`` (the paper's): the distance a position
            scores (mean over its ``kappa`` nearest gallery features).
        level_balance: ``none``, ``mean`` or ``std``: each level's map divided by that statistic of
            leave-one-out maps of training images, learned at fit (``level_scales``).
        level_weights: one non-negative weight per entry of ``layers`` in the mean of the levels (None: equal).
        search_radius: the pixel search looks for each position's nearest features within this
            many input pixels of the same place in the ``gallery_k`` nearest training images
            (``ceil(search_radius / stride)`` cells at each level); ``None``: every position of
            those images (the paper's search; its cost grows with the square of the positions);
            ``"auto"`` (default): decided when the bank is fitted, from how far the parts move between
            the training images (:mod:`lightning_ad.core.radius`; the choice is a buffer, ``radius_choice``
            its evidence).
        bank_dtype: storage precision of the bank: ``float32``, ``float16`` or
            ``bfloat16`` (distances are always accumulated in float32).
        chunk_bytes: upper bound, in bytes, of one block of distances of the kNN search.
        bank_storage: ``memory`` or ``disk`` (pyramid rows in files, read by rows on
            demand; see :mod:`lightning_ad.bank.memory_bank`).
        bank_sharding: ``replicated`` or ``sharded`` (under several processes each keeps its
            share of the pyramid rows; scoring stays exact).
        bank_device: ``auto``, ``host`` or ``accelerator``: where in-memory pyramid rows live
            when the model is on an accelerator (host: pinned, galleries copied per batch).
        bank_dir: folder of the bank files of a disk or sharded bank (written by fit; where a
            checkpoint's files are looked for when their recorded path is gone).
        bank_augment: ``none`` (default), ``flips``, ``rotations`` or ``flips+rotations``: views of each
            training image added to the bank beside it (:data:`~lightning_ad.core.views.BANK_AUGMENTS`;
            rotations need square images). Leave-one-out scoring leaves an image out with its views.
        backbone_module: an already built extractor (then ``weights`` is ignored).

    Raises:
        ConfigurationError: a setting out of range, naming it.
    """

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        weights: Optional[str] = "imagenet",
        layers: Sequence[int] = (1, 2, 3),
        image_k: int = 50,
        gallery_k: int = 50,
        kappa: int = 1,
        sigma: float = 4.0,
        image_score: str = "topq",
        image_score_q: float = 0.05,
        search_radius: Union[float, str, None] = AUTO,
        aggregate_levels: Sequence[int] = (1, 2),
        pixel_distance: str = "euclidean",
        level_balance: str = "none",
        level_weights: Optional[Sequence[float]] = None,
        bank_dtype: str = "float32",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        bank_storage: str = "memory",
        bank_sharding: str = "replicated",
        bank_device: str = "auto",
        bank_dir: Optional[str] = None,
        bank_augment: str = "none",
        backbone_module: Optional[FeatureExtractor] = None,
    ) -> None:
        super().__init__()
        try:
            self.layers = validate_levels(layers)
            self.channels, self.pooled_dim = backbone_channels(backbone, self.layers)
        except ValueError as err:
            raise ConfigurationError(str(err)) from None
        self.image_k = checks.positive_int("image_k", image_k)
        self.gallery_k = checks.positive_int("gallery_k", gallery_k)
        self.kappa = checks.positive_int("kappa", kappa)
        self.sigma = checks.non_negative_number("sigma", sigma, unit="pixels")
        self.image_score = checks.one_of("image_score", image_score, IMAGE_SCORES)
        self.image_score_q = checks.fraction("image_score_q", image_score_q)
        self.search_radius = search_radius
        self.aggregate_levels = checks.levels("aggregate_levels", aggregate_levels, LEVEL_STRIDES)
        self.pixel_distance = checks.one_of("pixel_distance", pixel_distance, PIXEL_DISTANCES)
        self.bank_augment = checks.one_of("bank_augment", bank_augment, BANK_AUGMENTS)
        self.level_balance = checks.one_of("level_balance", level_balance, LEVEL_BALANCES)
        self.level_weights = checks.level_weights("level_weights", level_weights, len(self.layers))
        self.bank_dtype = BANK_DTYPES[checks.one_of("bank_dtype", bank_dtype, BANK_DTYPES)]
        self.chunk_bytes = checks.positive_int("chunk_bytes", chunk_bytes)
        if self.chunk_bytes < 4096:
            raise ConfigurationError(f"chunk_bytes={chunk_bytes!r} must be at least 4096 bytes")
        self.backbone_name = backbone
        self.backbone = backbone_module if backbone_module is not None else build_backbone(backbone, self.layers, weights)
        if list(self.backbone.level_channels()) != list(self.channels):
            raise ConfigurationError("backbone_module does not match the backbone name and layers")
        self.bank = MemoryBank(
            self.layers, self.channels, self.pooled_dim, self.bank_dtype, owner=backbone,
            storage=checks.one_of("bank_storage", bank_storage, BANK_STORAGES),
            sharding=checks.one_of("bank_sharding", bank_sharding, BANK_SHARDINGS),
            placement=checks.one_of("bank_device", bank_device, BANK_DEVICES), directory=bank_dir,
        )
        # Decision thresholds on raw scores (NaN until set: see lightning_ad.core.thresholds).
        self.register_buffer("image_threshold", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("pixel_threshold", torch.tensor(float("nan"), dtype=torch.float64))
        # Scales of the combined score's parts (medians of leave-one-out scores; NaN until learned).
        self.register_buffer("dn2_scale", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("map_scale", torch.tensor(float("nan"), dtype=torch.float64))
        # Scales of the levels' maps for level_balance (NaN until learned; unused with none).
        self.register_buffer("level_scales", torch.full((len(self.layers),), float("nan"), dtype=torch.float64))
        # The radius that search_radius="auto" decided at fit (NaN until decided; inf: every position).
        self.register_buffer("decided_radius", torch.tensor(float("nan"), dtype=torch.float64))
        self.radius_choice: Optional[RadiusChoice] = None  # its evidence, from the fit that decided it
        # The prepared training images of a few-shot bank (fewer than calibration.FEW_SHOT_IMAGES), in bank row order:
        # its thresholds are learned from their views, again whenever the bank grows. Empty otherwise.
        self.register_buffer("few_shot_images", torch.zeros(0, 3, 0, 0))
        self.calibration: Dict[str, Any] = {}  # the record of the thresholds in use (calibration.calibrate)

    @property
    def search_radius(self) -> Optional[float]:
        """The radius of the pixel search in input pixels (None: every position): the setting, or with
        ``"auto"`` the radius decided at fit (:class:`~lightning_ad.errors.ConfigurationError` before)."""
        if self.search_radius_setting != AUTO:
            return self.search_radius_setting
        if not self.radius_decided:
            raise ConfigurationError(
                "search_radius='auto' is decided when the bank is fitted, from the training images: run fit first, "
                "or set a number of pixels (or null: every position)."
            )
        return decode_radius(float(self.decided_radius))

    @property
    def radius_decided(self) -> bool:
        """Whether ``search_radius: auto`` holds a decision (from fit, or the checkpoint)."""
        return not math.isnan(float(self.decided_radius))

    @search_radius.setter
    def search_radius(self, value: Union[float, str, None]) -> None:
        if value != AUTO and value is not None:
            value = checks.non_negative_number("search_radius", value, unit="pixels, 'auto' or null")
        self.search_radius_setting = value

    @property
    def aggregated(self) -> List[bool]:
        """Per entry of ``layers``: whether its features are 3x3 means (``aggregate_levels``)."""
        return [level in self.aggregate_levels for level in self.layers]

    @property
    def learns_at_fit(self) -> bool:
        """Whether fit learns scales of its own from leave-one-out scores of the training images (the ``combined``
        score's parts, the levels of ``level_balance``), whatever sets the thresholds."""
        return self.image_score == "combined" or self.level_balance != "none"

    # ------------------------------------------------------------------ bank

    @property
    def bank_size(self) -> int:
        """Number of training images in the bank (0 before fit); they are its first rows, their views
        (``bank_augment``) the rest."""
        return int((self.bank.index < VIEW_BIT).sum())

    @property
    def is_fitted(self) -> bool:
        return self.bank_size > 0

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(H, W)`` of the images the bank was built from (``(0, 0)`` before fit)."""
        return self.bank.input_size

    def reset_bank(self) -> None:
        """Empty the bank and forget the thresholds (back to the unfitted state)."""
        self.bank.reset()
        self.forget_learned()
        self.few_shot_images = self.few_shot_images.new_zeros(0, 3, 0, 0)

    def set_bank(self, features: Features, image_size: Tuple[int, int], index: Optional[Tensor] = None) -> None:
        """Replace the bank by the features of the training images.

        Args:
            features: pyramid ``[N, C_l, H_l, W_l]`` per level and pooled ``[N, D]``.
            image_size: ``(H, W)`` of the input images the features come from.
            index: ``[N]`` distinct sample ids (dataset indices); rows are stored sorted
                by it. Defaults to ``0 .. N - 1``.
        """
        if index is None:
            index = torch.arange(features.pooled.shape[0])
        self.reset_bank()
        self.bank.add(index, features.pooled, features.pyramid, image_size)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        rename_legacy_keys(state_dict, prefix)  # round-1 checkpoints (bank_pooled ...) load too
        for name in ("dn2_scale", "map_scale"):  # checkpoints from before image_score: not learned
            state_dict.setdefault(prefix + name, torch.tensor(float("nan"), dtype=torch.float64))
        # checkpoints from before level_balance: not learned
        state_dict.setdefault(prefix + "level_scales", torch.full((len(self.layers),), float("nan"), dtype=torch.float64))
        # checkpoints from before search_radius="auto": none decided (their setting is a number or null)
        state_dict.setdefault(prefix + "decided_radius", torch.tensor(float("nan"), dtype=torch.float64))
        # the images of a few-shot bank: sized from the state dict (checkpoints from before kept none)
        incoming = state_dict.setdefault(prefix + "few_shot_images", torch.zeros(0, 3, 0, 0))
        self.few_shot_images = torch.zeros(incoming.shape, dtype=torch.float32, device=self.few_shot_images.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ features

    def extract(self, images: Tensor) -> Features:
        """Images ``[B, 3, H, W]`` in [0, 1] -> :class:`Features` (no gradient)."""
        if not exporting():  # a traced graph takes what its own preprocessing gives
            check_image_range(images)
        images = images.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout; the bank's too
        # on a CPU in slices of a few images, whose activations stay in cache (Lite0, 2 cores: 14.1 ms per image
        # in batches of 32, 10.4 in slices of 8); traced, one pass that follows the batch of its input
        sliced = images.device.type == "cpu" and not exporting() and images.shape[0] > _CPU_SLICE
        with torch.no_grad():
            parts = [self.backbone(part) for part in images.split(_CPU_SLICE)] if sliced else [self.backbone(images)]
            if len(parts) == 1:
                pyramid, pooled = list(parts[0][0]), parts[0][1]
            else:
                pyramid = [torch.cat(level) for level in zip(*(p for p, _ in parts))]
                pooled = torch.cat([q for _, q in parts])
            return Features(aggregate_pyramid(pyramid, self.aggregated), pooled)

    # ------------------------------------------------------------------ scoring

    def require_fitted(self) -> None:
        """Raise :class:`~lightning_ad.errors.ConfigurationError` when the bank is empty."""
        if not self.is_fitted:
            raise ConfigurationError(
                "the model has no memory bank: run fit first, or pass a fitted checkpoint (--ckpt_path PATH)."
            )

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """Store the finite ones of ``thresholds`` (raw feature distances); NaN leaves a threshold as it is."""
        for buffer, value in ((self.image_threshold, thresholds.image), (self.pixel_threshold, thresholds.pixel)):
            if math.isfinite(value):
                buffer.fill_(value)

    def nearest_images(self, pooled: Tensor, exclude: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Image scores ``[B]`` and the ``gallery_k`` nearest bank rows ``[B, gallery_k]``.

        ``exclude`` (``[B]`` bank rows, leave-one-out) removes each query's own row and its views.
        """
        self.require_fitted()
        image_k, gallery_k = self.ks_in_use(left_out=exclude is not None)
        if exporting():  # each image a batch item of one query, so that the graph follows the batch of its input
            found = knn(pooled.float().unsqueeze(1), self.bank.pooled, max(image_k, gallery_k), chunk_bytes=self.chunk_bytes)
            distances, indices = found.distances[:, 0], found.indices[:, 0]
        else:
            distances, indices = self.nearest_rows(pooled, max(image_k, gallery_k), exclude)
        return distances[:, :image_k].mean(dim=1), indices[:, :gallery_k]

    def ks_in_use(self, left_out: bool = False) -> Tuple[int, int]:
        """``(image_k, gallery_k)`` as scoring uses them: each at most the bank's images (one fewer ``left_out``,
        as leave-one-out scores a training image against the others). A bank smaller than the settings uses
        every image it holds (few-shot fits)."""
        available = len(self.bank) - (1 + self.views_per_image if left_out else 0)
        if available < 1:
            raise ConfigurationError(
                f"leave-one-out scoring needs at least 2 training images; the bank holds {self.bank_size}.")
        return min(self.image_k, available), min(self.gallery_k, available)

    @property
    def uses_maps(self) -> bool:
        """Whether the image score needs the pixel map (every score but ``dn2``)."""
        return self.image_score != "dn2"

    def map_part(self, maps: Tensor) -> Tensor:
        """``[B]`` the map statistic of the image score: ``topq`` for ``topq``, else the maximum."""
        return map_part_of(self.image_score, maps, self.image_score_q)

    def image_scores(self, dn2: Tensor, map_part: Optional[Tensor]) -> Tensor:
        """``[B]`` image scores from DN2 ``[B]`` and the map statistic ``[B]`` (:meth:`map_part`)."""
        return image_score_from_parts(self.image_score, dn2, map_part, float(self.dn2_scale), float(self.map_scale))

    def level_maps(self, pyramid: Sequence[Tensor], neighbours: Tensor) -> List[Tensor]:
        """Per-level maps ``[B, H_l, W_l]``: mean distance (``pixel_distance``) to the kappa nearest gallery features."""
        self.require_fitted()
        maps = []
        for slot, fmap in enumerate(pyramid):
            dist = self.level_search(slot, fmap, neighbours, self.level_cells[slot], self.kappa)
            maps.append(position_scores(dist, self.pixel_distance).reshape(fmap.shape[0], *fmap.shape[-2:]))
        return maps

    def level_search(self, slot: int, fmap: Tensor, neighbours: Tensor, cells: Optional[int], k: int) -> Tensor:
        """``[B, H_l W_l, k]`` ascending squared distances of the features ``fmap`` ``[B, C, H_l, W_l]`` of the
        ``slot``-th level to their k nearest among the positions of their ``neighbours`` ``[B, gallery_k]``
        (bank rows): within ``cells`` cells of the same place, or every position (``None``)."""
        level = self.layers[slot]
        batch, channels, height, width = fmap.shape
        bank_hw = self.bank.level_shape(slot)
        if bank_hw != (height, width):
            stride = LEVEL_STRIDES[level]
            raise ValueError(
                f"level {level} (stride {stride}) features are {height}x{width} but the bank holds "
                f"{bank_hw[0]}x{bank_hw[1]}: score images of the size the bank was fitted at "
                f"({bank_hw[0] * stride}x{bank_hw[1] * stride} pixels)."
            )
        queries = fmap.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        images = int(neighbours.shape[1])
        if cells is not None:
            checks.k_at_most("kappa", k, min_window_candidates(cells, height, width, images),
                             f"candidates of a corner position at level {level} ({cells} cells)")
        if self.bank.sharding == "sharded" and world_size() > 1:
            return sharded_grouped_knn(queries, neighbours, self.bank, slot, k, images,
                                       self.chunk_bytes, queries.device, cells)
        gallery, groups = self.bank.gallery(slot, neighbours, queries.device)
        if exporting():  # one search that follows the batch of its input
            return gallery_search(queries, gallery, groups, k, cells=cells, grid=(height, width), chunk_bytes=self.chunk_bytes)
        step = self.search_batch(slot, cells)
        parts = [gallery_search(q, gallery, g, k, cells=cells, grid=(height, width), chunk_bytes=self.chunk_bytes)
                 for q, g in zip(queries.split(step), groups.split(step))]
        return torch.cat(parts)  # an empty batch is one empty part (the searches return empty distances)

    @property
    def level_cells(self) -> List[Optional[int]]:
        """Window half-width in cells at each level (``None``: every position), from ``search_radius``."""
        return [window_cells(self.search_radius, LEVEL_STRIDES[level]) for level in self.layers]

    def search_batch(self, slot: int, cells: Optional[int]) -> int:
        """Batch items searched together at a level with a window of ``cells``: as many as keep their galleries
        laid out for the windowed search within ``chunk_bytes`` (at least one); the global search blocks itself."""
        if cells is None:
            return 2**31
        height, width = self.bank.level_shape(slot)
        return max(1, self.chunk_bytes // gallery_bytes(cells, height, width, self.channels[slot], self.gallery_k))

    def combine(self, level_maps: Sequence[Tensor], size: Tuple[int, int]) -> Tensor:
        """Upsample each level map to ``size`` (bilinear), average the levels (:meth:`level_factors`), smooth:
        ``[B, H, W]`` (:func:`combine_levels` with this model's sigma)."""
        return combine_levels(level_maps, size, self.sigma, self.level_factors())

    def score_features(self, features: Features, size: Tuple[int, int], exclude: Optional[Tensor] = None) -> SpadeOutput:
        """Scores and maps from extracted features (``exclude``: leave-one-out bank rows)."""
        checked = not exporting()  # a traced graph holds no check of its data
        if checked:
            check_finite(features.pooled, "test features (pooled)")
        scores, neighbours = self.nearest_images(features.pooled, exclude=exclude)
        maps = self.combine(self.level_maps(features.pyramid, neighbours), size)
        if self.uses_maps:
            scores = self.image_scores(scores, self.map_part(maps))
        if checked:
            check_finite(scores, "image scores")
            check_finite(maps, "anomaly maps")
        return SpadeOutput(scores, maps)

    def forward(self, images: Tensor) -> SpadeOutput:
        """Images ``[B, 3, H, W]`` in [0, 1] -> image scores ``[B]`` and maps ``[B, H, W]``."""
        self.require_fitted()
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if size != self.image_size:
            raise ValueError(
                f"images are {size[0]}x{size[1]} pixels but the bank was built from {self.image_size[0]}x"
                f"{self.image_size[1]} images: use the same image_size and crop_size as for fit."
            )
        return self.score_features(self.extract(images), size)

    def for_export(self, size: Tuple[int, int]) -> "SpadeModel":
        """A twin of this fitted model that traces into a graph for inputs of ``size`` ``(H, W)``: the same settings,
        buffers and scoring, its backbone's "same" padding fixed for that size
        (:func:`~lightning_ad.core.padding.fix_same_padding`) and its bank in memory
        (:meth:`~lightning_ad.bank.MemoryBank.in_memory`). This model is left as it is."""
        from .padding import fix_same_padding

        self.require_fitted()
        twin = copy.copy(self)
        twin._modules = {**self._modules, "backbone": fix_same_padding(self.backbone, size), "bank": self.bank.in_memory()}
        return twin

    def end_scoring(self) -> None:
        """After a process's last scoring call of a pass: with a sharded bank under several processes,
        join the others' remaining searches until all are done (they search this process's rows)."""
        drain_sharded(self.bank, self.level_cells, self.gallery_k, self.kappa, self.chunk_bytes, self.bank.index.device)
