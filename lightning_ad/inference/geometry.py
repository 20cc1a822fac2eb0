"""The input contract's geometry as tensor functions of the photo's size: the way in and the way back.

* The way in (:class:`PhotoPreprocess`): torch's ``uint8`` antialiased bilinear resize to the
  contract's ``image_size`` (what :class:`~lightning_ad.data.transforms.Preprocess` and the
  :class:`~lightning_ad.inference.detector.Detector` run), reproduced bit for bit as two integer-weight
  matrices, with the centre crop folded in, then ``/ 255``.
* The way back (:func:`map_resize_matrices`): a map at the crop's size ``[h, w]`` to the photo's
  size ``[H0, W0]``, NaN where the crop removed the pixel (the rule of :mod:`lightning_ad.inference.detector`).

The contract is an :class:`~lightning_ad.data.contract.InputContract` or its dict form (as a checkpoint stores it).

Every matrix is computed from the photo's size with tensor operations (no Python branch on
it), so an exported graph takes photos of any size: the size is read from the input at run
time (``torch._shape_as_tensor``), in eager mode and in a traced graph alike.

torch's uint8 kernel, per axis (``aten/src/ATen/native/cpu/UpSampleKernel.cpp``): ``scale = in /
out``; ``support = scale`` (at least 1); output ``i`` has centre ``scale (i + 0.5)`` and taps ``j``
in ``[floor(centre - support + 0.5), floor(centre + support + 0.5))`` with weights
``max(0, 1 - |(j - centre + 0.5) / max(scale, 1)|)``, normalised per row, then scaled by ``2^p``
and rounded to integers, ``p`` the largest precision below 22 at which ``2 w_max 2^p`` stays under
``2^15``; each pass computes ``clamp((sum(w_int x) + 2^(p-1)) >> p, 0, 255)``, horizontal first (its
result rounded to uint8 before the vertical pass).
"""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..core.tracing import with_onnx_symbolic
from ..data.contract import ContractLike, InputContract

__all__ = ["crop_offsets", "resize_weights", "PhotoPreprocess", "map_resize_matrices", "restore_map"]

Length = Union[int, Tensor]


def crop_offsets(resized: Sequence[int], crop: Sequence[int]) -> Tuple[int, int]:
    """``(top, left)`` of torchvision's centre crop of ``crop`` ``(h, w)`` from ``resized`` ``(H, W)``
    (its formula, ``round((H - h) / 2)``, Python's rounding).

    >>> crop_offsets((256, 256), (224, 224)), crop_offsets((5, 6), (2, 3))
    ((16, 16), (2, 2))
    """
    return tuple(int(round((int(full) - int(part)) / 2.0)) for full, part in zip(resized, crop))  # type: ignore[return-value]


def _f64(value: float) -> Tensor:
    """``[1]`` float64. Never 0-dim: an exported graph computes 0-dim with 0-dim operands in float32."""
    return torch.tensor([float(value)], dtype=torch.float64)


def _as_length(length: Length) -> Tensor:
    return length if isinstance(length, Tensor) else torch.tensor(int(length))


def resize_weights(n_in: Length, n_out: int) -> Tuple[Tensor, Tensor]:
    """Integer weights ``[n_out, n_in]`` (float64) of torch's uint8 antialiased bilinear resize along one
    axis, and ``2^p`` (float64 scalar) their scale (see the module docstring).

    ``n_in`` may be a 0-dim tensor read from an input's shape (then the result follows it at run time).

    Example:
        >>> weights, scale = resize_weights(4, 2)
        >>> weights / scale  # halving: a triangle two input pixels wide each side, as torch's antialiasing
        tensor([[0.4286, 0.4286, 0.1429, 0.0000],
                [0.0000, 0.1429, 0.4286, 0.4286]], dtype=torch.float64)
    """
    # no arithmetic between 0-dim tensors alone: an exported graph may compute it in float32
    size = _as_length(n_in).to(torch.float64).reshape(1)
    scale = size / _f64(n_out)
    one = torch.ones_like(scale)
    support = torch.where(scale >= 1.0, scale, one)
    invscale = torch.where(scale >= 1.0, one / scale, one)
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale  # [n_out]
    taps = torch.arange(_as_length(n_in), dtype=torch.float64)  # [n_in]
    first = torch.floor(centre - support + 0.5).clamp_min(0.0)
    stop = torch.minimum(torch.floor(centre + support + 0.5), size)
    weights = (one - (((taps[None, :] - centre[:, None]) + 0.5) * invscale).abs()).clamp_min(0.0)
    inside = (taps[None, :] >= first[:, None]) & (taps[None, :] < stop[:, None])
    weights = torch.where(inside, weights, torch.zeros_like(weights))
    weights = weights / weights.sum(dim=1, keepdim=True)
    # precision: the number of p in 0..21 with int(0.5 + w_max 2^(p + 1)) < 2^15 (true for a prefix of them)
    two = _f64(2.0)
    powers = torch.pow(two, torch.arange(1, 23, dtype=torch.float64))
    precision = ((weights.max() * powers + 0.5).floor() < 2.0**15).sum().to(torch.float64).reshape(1)
    factor = torch.pow(two, precision)
    return (weights * factor + 0.5).floor(), factor


def _band(weights: Tensor) -> Tuple[Tensor, Tensor]:
    """The taps of integer weights ``[n_out, n_in]``: ``(index [n_out, T] long, weight [n_out, T] float64)``, ``T``
    the most taps of an output (read at run time); an output's taps are contiguous (a triangle filter), and
    the slots past its last tap weigh 0."""
    inside = weights > 0
    first = inside.to(torch.float32).argmax(dim=1)  # [n_out]: the first tap
    count = inside.sum(dim=1)  # [n_out]
    taps = torch.arange(count.max(), device=weights.device)[None, :]  # [1, T]
    index = first[:, None] + torch.minimum(taps, count[:, None] - 1)  # past the last tap: the last tap again
    return index, torch.where(taps < count[:, None], weights.gather(1, index), torch.zeros_like(weights[:, :1]))


class _TapSums(torch.autograd.Function):
    """Exact integer sums ``[n, 2, R]`` int32 of weight bytes ``[n, 2, T]`` times taps ``[n, T, R]`` (both uint8).

    Eagerly (and in TorchScript) one float32 batched product: every partial sum is an integer below
    ``2^24`` (bytes times bytes, up to 258 taps), so it is exact. In an ONNX graph, one ``MatMulInteger``
    (integer arithmetic, no casts of the taps): the same integers.
    """

    @staticmethod
    def forward(ctx: Any, weights: Tensor, taps: Tensor) -> Tensor:  # noqa: D102
        return torch.bmm(weights.float(), taps.float()).to(torch.int32)

    @staticmethod
    def symbolic(g: Any, weights: Any, taps: Any) -> Any:  # noqa: D102
        return g.op("MatMulInteger", weights, taps)


def _resample(x: Tensor, weights: Tensor, factor: Tensor) -> Tensor:
    """One uint8 pass along the first axis: ``x`` uint8 ``[n_in, R]`` -> uint8 ``[n_out, R]``, with integer
    ``weights`` ``[n_out, n_in]`` of scale ``factor`` (``2^p``).

    Only each output's taps are read (whole rows gathered). Each weight (below ``2^15``) is split into
    bytes ``256 hi + lo``, the two byte sums are taken exactly (:class:`_TapSums`), and the result is
    ``min((256 H + L + d / 2) // d, 255)`` in int32 (``d = 2^p``; every term below ``2^31``).
    """
    index, tap_weights = _band(weights)  # [n_out, T]
    n_out = int(weights.shape[0])
    taps = x.index_select(0, index.reshape(-1)).reshape(n_out, -1, x.shape[1])  # [n_out, T, R] uint8
    high = torch.floor(tap_weights / 256.0)
    split = torch.stack([high, tap_weights - high * 256.0], dim=1).to(torch.uint8)  # [n_out, 2, T]
    sums = with_onnx_symbolic(_TapSums, split, taps)  # [n_out, 2, R] int32
    d = factor.to(torch.int32)
    total = sums[:, 0] * 256 + sums[:, 1] + torch.div(d, 2, rounding_mode="trunc")
    return torch.div(total, d, rounding_mode="trunc").clamp_max(255).to(torch.uint8)  # non-negative: trunc = floor


class PhotoPreprocess(nn.Module):
    """The input contract for photos of any size: uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, h, w]`` in [0, 1].

    Bit for bit what :class:`~lightning_ad.data.transforms.Preprocess` serves (resize to
    ``image_size``, centre crop, ``/ 255``): integer sums kept exact (see :func:`_resample`).
    The photo is rearranged only by transposes of two axes (``[B, H W, 3] -> [B, 3, H W]``,
    ``[rows, cols] -> [cols, rows]``), which ONNX Runtime runs as fast blocked transposes; the pixels
    stay uint8 until the end.
    """

    def __init__(self, contract: ContractLike) -> None:
        super().__init__()
        contract = InputContract.of(contract)
        self.resized = list(contract.image_size)
        self.crop = list(contract.crop)
        self.top, self.left = crop_offsets(self.resized, self.crop)

    def forward(self, images: Tensor) -> Tensor:
        shape = torch._shape_as_tensor(images)  # read at run time, also inside a traced graph
        qw, fw = resize_weights(shape[2], self.resized[1])
        qh, fh = resize_weights(shape[1], self.resized[0])
        batch, height, width = images.shape[0], images.shape[1], images.shape[2]
        h, w = self.crop
        x = images.reshape(batch, height * width, 3).permute(0, 2, 1)  # [B, 3, H W]
        x = x.reshape(batch * 3 * height, width).t().contiguous()  # [W, B 3 H]: the resampled axis first
        x = _resample(x, qw[self.left : self.left + w], fw)  # [w, B 3 H]
        x = x.reshape(w * batch * 3, height).t().contiguous()  # [H, w B 3]
        x = _resample(x, qh[self.top : self.top + h], fh)  # [h, w B 3]
        x = x.reshape(h * w, batch * 3).t().reshape(batch, 3, h, w)
        return x.to(torch.float32) / 255.0


def _axis_matrix(out_len: Length, resized_len: int, crop_len: int, offset: int) -> Tuple[Tensor, Tensor]:
    """One axis of :func:`map_resize_matrices`: weights ``[out_len, crop_len]`` float64 and validity ``[out_len]``."""
    length = _as_length(out_len)
    centre = (torch.arange(length, dtype=torch.float64) + 0.5) * (_f64(resized_len) / length.to(torch.float64).reshape(1))
    valid = (torch.floor(centre) >= offset) & (torch.floor(centre) < offset + crop_len)
    source = (centre - 0.5 - offset).clamp(0.0, crop_len - 1.0)
    low = torch.floor(source).clamp(max=crop_len - 1.0)
    high = (low + 1.0).clamp(max=crop_len - 1.0)
    frac = source - low
    columns = torch.arange(crop_len, dtype=torch.float64)[None, :]
    zero = torch.zeros((), dtype=torch.float64)
    weights = torch.where(columns == low[:, None], (torch.ones_like(frac) - frac)[:, None], zero) + torch.where(
        columns == high[:, None], frac[:, None], zero)
    return weights, valid


def map_resize_matrices(original: Sequence[Length], contract: ContractLike) -> Tuple[Tensor, Tensor, Tensor]:
    """``(rows [H0, h], cols [W0, w], valid [H0, W0] bool)``: ``rows @ map @ cols.T`` is the map at
    the original size ``(H0, W0)`` (ints, or 0-dim tensors read at run time), NaN (not inspected)
    where ``valid`` is False. See the rule of :mod:`lightning_ad.inference.detector`."""
    contract = InputContract.of(contract)
    resized, crop = contract.image_size, contract.crop
    top, left = crop_offsets(resized, crop)
    rows, valid_y = _axis_matrix(original[0], resized[0], crop[0], top)
    cols, valid_x = _axis_matrix(original[1], resized[1], crop[1], left)
    return rows, cols, valid_y[:, None] & valid_x[None, :]


def restore_map(anomaly_map: Tensor, original: Sequence[int], contract: ContractLike) -> Tensor:
    """Maps ``[..., h, w]`` -> float32 ``[..., H0, W0]`` at the original size, NaN where not inspected."""
    rows, cols, valid = map_resize_matrices(original, contract)
    full = torch.matmul(torch.matmul(rows.float(), anomaly_map.float()), cols.float().T)
    # + 0 inside, + NaN outside: one mask of the photo's size, not one per map
    return full + torch.where(valid, torch.zeros((), dtype=full.dtype), torch.full((), float("nan"), dtype=full.dtype))
