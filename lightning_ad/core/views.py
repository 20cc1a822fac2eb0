"""Augmented views of normal images: small shifts, small rotations, flips.

Few-shot fits use them twice: to learn thresholds from fewer training images than leave-one-out
needs (:mod:`lightning_ad.core.calibration`), and, with ``bank_augment``, as extra bank rows
(what the few-shot detectors RAD and AnomalyDINO do with their few normal images).

A view is named by a string: ``shift:<dy>:<dx>`` (pixels; the border reflected),
``rotate:<degrees>`` (about the centre, the border reflected), ``hflip``, ``vflip``,
``rot90``, ``rot180``, ``rot270`` (square images only for 90 and 270). Views are
deterministic: the same image and view give the same pixels on every run.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigurationError

__all__ = ["THRESHOLD_VIEWS", "BANK_AUGMENTS", "VIEW_BIT", "view", "views_of", "check_views", "view_ids", "row_groups"]

#: Views of each training image scored to learn few-shot thresholds: turns of 3 and 6 degrees both ways (a part
#: slightly misplaced on the line). No flip (a mirrored part may be a defect), and no shift (measured on bottle,
#: 8-pixel shifts with a reflected border scored as high as defects).
THRESHOLD_VIEWS: Tuple[str, ...] = ("rotate:3", "rotate:-3", "rotate:6", "rotate:-6")

#: Named sets of ``bank_augment``: the views added to the bank beside each training image.
BANK_AUGMENTS: Dict[str, Tuple[str, ...]] = {
    "none": (),
    "flips": ("hflip", "vflip"),
    "rotations": ("rot90", "rot180", "rot270"),
    "flips+rotations": ("hflip", "vflip", "rot90", "rot180", "rot270"),
}

#: Bit 62 of a bank row's id marks a view of a training image (the content ids of images use 62 bits): the views
#: sort after every training image, and a view's id names its image (:func:`row_groups`).
VIEW_BIT = 1 << 62


def check_views(names: Sequence[str], size: Tuple[int, int]) -> Tuple[str, ...]:
    """``names`` if each is a view of images of ``size`` ``(H, W)``; :class:`ConfigurationError` naming one that is not."""
    for name in names:
        kind, *args = name.split(":")
        ok = (kind == "shift" and len(args) == 2 and all(_is_int(a) for a in args)
              and all(abs(int(a)) < s for a, s in zip(args, size))) \
            or (kind == "rotate" and len(args) == 1 and _is_float(args[0])) \
            or (kind in ("hflip", "vflip", "rot180") and not args) \
            or (kind in ("rot90", "rot270") and not args and size[0] == size[1])
        if not ok:
            raise ConfigurationError(
                f"view {name!r} is not one of shift:<dy>:<dx> (pixels, less than the image), rotate:<degrees>, hflip, vflip, "
                f"rot180, or rot90/rot270 (square images only; these are {size[0]}x{size[1]}).")
    return tuple(names)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def view(images: Tensor, name: str) -> Tensor:
    """The view ``name`` of images ``[B, 3, H, W]`` (same shape and dtype).

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> view(x, "shift:0:1")[0, 0, 0].tolist(), view(x, "hflip")[0, 0, 0].tolist()
        ([1.0, 0.0, 1.0, 2.0], [3.0, 2.0, 1.0, 0.0])
    """
    kind, *args = name.split(":")
    if kind == "hflip":
        return images.flip(-1)
    if kind == "vflip":
        return images.flip(-2)
    if kind in ("rot90", "rot180", "rot270"):
        return torch.rot90(images, {"rot90": 1, "rot180": 2, "rot270": 3}[kind], dims=(-2, -1))
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if kind == "shift":  # content moves by (dy, dx); the uncovered border is the reflection of the image
        dy, dx = int(args[0]), int(args[1])
        pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
        padded = F.pad(images, pad, mode="reflect")
        top, left = max(-dy, 0), max(-dx, 0)
        return padded[..., top:top + height, left:left + width].contiguous()
    if kind == "rotate":
        angle = math.radians(float(args[0]))
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]], dtype=torch.float64)
        grid = F.affine_grid(theta.to(images.dtype).unsqueeze(0).expand(images.shape[0], 2, 3), list(images.shape),
                             align_corners=False)
        turned = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return turned.clamp(0.0, 1.0) if images.is_floating_point() else turned
    raise ConfigurationError(f"unknown view {name!r}")


def views_of(images: Tensor, names: Sequence[str]) -> Tensor:
    """``[B * V, 3, H, W]``: the ``V`` views ``names`` of each image of ``[B, 3, H, W]``, image by image
    (the views of image 0 first)."""
    if not names:
        return images[:0]
    stacked = torch.stack([view(images, name) for name in names], dim=1)  # [B, V, 3, H, W]
    return stacked.reshape(-1, *images.shape[1:])


def view_ids(ids: Tensor, count: int) -> Tensor:
    """``[B * count]`` bank ids of the ``count`` views of images whose content ids are ``ids`` ``[B]`` (in the order
    of :func:`views_of`): :data:`VIEW_BIT`, the image's id without its lowest 3 bits, and the view's number 1..7.

    Example:
        >>> view_ids(torch.tensor([16, 41]), 2).tolist() == [VIEW_BIT + 17, VIEW_BIT + 18, VIEW_BIT + 41, VIEW_BIT + 42]
        True
    """
    if not 0 <= count <= 7:
        raise ValueError(f"view_ids: at most 7 views of an image, not {count}")
    base = (ids.to(torch.long) >> 3) << 3
    numbers = torch.arange(1, count + 1, dtype=torch.long, device=base.device)
    return (VIEW_BIT | (base.unsqueeze(1) + numbers)).reshape(-1)


def row_groups(index: Tensor) -> Tensor:
    """``[N]`` the image each bank row belongs to (a training image and its views share a group), from the rows'
    ids ``index`` ``[N]``."""
    return (index & ~VIEW_BIT) >> 3
