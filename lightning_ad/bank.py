"""The memory bank: features of the normal training images, in registered buffers.

:class:`MemoryBank` owns its buffers (so the bank is part of ``state_dict`` and of
every checkpoint), sizes them when a state dict is loaded (the size is unknown before
fit), checks that an incoming bank fits the backbone and levels, and serves rows by
training-image row. Its interface is small, so that storage can change behind it:

* :meth:`add`: rows of training images (pooled vectors and pyramid), with their ids;
* :attr:`pooled`: ``[N, D]`` pooled vectors;
* :meth:`level`: ``[N, H_l * W_l, C_l]`` pyramid rows of one level (channels last);
* :meth:`pyramid_of`: the pyramids of given rows, as the backbone gives them.

Rows are kept sorted by image id (a dataset index), so the bank is a function of the
set of training images, not of batch order or process count.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from .errors import CheckpointError, NumericalError

__all__ = ["MemoryBank", "BANK_DTYPES", "check_finite"]

#: Accepted names of the bank storage precision.
BANK_DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def check_finite(tensor: Tensor, what: str) -> Tensor:
    """Raise :class:`~lightning_ad.errors.NumericalError` (a ``FloatingPointError``) on NaN or infinity."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise NumericalError(
            f"{what} contain {bad} NaN or infinite values. Check the input images (all-constant or "
            "corrupt files) and, with mixed precision, try precision=32 or bank_dtype='float32'."
        )
    return tensor


class MemoryBank(nn.Module):
    """Pooled vectors ``[N, D]`` and pyramid levels ``[N, H_l, W_l, C_l]`` of N training images.

    Args:
        levels: pyramid levels held (e.g. ``(1, 2, 3)``).
        channels: channels of each level, in level order.
        pooled_dim: size D of the pooled vectors.
        dtype: storage precision (distances are always accumulated in float32).
        owner: name used in error messages (the backbone).
    """

    def __init__(self, levels: Sequence[int], channels: Sequence[int], pooled_dim: int,
                 dtype: torch.dtype = torch.float32, owner: str = "") -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.channels = tuple(channels)
        self.pooled_dim = int(pooled_dim)
        self.dtype = dtype
        self.owner = owner
        #: ``[N]`` image ids (dataset indices), ascending; ``pooled`` ``[N, D]`` and ``level<l>``
        #: ``[N, H_l, W_l, C_l]`` hold the features in the same row order.
        self.register_buffer("index", torch.zeros(0, dtype=torch.long))
        self.register_buffer("image_size", torch.zeros(2, dtype=torch.long))
        self._empty_features(self.index.device)

    def _empty_features(self, device: torch.device) -> None:
        self.register_buffer("pooled", torch.zeros(0, self.pooled_dim, dtype=self.dtype, device=device))
        for level, channels in zip(self.levels, self.channels):
            self.register_buffer(self._key(level), torch.zeros(0, 0, 0, channels, dtype=self.dtype, device=device))

    @staticmethod
    def _key(level: int) -> str:
        return f"level{level}"

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return int(self.index.numel())

    def levels_hwc(self) -> List[Tensor]:
        """One ``[N, H_l, W_l, C_l]`` tensor per level (channels last), in level order."""
        return [getattr(self, self._key(level)) for level in self.levels]

    def level(self, position: int) -> Tensor:
        """Pyramid rows of the ``position``-th level held: ``[N, H_l * W_l, C_l]``."""
        bank = self.levels_hwc()[position]
        return bank.reshape(bank.shape[0], bank.shape[1] * bank.shape[2], bank.shape[3])

    def level_shape(self, position: int) -> Tuple[int, int]:
        """``(H_l, W_l)`` of the ``position``-th level held."""
        bank = self.levels_hwc()[position]
        return int(bank.shape[1]), int(bank.shape[2])

    def pyramid_of(self, rows: Tensor) -> List[Tensor]:
        """Pyramids of bank rows ``[R]``, as the backbone gives them: ``[R, C_l, H_l, W_l]`` float32."""
        return [bank[rows].float().permute(0, 3, 1, 2) for bank in self.levels_hwc()]

    @property
    def input_size(self) -> Tuple[int, int]:
        """``(H, W)`` of the images the bank was built from (``(0, 0)`` when empty)."""
        return int(self.image_size[0]), int(self.image_size[1])

    def nbytes(self) -> int:
        """Bytes held by the features."""
        return sum(t.numel() * t.element_size() for t in [self.pooled, *self.levels_hwc()])

    # ------------------------------------------------------------------ writing

    def reset(self) -> None:
        """Empty the bank."""
        device = self.index.device
        self.index = torch.zeros(0, dtype=torch.long, device=device)
        self.image_size = torch.zeros(2, dtype=torch.long, device=device)
        self._empty_features(device)

    def add(self, index: Tensor, pooled: Tensor, pyramid: Sequence[Tensor], image_size: Tuple[int, int]) -> None:
        """Add training images: ids ``[R]`` (distinct, new), pooled ``[R, D]``, pyramid ``[R, C_l, H_l, W_l]`` per level.

        ``image_size``: ``(H, W)`` of the input images the features come from (the same
        for every row). Rows stay sorted by id.
        """
        count = pooled.shape[0]
        if count == 0:
            raise ValueError("cannot add zero training images to the bank")
        if len(pyramid) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} pyramid levels, got {len(pyramid)}")
        device = self.index.device
        index = index.to(device=device, dtype=torch.long)
        size = torch.tensor([int(image_size[0]), int(image_size[1])], device=device)
        if len(self) and not torch.equal(size, self.image_size):
            raise ValueError(f"training images of {tuple(image_size)} pixels cannot join a bank of {self.input_size}")
        merged = torch.cat([self.index, index])
        if index.shape != (count,) or torch.unique(merged).numel() != merged.numel():
            raise ValueError("bank ids must be distinct: one per training image")
        check_finite(pooled, "training features (pooled)")
        order = torch.argsort(merged)
        self.index = merged[order]
        self.image_size = size
        self.pooled = torch.cat([self.pooled, pooled.to(device=device, dtype=self.dtype)])[order].contiguous()
        for level, fmap in zip(self.levels, pyramid):
            check_finite(fmap, f"training features (level {level})")
            rows = fmap.permute(0, 2, 3, 1).to(device=device, dtype=self.dtype)
            current = getattr(self, self._key(level))
            if len(current) == 0:
                current = current.new_zeros((0, *rows.shape[1:]))
            setattr(self, self._key(level), torch.cat([current, rows])[order].contiguous())

    # ------------------------------------------------------------------ loading

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        # Size the buffers from the incoming tensors (unknown before fit), after checking
        # that they fit these levels and channels.
        incoming = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        if "pooled" in incoming:
            self._check_incoming(incoming)
            device = self.index.device
            if "index" in incoming:
                self.index = torch.zeros_like(incoming["index"], device=device)
            self.pooled = torch.zeros(incoming["pooled"].shape, dtype=self.dtype, device=device)
            for level in self.levels:
                value = incoming[self._key(level)]
                setattr(self, self._key(level), torch.zeros(value.shape, dtype=self.dtype, device=device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _check_incoming(self, incoming: Dict[str, Tensor]) -> None:
        levels_in = sorted(int(k[len("level"):]) for k in incoming if k.startswith("level"))
        problems = []
        if levels_in != list(self.levels):
            problems.append(f"levels {levels_in} (configured: {list(self.levels)})")
        pooled = incoming["pooled"]
        if pooled.ndim != 2 or pooled.shape[1] != self.pooled_dim:
            problems.append(f"pooled size {tuple(pooled.shape[1:])} ({self.owner}: {self.pooled_dim})")
        for level, channels in zip(self.levels, self.channels):
            value = incoming.get(self._key(level))
            if value is not None and (value.ndim != 4 or value.shape[-1] != channels):
                problems.append(f"level {level} has {value.shape[-1] if value.ndim else '?'} channels ({self.owner}: {channels})")
        sizes = {int(v.shape[0]) for k, v in incoming.items() if k != "image_size"}
        if len(sizes) > 1:
            problems.append(f"bank tensors disagree on the number of images {sorted(sizes)}")
        if problems:
            raise CheckpointError(
                f"the memory bank in this state dict does not fit the configured model (backbone={self.owner!r}, "
                f"layers={list(self.levels)}): " + "; ".join(problems)
                + ". Configure the backbone and layers the bank was fitted with, or fit again."
            )


def rename_legacy_keys(state_dict: Dict[str, Tensor], prefix: str) -> None:
    """Map a round-1 state dict (``bank_pooled``, ``bank_level1`` ...) onto :class:`MemoryBank`'s keys, in place."""
    renames = {"bank_index": "bank.index", "bank_image_size": "bank.image_size", "bank_pooled": "bank.pooled"}
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        local = key[len(prefix):]
        if local in renames:
            state_dict[prefix + renames[local]] = state_dict.pop(key)
        elif local.startswith("bank_level"):
            state_dict[prefix + "bank.level" + local[len("bank_level"):]] = state_dict.pop(key)

