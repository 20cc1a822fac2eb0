"""The memory bank: features of the normal training images, held in memory, on disk, or sharded.

:class:`MemoryBank` owns the bank (so it is part of ``state_dict`` and of every checkpoint),
sizes it when a state dict is loaded (the size is unknown before fit), checks that an
incoming bank fits the backbone and levels (:func:`~lightning_ad.bank.loading.check_fits`), and serves rows
by training-image row. Its
interface is small, so that storage changes behind it and :class:`~lightning_ad.core.spade.SpadeModel`
does not:

* :meth:`add` (all rows at once) or :meth:`writer` (streamed batch by batch, then
  :meth:`attach`): rows of training images, with their ids;
* :attr:`pooled`: ``[N, D]`` pooled vectors (always in memory, on every process);
* :meth:`gallery`: the pyramid rows of given images, ready for
  :func:`~lightning_ad.core.knn.grouped_knn` (only those rows are read or copied);
* :meth:`level`, :meth:`pyramid_of`: pyramid rows (whole levels are for small banks and tests).

Rows are ordered by image id (a dataset index), so the bank is a function of the set of
training images, not of batch order or process count.

Storage (``storage``, ``sharding``, ``placement``):

* ``memory`` + ``replicated`` (default): the pyramid levels are registered buffers, saved
  inside the checkpoint, as before.
* ``disk``: fit streams each batch's pyramid into raw files (one per level and process,
  ``level<l>.rank<r>.bin``, rows in the order they arrived, channels last, in the bank
  dtype); test reads the rows of each image's nearest training images on demand
  (:class:`~lightning_ad.bank.disk.LevelFile`, plain reads; :mod:`lightning_ad.bank.loading` finds and checks
  the files). ``sharded``: each process keeps only the rows it extracted (padding
  repeats of the sampler dropped), in memory or on disk. In both cases the checkpoint holds
  the pooled vectors and a manifest of the files (name, absolute path, size, SHA-256,
  the ids of their rows); loading verifies every file it reads and refuses a missing or
  changed one. A checkpoint loads in any number of processes: with as many processes as
  the fit had shards each keeps its own, otherwise process r keeps rows ``r, r + P, ...``.
* ``placement`` ``host`` keeps in-memory levels on the CPU (pinned) when the module moves to
  an accelerator, and each batch copies only its galleries; ``auto`` chooses ``host`` when
  the levels would take more than half of the device's free memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..distributed import rank_and_world
from ..errors import CheckpointError, ConfigurationError
from .disk import BankWriter
from .loading import check_fits, map_shard
from .manifest import MANIFEST_FORMAT, decode_manifest, encode_manifest
from .rows import check_finite
from .settings import BANK_DEVICES, BANK_DTYPES, BANK_SHARDINGS, BANK_STORAGES, dtype_name

__all__ = ["MemoryBank", "BANK_DTYPES", "BANK_STORAGES", "BANK_SHARDINGS", "BANK_DEVICES"]


class MemoryBank(nn.Module):
    """Pooled vectors ``[N, D]`` and pyramid levels ``[N, H_l, W_l, C_l]`` of N training images.

    Args:
        levels: pyramid levels held (e.g. ``(1, 2, 3)``).
        channels: channels of each level, in level order.
        pooled_dim: size D of the pooled vectors.
        dtype: storage precision (distances are always accumulated in float32).
        owner: name used in error messages (the backbone).
        storage: ``memory`` or ``disk`` (files read by rows on demand) for the pyramid levels.
        sharding: ``replicated`` (every process holds every row) or ``sharded`` (each
            process holds its share of the pyramid rows; pooled vectors stay replicated).
        placement: ``auto``, ``host`` or ``accelerator``: where in-memory levels live when
            the module is on an accelerator.
        directory: where a disk or sharded bank writes its files at fit (set by the
            caller), and where a checkpoint's files are looked for by name when their
            recorded path is gone.
    """

    def __init__(self, levels: Sequence[int], channels: Sequence[int], pooled_dim: int,
                 dtype: torch.dtype = torch.float32, owner: str = "", storage: str = "memory",
                 sharding: str = "replicated", placement: str = "auto", directory: Optional[str] = None) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.channels = tuple(channels)
        self.pooled_dim = int(pooled_dim)
        self.dtype = dtype
        self.owner = owner
        self.storage, self.sharding, self.placement = storage, sharding, placement
        self.directory = directory
        #: ``[N]`` image ids (dataset indices), ascending; ``pooled`` ``[N, D]`` and ``level<l>``
        #: ``[N, H_l, W_l, C_l]`` hold the features in the same row order.
        self.register_buffer("index", torch.zeros(0, dtype=torch.long))
        self.register_buffer("image_size", torch.zeros(2, dtype=torch.long))
        #: the file manifest of a disk or sharded bank (JSON, UTF-8) in its state dict; empty otherwise
        self.register_buffer("manifest", torch.zeros(0, dtype=torch.uint8))
        self._empty_features(self.index.device)

    def _empty_features(self, device: torch.device) -> None:
        self.register_buffer("pooled", torch.zeros(0, self.pooled_dim, dtype=self.dtype, device=device))
        for level, channels in zip(self.levels, self.channels):
            self.register_buffer(self._key(level), torch.zeros(0, 0, 0, channels, dtype=self.dtype, device=device))
        # External pyramid (files or a shard): one entry per segment, a tensor [n_s, H, W, C] per level;
        # ``_where`` [N, 2]: (segment, row in it) of each bank row, -1 where this process does not hold it.
        self._segments: List[List[Tensor]] = []
        self._where: Optional[Tensor] = None
        self._manifest: Optional[Dict[str, Any]] = None
        self._shapes: Optional[List[Tuple[int, int, int]]] = None

    @staticmethod
    def _key(level: int) -> str:
        return f"level{level}"

    @property
    def streams(self) -> bool:
        """Whether fit streams rows to files (disk storage or a sharded bank) rather than gathering them."""
        return self.storage == "disk" or self.sharding == "sharded"

    @property
    def external(self) -> bool:
        """Whether the pyramid is outside the level buffers (files, or this process's shard)."""
        return self._where is not None

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return int(self.index.numel())

    def held(self) -> Tensor:
        """``[N]`` bool: the rows whose pyramid this process holds."""
        if self._where is None:
            return torch.ones(len(self), dtype=torch.bool, device=self.index.device)
        return (self._where[:, 0] >= 0).to(self.index.device)

    def level_shape(self, slot: int) -> Tuple[int, int]:
        """``(H_l, W_l)`` of the ``slot``-th level held."""
        if self._shapes is not None:
            return int(self._shapes[slot][0]), int(self._shapes[slot][1])
        bank = getattr(self, self._key(self.levels[slot]))
        return int(bank.shape[1]), int(bank.shape[2])

    def _rows(self, slot: int, rows: Tensor) -> Tensor:
        """Pyramid rows ``[R, H, W, C]`` of bank rows ``rows`` (held ones), read from where they are."""
        rows = rows.to("cpu", torch.long) if self._where is not None else rows
        if self._where is None:
            bank = getattr(self, self._key(self.levels[slot]))
            return bank[rows.to(bank.device)]
        where = self._where[rows]
        if bool((where[:, 0] < 0).any()):
            raise RuntimeError("bank rows requested that this process does not hold (sharded bank)")
        height, width, channels = self._shapes[slot]
        out = torch.empty((rows.numel(), height, width, channels), dtype=self.dtype)
        for segment in torch.unique(where[:, 0]).tolist():
            mask = where[:, 0] == segment
            out[mask] = self._segments[segment][slot][where[mask, 1]]
        return out

    def levels_hwc(self) -> List[Tensor]:
        """One ``[N_held, H_l, W_l, C_l]`` tensor per level (channels last), in level order.

        For a disk or sharded bank this reads every held row into memory: for small banks and tests.
        """
        if self._where is None:
            return [getattr(self, self._key(level)) for level in self.levels]
        rows = self.held().nonzero().flatten().cpu()
        return [self._rows(slot, rows) for slot in range(len(self.levels))]

    def level(self, slot: int) -> Tensor:
        """Pyramid rows of the ``slot``-th level held: ``[N, H_l * W_l, C_l]`` (see :meth:`levels_hwc`)."""
        bank = self.levels_hwc()[slot]
        return bank.reshape(bank.shape[0], bank.shape[1] * bank.shape[2], bank.shape[3])

    def in_memory(self) -> "MemoryBank":
        """This bank when its levels are in-memory buffers on its own device; else an in-memory, replicated copy of
        every row held (read from files or the host): what a traced graph holds (:mod:`lightning_ad.inference.export`)."""
        if self._where is None and self.placement != "host":
            return self
        copy = MemoryBank(self.levels, self.channels, self.pooled_dim, self.dtype, owner=self.owner)
        held = self.held()
        copy.add(self.index[held], self.pooled[held], [level.permute(0, 3, 1, 2) for level in self.levels_hwc()],
                 self.input_size)
        return copy

    def gallery(self, slot: int, neighbours: Tensor, device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
        """What :func:`~lightning_ad.core.knn.grouped_knn` searches for ``neighbours`` ``[B, M]`` (bank rows).

        Returns ``(bank [U, H*W, C], groups [B, M])``. For in-memory levels on ``device`` this is
        the whole level and ``neighbours`` unchanged; otherwise only the U distinct rows named
        are read (from files) or copied (from the host), and ``groups`` indexes them. Either
        way each item searches the same rows in the same order, so the distances are the same.
        """
        device = device if device is not None else self.index.device
        if self._where is None and self.placement != "host":
            bank = getattr(self, self._key(self.levels[slot]))
            if bank.device == torch.device(device) or bank.device.type == torch.device(device).type == "cpu":
                return bank.reshape(bank.shape[0], -1, bank.shape[3]), neighbours
        unique, groups = torch.unique(neighbours, return_inverse=True)
        rows = self._rows(slot, unique)
        rows = rows.reshape(rows.shape[0], -1, rows.shape[3])
        if rows.device != torch.device(device):
            if torch.device(device).type == "cuda" and rows.device.type == "cpu":
                rows = rows.pin_memory()
            rows = rows.to(device, non_blocking=True)
        return rows, groups.to(device)

    def pyramid_of(self, rows: Tensor) -> List[Tensor]:
        """Pyramids of bank rows ``[R]``, as the backbone gives them: ``[R, C_l, H_l, W_l]`` float32."""
        device = self.index.device
        return [self._rows(p, rows).to(device).float().permute(0, 3, 1, 2) for p in range(len(self.levels))]

    @property
    def input_size(self) -> Tuple[int, int]:
        """``(H, W)`` of the images the bank was built from (``(0, 0)`` when empty)."""
        return int(self.image_size[0]), int(self.image_size[1])

    def nbytes(self) -> int:
        """Bytes of the features this process holds (pooled vectors and its pyramid rows, wherever stored)."""
        pooled = self.pooled.numel() * self.pooled.element_size()
        if self._where is None:
            return pooled + sum(t.numel() * t.element_size() for t in self.levels_hwc())
        held = int(self.held().sum())
        size = torch.tensor([], dtype=self.dtype).element_size()
        return pooled + held * sum(h * w * c for h, w, c in self._shapes) * size

    # ------------------------------------------------------------------ writing

    def reset(self) -> None:
        """Empty the bank."""
        device = self.index.device
        self.index = torch.zeros(0, dtype=torch.long, device=device)
        self.image_size = torch.zeros(2, dtype=torch.long, device=device)
        self._empty_features(device)

    def _level_device(self) -> torch.device:
        device = self.index.device
        if device.type == "cpu" or self.placement == "accelerator":
            return device
        if self.placement == "host":
            return torch.device("cpu")
        return device  # auto: decided on the size (see _place)

    def _place(self) -> None:
        """Move in-memory levels where ``placement`` says (host: CPU, pinned when an accelerator is in use)."""
        device = self.index.device
        if self._where is not None or device.type == "cpu":
            return
        keys = [self._key(level) for level in self.levels]
        size = sum(getattr(self, k).numel() * getattr(self, k).element_size() for k in keys)
        host = self.placement == "host"
        if self.placement == "auto" and device.type == "cuda" and size:
            free, _ = torch.cuda.mem_get_info(device)
            host = size > free // 2
        if host:
            self.placement = "host"
            for key in keys:
                value = getattr(self, key)
                self._buffers[key] = value.cpu().pin_memory() if value.numel() else value.cpu()

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        keys = [self._key(level) for level in self.levels]
        kept = {k: self._buffers[k] for k in keys} if self.placement == "host" else {}
        result = super()._apply(fn, recurse)
        for key, value in kept.items():
            self._buffers[key] = value
        if self.placement == "host" and self.index.device.type == "cuda":
            for key in keys:
                value = self._buffers[key]
                if value.numel() and not value.is_pinned():
                    self._buffers[key] = value.pin_memory()
        return result

    def add(self, index: Tensor, pooled: Tensor, pyramid: Sequence[Tensor], image_size: Tuple[int, int]) -> None:
        """Add training images: ids ``[R]`` (distinct, new), pooled ``[R, D]``, pyramid ``[R, C_l, H_l, W_l]`` per level.

        ``image_size``: ``(H, W)`` of the input images the features come from (the same
        for every row). Rows stay sorted by id. In-memory, replicated banks only (others
        are built by :meth:`writer` and :meth:`attach`).
        """
        if self._where is not None:
            raise RuntimeError("rows cannot be added to a disk or sharded bank: build it with writer() and attach()")
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
        level_device = self._level_device()
        for level, fmap in zip(self.levels, pyramid):
            check_finite(fmap, f"training features (level {level})")
            rows = fmap.permute(0, 2, 3, 1).to(device=level_device, dtype=self.dtype)
            current = getattr(self, self._key(level)).to(level_device)
            if len(current) == 0:
                current = current.new_zeros((0, *rows.shape[1:]))
            setattr(self, self._key(level), torch.cat([current, rows])[order.to(level_device)].contiguous())
        self._place()

    def external_state(self) -> Dict[str, Any]:
        """What a streamed extension keeps of this disk or sharded bank: ids, pooled vectors, input size, and its
        manifest's shards and shapes (the files stay as they are)."""
        if self._manifest is None:
            raise RuntimeError("external_state: this bank's pyramid is not in files")
        return {"index": self.index.clone(), "pooled": self.pooled.clone(), "image_size": self.input_size,
                "shards": list(self._manifest["shards"]), "shapes": [list(s) for s in self._manifest["shapes"]]}

    def writer(self, directory: Optional[str], rank: int = 0) -> BankWriter:
        """A :class:`BankWriter` streaming this process's rows to ``directory`` (a disk or sharded bank)."""
        directory = directory or self.directory
        if not directory:
            raise ConfigurationError(
                f"bank_storage={self.storage!r}, bank_sharding={self.sharding!r} writes bank files: set bank_dir.")
        return BankWriter(self, Path(directory), rank, keep=self.storage == "memory")

    def attach(self, index: Tensor, pooled: Tensor, image_size: Tuple[int, int], manifest: Dict[str, Any],
               own: Optional[List[Tensor]] = None, rank: int = 0, processes: int = 1, verify: bool = True) -> None:
        """Become the bank described by ``manifest`` (shards of files) with replicated ids and pooled vectors.

        ``own``: this process's shard (fit rank ``rank``) already in memory, in its file's row
        order. Which rows are held, and how, follows ``storage`` and ``sharding`` (module docstring).
        """
        self.reset()
        device = self.index.device
        self.index = index.to(device=device, dtype=torch.long)
        self.image_size = torch.tensor([int(image_size[0]), int(image_size[1])], device=device)
        self.pooled = pooled.to(device=device, dtype=self.dtype).contiguous()
        self._manifest = manifest
        self._shapes = [tuple(int(s) for s in shape) for shape in manifest["shapes"]]
        count = len(self)
        sorted_ids = self.index.cpu()
        owner = torch.full((count, 2), -1, dtype=torch.long)  # (shard, row in its file): first occurrence
        for shard_no, shard in enumerate(manifest["shards"]):
            ids = shard["index"].to(torch.long)
            if ids.numel() == 0:
                continue
            rows = torch.searchsorted(sorted_ids, ids).clamp_max(count - 1)
            if not torch.equal(sorted_ids[rows], ids):
                raise CheckpointError("the bank file manifest names images that are not in the bank")
            new = owner[rows, 0] < 0  # the first occurrence wins (the sampler's padding repeats)
            owner[rows[new], 0] = shard_no
            owner[rows[new], 1] = torch.arange(ids.numel())[new]
        if bool((owner[:, 0] < 0).any()):
            raise CheckpointError("the bank file manifest does not cover every image of the bank")
        shards = len(manifest["shards"])
        if self.sharding == "replicated" or processes == 1:
            held = torch.ones(count, dtype=torch.bool)
        elif processes == shards:
            held = owner[:, 0] == rank
        else:
            held = torch.arange(count) % processes == rank
        needed = sorted(set(owner[held, 0].tolist()))
        mapped: Dict[int, List[Any]] = {}
        for shard_no in needed:
            if own is not None and shard_no == rank:
                mapped[shard_no] = own
            else:
                mapped[shard_no] = map_shard(manifest["shards"][shard_no], self._shapes, self.dtype, self.directory, verify)
        where = torch.full((count, 2), -1, dtype=torch.long)
        if self.storage == "disk":
            slot = {shard_no: i for i, shard_no in enumerate(needed)}
            self._segments = [mapped[s] for s in needed]
            where[held, 0] = torch.tensor([slot[int(s)] for s in owner[held, 0]], dtype=torch.long)
            where[held, 1] = owner[held, 1]
        else:  # memory: read the held rows once, in bank order
            rows = held.nonzero().flatten()
            segment = []
            for slot, shape in enumerate(self._shapes):
                out = torch.empty((rows.numel(), *shape), dtype=self.dtype)
                for shard_no in needed:
                    mask = owner[rows, 0] == shard_no
                    out[mask] = mapped[shard_no][slot][owner[rows[mask], 1]]
                segment.append(out)
            if self.sharding == "replicated" or bool(held.all()):
                level_device = self._level_device()
                for level, value in zip(self.levels, segment):
                    setattr(self, self._key(level), value.to(level_device))
                self._shapes, self._segments = None, []
                self._place()
                return  # an ordinary in-memory bank (its checkpoint holds the levels again)
            self._segments = [segment]
            where[rows, 0] = 0
            where[rows, 1] = torch.arange(rows.numel())
        self._where = where

    # ------------------------------------------------------------------ saving and loading

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[override]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._where is not None:  # the levels are files: the state dict names them instead
            for level in self.levels:
                destination.pop(prefix + self._key(level), None)
            destination[prefix + "manifest"] = encode_manifest(self._manifest)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        # Size the buffers from the incoming tensors (unknown before fit), after checking
        # that they fit these levels and channels; a file manifest is attached instead.
        incoming = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        extra = decode_manifest(incoming["manifest"]) if incoming.get("manifest") is not None else None
        if extra is not None:
            check_fits(self, incoming, extra)
            rank, processes = rank_and_world()
            self.attach(incoming["index"], incoming["pooled"], tuple(incoming["image_size"].tolist()), extra,
                        rank=rank, processes=processes)
            return
        if "pooled" in incoming:
            check_fits(self, incoming)
            self.reset()
            device = self.index.device
            if "index" in incoming:
                self.index = torch.zeros_like(incoming["index"], device=device)
            self.pooled = torch.zeros(incoming["pooled"].shape, dtype=self.dtype, device=device)
            for level in self.levels:
                value = incoming[self._key(level)]
                setattr(self, self._key(level), torch.zeros(value.shape, dtype=self.dtype, device=self._level_device()))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if prefix + "manifest" in missing_keys:  # checkpoints from before the manifest: an in-memory bank
            missing_keys.remove(prefix + "manifest")
        self._place()

    def make_manifest(self, shards: List[Dict[str, Any]], shapes: List[Tuple[int, int, int]]) -> Dict[str, Any]:
        """The manifest of a bank made of ``shards`` (the :meth:`BankWriter.close` entries, in rank order)."""
        return {"format": MANIFEST_FORMAT, "levels": list(self.levels), "dtype": dtype_name(self.dtype),
                "shapes": [list(shape) for shape in shapes], "shards": shards}
