"""Pictures of anomaly scores: heatmaps, overlays with mask outlines, ROC curves, score histograms.

Pure functions on numpy arrays (torch tensors on the CPU are accepted too); figures
are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
backend state, no window), so they are safe in worker processes and tests.

Heatmap scaling (fixed, the same for every image, so colours compare across images):
a raw anomaly map (feature distances, ``>= 0``) goes through
:func:`~lightning_ad.core.thresholds.normalize_scores` with the *pixel threshold*
``theta``: ``0`` stays ``0``, ``theta`` becomes ``0.5`` (the middle of the colour
map), ``3 theta`` becomes ``0.83``, and the scale tends to ``1`` for large
distances. So "warmer than the middle colour" means "above the pixel threshold",
whatever the image. When the threshold is unknown (NaN or not positive), the map is
divided by its own maximum instead (per image, relative colours only).

Outline colours (absent from the jet colour map): ground truth ``GT_COLOR``
(magenta), prediction (map ``>= theta``) ``PRED_COLOR`` (white).

Legend (:func:`with_legend`, under the overlays that ``test`` and ``predict`` save): the image's
raw score, its normalised score and the decision at the image threshold, then the colour bar of
the map's scale, ticked at the raw distances ``theta / 2``, ``theta`` (the middle) and ``2 theta``.
"""

from __future__ import annotations

import io
import math
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..core.metrics import binary_auroc, binary_roc
from ..core.thresholds import decide, normalize_scores

__all__ = [
    "GT_COLOR",
    "PRED_COLOR",
    "DEFAULT_CMAP",
    "to_numpy",
    "image_to_uint8",
    "scale_map",
    "colorize",
    "heatmap",
    "blend",
    "mask_outline",
    "draw_outline",
    "overlay",
    "legend_strip",
    "with_legend",
    "roc_figure",
    "score_histogram_figure",
    "figure_to_png",
    "png_to_array",
]

#: RGB colour of the ground-truth outline.
GT_COLOR: Tuple[int, int, int] = (255, 0, 255)
#: RGB colour of the predicted-mask outline.
PRED_COLOR: Tuple[int, int, int] = (255, 255, 255)
#: Matplotlib colour map of the heatmaps (dark blue = 0, green-yellow = threshold, dark red = far above).
DEFAULT_CMAP = "jet"
#: Background and text colour of the legend strip.
LEGEND_BACKGROUND: Tuple[int, int, int] = (24, 24, 24)
LEGEND_TEXT: Tuple[int, int, int] = (255, 255, 255)
#: The narrowest legend (pixels): a narrower picture is padded to it, so the text stays legible.
LEGEND_MIN_WIDTH = 200


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, a (CPU or device) torch tensor, or a nested sequence."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def image_to_uint8(image: Any) -> np.ndarray:
    """``[3, H, W]`` or ``[H, W, 3]`` float in [0, 1] (or uint8), or ``[H, W]`` grey -> ``[H, W, 3]`` uint8.

    Torch tensors are taken as channels-first (as served by the data loaders); numpy
    arrays as channels-last unless only their first axis has 1 or 3 entries.
    """
    array = to_numpy(image)
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3 and array.shape[0] in (1, 3):
        if isinstance(image, torch.Tensor) or array.shape[-1] not in (1, 3):
            array = np.moveaxis(array, 0, -1)  # tensors are channels-first
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"expected an image [3, H, W] or [H, W, 3], got shape {tuple(array.shape)}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    return np.ascontiguousarray((np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def scale_map(anomaly_map: Any, pixel_threshold: float) -> np.ndarray:
    """Raw map ``[H, W]`` (feature distances) -> ``[H, W]`` float64 in [0, 1], threshold at 0.5.

    See the module docstring: ``normalize_scores(map, pixel_threshold)``; when the
    threshold is unknown, ``map / max(map)`` (all zeros for an all-zero map).
    """
    raw = to_numpy(anomaly_map).astype(np.float64)
    if raw.ndim != 2:
        raise ValueError(f"expected an anomaly map [H, W], got shape {tuple(raw.shape)}")
    threshold = float(pixel_threshold) if pixel_threshold is not None else math.nan
    if math.isfinite(threshold) and threshold > 0:
        # normalize_scores' formula in numpy, bitwise the same values: per-image
        # torch calls on a small map cost more in thread-pool wake-ups than in arithmetic (TestReport draws
        # one per test image inside the test loop)
        raw = np.clip(raw, 0.0, None)
        with np.errstate(divide="ignore", invalid="ignore"):  # torch computes t / x as t * (1 / x)
            above = 1.0 - threshold * np.reciprocal(2.0 * np.where(raw > 0, raw, 1.0))
        return np.where(raw <= threshold, raw / (2.0 * threshold), above)
    raw = np.clip(np.nan_to_num(raw, nan=0.0, posinf=0.0), 0.0, None)
    peak = raw.max() if raw.size else 0.0
    return raw / peak if peak > 0 else np.zeros_like(raw)


def colorize(values: Any, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """Values ``[H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 RGB through a matplotlib colour map."""
    array = np.clip(np.nan_to_num(to_numpy(values).astype(np.float64), nan=0.0), 0.0, 1.0)
    rgba = colormaps[cmap](array, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def heatmap(anomaly_map: Any, pixel_threshold: float, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """Raw map ``[H, W]`` -> ``[H, W, 3]`` uint8 RGB with the fixed scaling of :func:`scale_map`."""
    return colorize(scale_map(anomaly_map, pixel_threshold), cmap)


def blend(image: Any, colors: Any, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colors``; both ``[H, W, 3]`` (image any form :func:`image_to_uint8` takes).

    Returns ``[H, W, 3]`` uint8.
    """
    base = image_to_uint8(image).astype(np.float32)
    top = np.asarray(colors).astype(np.float32)
    if base.shape != top.shape:
        raise ValueError(f"image {base.shape} and colours {top.shape} differ in shape")
    return (base * (1.0 - alpha) + top * alpha + 0.5).clip(0, 255).astype(np.uint8)


def mask_outline(mask: Any, width: int = 1) -> np.ndarray:
    """Boundary ``[H, W]`` bool of a binary mask ``[H, W]``: mask pixels within ``width`` px of its edge.

    Pixels on the image border that belong to the mask count as boundary, so a region
    cut by the border is drawn closed.
    """
    binary = to_numpy(mask).astype(bool)
    if binary.ndim != 2:
        raise ValueError(f"expected a mask [H, W], got shape {tuple(binary.shape)}")
    if not binary.any():
        return np.zeros_like(binary)
    eroded = ndimage.binary_erosion(binary, structure=np.ones((3, 3), bool), iterations=max(1, int(width)), border_value=0)
    return binary & ~eroded


def draw_outline(rgb: np.ndarray, mask: Any, color: Sequence[int], width: int = 1) -> np.ndarray:
    """A copy of ``rgb`` ``[H, W, 3]`` uint8 with the outline of ``mask`` ``[H, W]`` painted in ``color``."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    out[mask_outline(mask, width)] = np.asarray(color, dtype=np.uint8)
    return out


def overlay(
    image: Any,
    anomaly_map: Any,
    pixel_threshold: float,
    *,
    gt_mask: Optional[Any] = None,
    pred_mask: Optional[Any] = None,
    alpha: float = 0.5,
    width: int = 1,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
    """The heatmap of ``anomaly_map`` blended over ``image``, with mask outlines: ``[H, W, 3]`` uint8.

    Args:
        image: ``[3, H, W]`` float in [0, 1] (as served by the data loaders) or ``[H, W, 3]``.
        anomaly_map: raw map ``[H, W]`` of the same size.
        pixel_threshold: raw pixel threshold (scaling: see the module docstring).
        gt_mask: ``[H, W]`` ground truth, outlined in :data:`GT_COLOR`, or None.
        pred_mask: ``[H, W]`` predicted mask, outlined in :data:`PRED_COLOR`; None: none
            drawn (pass ``map >= threshold`` to outline the prediction).
        alpha: weight of the heatmap.
        width: outline width in pixels.
    """
    colors = heatmap(anomaly_map, pixel_threshold, cmap)
    out = blend(image, colors, alpha)
    if gt_mask is not None:
        out = draw_outline(out, gt_mask, GT_COLOR, width)
    if pred_mask is not None:
        out = draw_outline(out, pred_mask, PRED_COLOR, width)
    return out


# ---------------------------------------------------------------------- legend


def _font(size: int) -> Any:
    """Pillow's own font at ``size`` pixels (no file, no new dependency); its bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or built without FreeType
        return ImageFont.load_default()


def _wrap(pieces: Sequence[str], font: Any, width: float) -> list:
    """Lines of ``pieces`` joined by two spaces, each at most ``width`` pixels wide where a piece fits."""
    lines: list = []
    for piece in pieces:
        if lines and font.getlength(lines[-1] + "  " + piece) <= width:
            lines[-1] += "  " + piece
        else:
            lines.append(piece)
    return lines


def legend_strip(
    width: int,
    pixel_threshold: float,
    score: Optional[float] = None,
    image_threshold: float = math.nan,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
    """The legend of an overlay, ``width`` pixels wide: ``[h, width, 3]`` uint8 (``h`` follows the font).

    Text (wrapped to the width): ``score <raw> (normalised <n>) >= | < image threshold <tau>:
    anomalous | normal`` (the normalised score and the decision are those of
    :func:`~lightning_ad.core.thresholds.normalize_scores` and
    :func:`~lightning_ad.core.thresholds.decide`; without a known image threshold only the raw
    score is shown). Under it, the colour bar of :func:`scale_map`: 0 at the left, the pixel
    threshold ``theta`` in the middle (ticked, with ``theta / 2`` and ``2 theta`` at a quarter and three
    quarters), tending to 1 (far above ``theta``) at the right. With no known pixel threshold, the bar
    reads 0 to the image's own maximum. The font grows with the width (11 to 28 pixels).
    """
    width = int(width)
    size = int(min(28, max(11, round(width / 32))))
    font = _font(size)
    pad = max(3, size // 3)
    line_height = size + max(2, size // 4)
    pieces = []
    if score is not None and math.isfinite(float(score)):
        raw = float(score)
        tau = float(image_threshold) if image_threshold is not None else math.nan
        pieces.append(f"score {raw:.4g}")
        if math.isfinite(tau) and tau > 0:
            normalized = float(normalize_scores(torch.tensor([raw], dtype=torch.float64), tau)[0])
            anomalous = bool(decide(torch.tensor([raw], dtype=torch.float64), tau)[0])
            pieces += [f"(normalised {normalized:.3f})", f"{'>=' if anomalous else '<'} image threshold {tau:.4g}:",
                       "anomalous" if anomalous else "normal"]
        else:
            pieces.append("(no image threshold)")
    theta = float(pixel_threshold) if pixel_threshold is not None else math.nan
    known = math.isfinite(theta) and theta > 0
    lines = _wrap(pieces, font, width - 2 * pad)
    bar_top = pad + len(lines) * line_height + (pad if lines else 0)
    bar_height = max(8, size)
    tick = max(3, size // 3)
    labels_top = bar_top + bar_height + tick + 1
    height = labels_top + line_height + pad
    strip = Image.new("RGB", (width, height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for row, line in enumerate(lines):
        draw.text((pad, pad + row * line_height), line, fill=LEGEND_TEXT, font=font)
    left, right = pad, width - pad  # the bar: columns [left, right)
    span = max(1, right - left)
    ramp = colorize(((np.arange(span) + 0.5) / span)[None, :], cmap)  # [1, span, 3]
    strip.paste(Image.fromarray(np.repeat(ramp, bar_height, axis=0), "RGB"), (left, bar_top))
    # most important first: a label that would touch one already drawn is left out
    if known:
        ticks = [(0.5, f"pixel thr {theta:.3g}", "middle"), (0.0, "0", "left"),
                 (0.25, f"{theta / 2:.3g}", "middle"), (0.75, f"{2 * theta:.3g}", "middle")]
    else:
        ticks = [(0.0, "0", "left"), (1.0, "image max (no pixel threshold)", "right")]
    taken: list = []
    for position, text, anchor in ticks:
        x = left + int(round(position * (span - 1)))
        long = position == 0.5 and known
        draw.line([(x, bar_top + bar_height), (x, bar_top + bar_height + tick * (2 if long else 1) - 1)],
                  fill=LEGEND_TEXT)
        if long:
            draw.line([(x, bar_top), (x, bar_top + bar_height - 1)], fill=LEGEND_TEXT)  # the threshold across the bar
        text_width = font.getlength(text)
        start = {"left": x, "middle": x - text_width / 2, "right": x - text_width}[anchor]
        start = min(max(start, 0), width - text_width)
        if any(start < end + size / 2 and start + text_width + size / 2 > begin for begin, end in taken):
            continue  # no room beside a label already drawn
        taken.append((start, start + text_width))
        draw.text((start, labels_top), text, fill=LEGEND_TEXT, font=font)
    return np.asarray(strip)


def with_legend(
    picture: Any,
    pixel_threshold: float,
    score: Optional[float] = None,
    image_threshold: float = math.nan,
    cmap: str = DEFAULT_CMAP,
    min_width: int = LEGEND_MIN_WIDTH,
) -> np.ndarray:
    """``picture`` ``[H, W, 3]`` with its :func:`legend_strip` under it: ``[H + h, max(W, min_width), 3]`` uint8.

    The picture keeps its pixels at the top left; a picture narrower than ``min_width`` is padded on
    the right with the legend's background, so that a small image still gets a legible legend.
    """
    rgb = image_to_uint8(picture)
    height, width = rgb.shape[:2]
    strip = legend_strip(max(width, int(min_width)), pixel_threshold, score, image_threshold, cmap)
    out = np.empty((height + strip.shape[0], strip.shape[1], 3), np.uint8)
    out[:height] = np.asarray(LEGEND_BACKGROUND, np.uint8)
    out[:height, :width] = rgb
    out[height:] = strip
    return out


# ---------------------------------------------------------------------- figures


def _new_figure(size: Tuple[float, float] = (5.0, 4.5)) -> Figure:
    figure = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _thin(x: np.ndarray, y: np.ndarray, steps: int = 2000) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices of a monotone curve in [0, 1]^2 that move it by at least ``1/steps`` (both ends kept).

    Enough for a picture (at most ``2 steps + 2`` points) however many distinct scores
    there are; the steep parts keep their vertices.
    """
    if x.size <= 2 * steps:
        return x, y
    codes = np.round(x * steps).astype(np.int64) * (steps + 1) + np.round(y * steps).astype(np.int64)
    keep = np.ones(x.size, dtype=bool)
    keep[1:] = codes[1:] != codes[:-1]
    keep[-1] = True
    return x[keep], y[keep]


def roc_figure(scores: Any, target: Any, threshold: Optional[float] = None, title: str = "ROC") -> Figure:
    """ROC curve of raw ``scores`` against ``target`` (same shape, 1 = anomalous), with its AUROC.

    ``threshold`` (raw, optional) marks the operating point ``score >= threshold``.
    Both classes must be present (else ``ValueError`` from the metric).
    """
    scores_t = torch.as_tensor(to_numpy(scores)).flatten()
    target_t = torch.as_tensor(to_numpy(target)).flatten()
    fpr, tpr, _ = binary_roc(scores_t, target_t)
    auroc = float(binary_auroc(scores_t, target_t))
    x, y = _thin(fpr.numpy(), tpr.numpy())
    figure = _new_figure()
    ax = figure.add_subplot()
    ax.plot(x, y, color="tab:blue", lw=2, label=f"AUROC = {auroc:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    if threshold is not None and math.isfinite(float(threshold)):
        predicted = scores_t.double() >= float(threshold)
        positive = target_t.bool()
        op_fpr = float((predicted & ~positive).sum()) / max(1, int((~positive).sum()))
        op_tpr = float((predicted & positive).sum()) / max(1, int(positive.sum()))
        ax.plot([op_fpr], [op_tpr], "o", color="tab:red", ms=7,
                label=f"threshold {float(threshold):.4g}: FPR {op_fpr:.3f}, TPR {op_tpr:.3f}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{title} ({int(target_t.bool().sum())} positive / {int((~target_t.bool()).sum())} negative)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return figure


def score_histogram_figure(
    scores: Any, labels: Any, threshold: Optional[float] = None, title: str = "image scores", bins: int = 30
) -> Figure:
    """Histograms of raw image ``scores`` ``[N]`` of normal (label 0) and anomalous (label 1) images.

    Other labels (-1, unknown) are drawn as "unlabelled". ``threshold`` (raw, the image
    threshold tau) is drawn as a vertical line. Shared bins over all scores and tau.
    """
    values = to_numpy(scores).astype(np.float64).ravel()
    classes = to_numpy(labels).astype(np.int64).ravel()
    if values.shape != classes.shape:
        raise ValueError(f"scores {values.shape} and labels {classes.shape} differ in shape")
    tau = float(threshold) if threshold is not None else math.nan
    finite = values[np.isfinite(values)]
    span = list(finite) + ([tau] if math.isfinite(tau) else [])
    low, high = (min(span), max(span)) if span else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    figure = _new_figure((6.0, 4.0))
    ax = figure.add_subplot()
    for value, name, color in ((0, "normal", "tab:blue"), (1, "anomalous", "tab:red"), (None, "unlabelled", "tab:grey")):
        chosen = values[classes == value] if value is not None else values[(classes != 0) & (classes != 1)]
        if chosen.size:
            ax.hist(chosen, bins=edges, alpha=0.55, color=color, label=f"{name} ({chosen.size})")
    if math.isfinite(tau):
        ax.axvline(tau, color="black", lw=2, ls="--", label=f"threshold tau = {tau:.4g}")
    ax.set_xlabel("image score (raw feature distance)")
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure


def figure_to_png(figure: Figure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes (Agg)."""
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def png_to_array(data: bytes) -> np.ndarray:
    """PNG bytes -> ``[H, W, 3]`` uint8 RGB (e.g. for ``SummaryWriter.add_image(..., dataformats="HWC")``)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
