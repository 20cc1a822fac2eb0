"""Fit across processes: collecting the training features into the bank."""

from __future__ import annotations

import os
import uuid
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..bank import finish_stream
from ..bank.content import repeated_content
from ..bank.rows import shapes_seen_by_any_process
from ..core.spade import Features
from ..distributed import first_occurrences, gather_objects, gather_rows
from ..errors import ConfigurationError

__all__ = ["gather_features", "BankCollector", "single_pass_trainer"]


def gather_features(
    parts: Sequence[Tuple[Tensor, Tensor, Sequence[Tensor], Tuple[int, int]]], device: torch.device
) -> Tuple[Tensor, Any, Tuple[int, int]]:
    """Every process's training features, one row per distinct id, ordered by it.

    Args:
        parts: this process's batches as ``(ids [B], pooled [B, D], pyramid [B, C_l, H_l, W_l]
            per level, (H, W) of the input images)``; may be empty.
        device: where the result goes.

    Returns:
        ``(ids [N], Features, (H, W))``. Collective: every process calls it. A process
        without batches joins with empty rows shaped after another process's.
    """
    shapes = (parts[0][3], [tuple(level.shape[1:]) for level in parts[0][2]], parts[0][1].shape[1]) if parts else None
    known = shapes_seen_by_any_process(shapes)
    image_size, level_shapes, pooled_dim = known
    if parts:
        index = torch.cat([p[0] for p in parts]).to(device)
        pooled = torch.cat([p[1] for p in parts]).float()
        pyramid = [torch.cat([p[2][i] for p in parts]).float() for i in range(len(level_shapes))]
    else:
        index = torch.zeros(0, dtype=torch.long, device=device)
        pooled = torch.zeros(0, pooled_dim, device=device)
        pyramid = [torch.zeros((0, *shape), device=device) for shape in level_shapes]
    index, pooled, pyramid = gather_rows(index), gather_rows(pooled), [gather_rows(level) for level in pyramid]
    keep = first_occurrences(index)
    return index[keep], Features([level[keep] for level in pyramid], pooled[keep]), tuple(image_size)


class BankCollector:
    """One process's training features during fit, made into ``model``'s bank by :meth:`finish` (collective).

    Rows are identified by content (:func:`~lightning_ad.bank.content.content_ids`): the bank is ordered by it, the
    sampler's padding repeats collapse into one row, and an image whose content is already there (in the batches,
    or in the bank being ``extend``-ed) is skipped and named by :meth:`finish`. An in-memory bank keeps the batches
    and gathers them (:func:`gather_features`); a disk or sharded bank streams them to files
    (:func:`finish_stream`) in a new folder ``bank-<id>`` of ``folder`` (default: the trainer's log folder), so that
    no fit overwrites the files of an earlier checkpoint.
    """

    def __init__(self, model: Any, folder: Optional[str], trainer: Any = None, extend: bool = False) -> None:
        self.model, self.writer, self.extend = model, None, extend and model.is_fitted
        if trainer is not None:  # a collective (log_dir): every process gets rank 0's folder
            folder = folder or trainer.log_dir or trainer.default_root_dir
        if model.bank.streams and (not self.extend or model.bank.external):
            name = "bank-" + uuid.uuid4().hex[:8]
            name = trainer.strategy.broadcast(name) if trainer is not None else name
            rank = trainer.global_rank if trainer is not None else 0
            self.writer = model.bank.writer(os.path.join(folder or model.bank.directory or ".", name), rank)
        self.parts: List[Any] = []
        self.names: List[Tuple[int, str]] = []

    def append(self, ids: Tensor, features: Any, image_size: Tuple[int, int], names: Sequence[str]) -> None:
        """One batch: content ids ``[B]``, its :class:`Features`, the input size, and a name per image (for messages)."""
        self.names.extend(zip(ids.tolist(), names))
        if self.writer is not None:
            self.writer.append(ids, features.pooled, features.pyramid, image_size)
        else:
            self.parts.append((ids, features.pooled, features.pyramid, image_size))

    def finish(self) -> List[Tuple[str, str]]:
        """Complete the bank (collective); ``[(skipped image, image or "the bank" with the same content)]``."""
        known = self.model.bank.index.tolist() if self.extend else []
        named = [pair for part in gather_objects(self.names) for pair in part]
        skipped = repeated_content([i for i, _ in named], [n for _, n in named], known)
        if self.writer is not None:
            if not self.extend:
                self.model.reset_bank()
            finish_stream(self.writer, self.model.bank, extend=self.extend)
        else:
            index, features, image_size = gather_features(self.parts, self.model.bank.index.device)
            if not self.extend:
                self.model.set_bank(features, image_size, index)
            elif (new := ~torch.isin(index, self.model.bank.index)).any():
                self.model.bank.add(index[new], features.pooled[new], [level[new] for level in features.pyramid], image_size)
        self.parts, self.writer, self.names = [], None, []
        return skipped


def single_pass_trainer(trainer: Any) -> None:
    """A Trainer that can build the bank: one pass, validation (if any) once after it."""
    if trainer.min_epochs is not None and trainer.min_epochs > 1:
        raise ConfigurationError(
            f"trainer min_epochs={trainer.min_epochs}: SPADE's fit is a single pass over the training "
            "images (no training); set min_epochs to 1 or leave it unset.")
    has_val = sum(getattr(trainer, "num_val_batches", []) or []) > 0
    if has_val and (trainer.val_check_interval != 1.0 or trainer.check_val_every_n_epoch != 1):
        raise ConfigurationError("validation must run once, after the bank is complete: set trainer "
                                 "val_check_interval=1.0 and check_val_every_n_epoch=1.")
