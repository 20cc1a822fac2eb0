"""Building and growing the bank from images, Trainer-free: the bank is a log of good images.

Rows are identified by content (:func:`~lightning_ad.bank.content.content_ids`), so images may arrive in any
order and in any number of calls; after each, everything learned from the bank is learned again
(:func:`~lightning_ad.core.calibration.calibrate`), as a fit on all the images would.
:class:`BankGrowth` is a part of :class:`~lightning_ad.core.spade.SpadeModel` (a mixin).
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any, Callable, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from ..bank import finish_stream
from ..bank.content import content_ids
from .records import Features
from .views import BANK_AUGMENTS, check_views, view_ids, views_of

if TYPE_CHECKING:
    from .calibration import CalibrationSettings

__all__ = ["BankGrowth"]


class BankGrowth:
    """``fit_bank`` and ``add_images``, and the rows they add (see the module docstring)."""

    @property
    def views_per_image(self) -> int:
        """Views of each training image in the bank (``bank_augment``; 0: none)."""
        images = self.bank_size
        return (len(self.bank) - images) // images if images else len(BANK_AUGMENTS[self.bank_augment])

    def rows_held(self) -> str:
        """What the bank holds, in words: ``"N training image(s)"``, and ``" and M views of them (bank_augment)"``."""
        views = len(self.bank) - self.bank_size
        return f"{self.bank_size} training image(s)" + (f" and {views} views of them (bank_augment)" if views else "")

    def bank_rows(self, images: Tensor, ids: Tensor) -> Tuple[Tensor, Features]:
        """The bank rows of training images ``[B, 3, H, W]`` with content ids ``ids`` ``[B]``: their ids and features,
        followed by those of their ``bank_augment`` views (:func:`~lightning_ad.core.views.view_ids`)."""
        names = check_views(BANK_AUGMENTS[self.bank_augment], tuple(images.shape[-2:]))
        if not names:
            return ids, self.extract(images)
        return (torch.cat([ids.cpu(), view_ids(ids.cpu(), len(names))]),
                self.extract(torch.cat([images, views_of(images, names)])))

    def fit_bank(self, images: Iterable[Tensor] | Tensor, batch_size: int = 32, settings: Optional["CalibrationSettings"] = None,
                 say: Optional[Callable[[str], Any]] = None) -> List[Tuple[int, int]]:
        """Build the bank from normal images (a tensor ``[N, 3, H, W]`` in [0, 1] or an iterable of batches), in memory
        or on disk, then learn what fit learns from them (:func:`~lightning_ad.core.calibration.calibrate`:
        ``search_radius: auto``, scales, thresholds by ``settings``, default quantiles). ``say``: where its report
        lines go (None: nowhere). Returns ``[(skipped, kept)]``: positions of images whose content repeats an
        earlier one (skipped)."""
        self.reset_bank()
        return self.add_images(images, batch_size, settings, say)

    def add_images(self, images: Iterable[Tensor] | Tensor, batch_size: int = 32, settings: Optional["CalibrationSettings"] = None,
                   say: Optional[Callable[[str], Any]] = None) -> List[Tuple[int, int]]:
        """Add normal images to the bank (as :meth:`fit_bank`; an empty model is fitted) and learn again everything
        learned from the bank, as a fit on all the images would. An image whose content is already in the bank is
        skipped: returns ``[(position of the skipped image, position of the earlier one or -1: the bank)]``."""
        from .calibration import CalibrationSettings, calibrate  # calibration builds on this module

        batches = images.split(batch_size) if isinstance(images, Tensor) else images
        extend = self.is_fitted
        known = {int(i): -1 for i in self.bank.index.tolist()}
        parts, kept, size, seen, skipped = [], [], self.image_size if extend else None, 0, []
        streams, writer = self.bank.streams and (not extend or self.bank.external), None
        for batch in batches:
            if size is not None and tuple(batch.shape[-2:]) != tuple(size):
                raise ValueError(f"add_images: images of {tuple(batch.shape[-2:])} pixels cannot join a bank of {tuple(size)}")
            size = tuple(batch.shape[-2:])
            ids = content_ids(batch)
            new = []
            for at, image_id in enumerate(ids.tolist()):
                if image_id in known:
                    skipped.append((seen + at, known[image_id]))
                else:
                    known[image_id] = seen + at
                    new.append(at)
            seen += int(batch.shape[0])
            if not new:
                continue
            batch, ids = batch[new], ids[new]
            rows, features = self.bank_rows(batch, ids)  # with bank_augment, the views' rows too
            if streams:  # files in a new folder of bank_dir: no fit overwrites the files of another bank
                folder = os.path.join(self.bank.directory, f"bank-{uuid.uuid4().hex[:8]}") if self.bank.directory else None
                writer = writer or self.bank.writer(folder)
                writer.append(rows, features.pooled, features.pyramid, size)
            else:
                parts.append((rows, features))
            kept.append((ids, batch.detach().cpu()))
        if not seen or size is None:
            raise ValueError("fit_bank needs at least one training image")
        if writer is not None:
            finish_stream(writer, self.bank, extend=extend)
        elif parts:
            ids = torch.cat([i for i, _ in parts])
            self.bank.add(ids, torch.cat([f.pooled for _, f in parts]),
                          [torch.cat([f.pyramid[i] for _, f in parts]) for i in range(len(self.layers))], size)
        if kept:
            settings = settings or CalibrationSettings()
            self.keep_few_shot_images(torch.cat([i for i, _ in kept]), torch.cat([b for _, b in kept]), settings.few_shot_below)
            self.forget_learned()
            self.calibration = calibrate(self, settings, say=say or (lambda line: None))
        return skipped

    def keep_few_shot_images(self, ids: Optional[Tensor], images: Optional[Tensor], limit: int) -> None:
        """Keep the prepared images ``[n, 3, H, W]`` (content ``ids`` ``[n]``, new to the bank) beside those kept
        already, in bank row order, while the bank holds fewer than ``limit`` images (thresholds of few-shot banks
        are learned from their views); drop them all once it holds more, or when ``images`` is None."""
        if images is None or self.bank_size >= limit:
            self.few_shot_images = self.few_shot_images.new_zeros(0, 3, 0, 0)
            return
        index = self.bank.index.cpu()[: self.bank_size]  # the training images' rows (their views follow)
        old = index[torch.isin(index, ids.cpu(), invert=True)]
        held = self.few_shot_images if self.few_shot_images.shape[0] else images.new_zeros(0, *images.shape[1:])
        if held.shape[0] != old.numel():  # the bank's earlier images were not kept (a checkpoint of an older version)
            self.few_shot_images = self.few_shot_images.new_zeros(0, 3, 0, 0)
            return
        merged = torch.cat([held.to(images.device), images.to(torch.float32)])
        order = torch.argsort(torch.cat([old, ids.cpu()]))
        self.few_shot_images = merged[order.to(merged.device)].to(self.bank.index.device).contiguous()

    def forget_learned(self) -> None:
        """Back to nothing learned from the bank (thresholds, scales, the decided radius): before learning again."""
        for buffer in (self.image_threshold, self.pixel_threshold, self.dn2_scale, self.map_scale, self.level_scales,
                       self.decided_radius):
            buffer.fill_(float("nan"))
        self.radius_choice = None
