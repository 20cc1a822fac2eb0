"""The demo data set's pictures: procedural images of a part and the exact masks of their defects.

The images show a turned metal flange (centre bore, six bolt holes, an engraved ring) lying
on a dark rubber conveyor belt, seen from above under a slightly varying light; defective
ones add one of :data:`DEMO_DEFECT_TYPES` (``scratch``, ``stain``, ``hole``) with its exact
pixel mask. :func:`render_sample` draws one image (``[S, S, 3]`` uint8 RGB) and its mask
(``[S, S]`` bool) from a seed, with numpy only: each image has its own random stream.
Writing them as a data set is :mod:`lightning_ad.data.demo_install`.

Everything is computed from a seed; no third-party images or data are used, so the pictures
are synthetic and fall under this library's own licence (Apache-2.0).
"""

from __future__ import annotations

import zlib
from typing import Callable, Tuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["DEMO_DEFECT_TYPES", "DEMO_MASK_FRACTION", "DEMO_FORMAT_VERSION", "render_sample"]

#: Defect folders of the test split (each has a ``ground_truth`` folder).
DEMO_DEFECT_TYPES: Tuple[str, ...] = ("scratch", "stain", "hole")
#: Every defect mask covers a fraction of the image inside this range.
DEMO_MASK_FRACTION: Tuple[float, float] = (0.003, 0.05)
#: Version of the pictures, recorded with every data set: bump it when they change, so that
#: folders made earlier are not mistaken for new ones.
DEMO_FORMAT_VERSION = 2


def _rng_for(seed: int, split: str, kind: str, index: int) -> np.random.Generator:
    """Independent stream per image (stable across processes and versions)."""
    tag = zlib.crc32(f"{split}/{kind}".encode("utf-8"))
    return np.random.default_rng([int(seed), tag, int(index)])


def render_sample(seed: int, split: str, kind: str, index: int, size: int):
    """Image ``index`` of ``split``/``kind`` (``good`` or a defect type) for ``seed``: ``(image, mask)``,
    ``[size, size, 3]`` uint8 RGB and ``[size, size]`` bool (True exactly on the changed pixels)."""
    image, mask, _ = _render(_rng_for(seed, split, kind, index), size, kind)
    return image, mask


_F = np.float32


def _smooth_noise(rng: np.random.Generator, shape, sigma, mode="reflect") -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=_F), sigma, mode=mode)
    return n / _F(n.std() + 1e-6)


def _window(cx: float, cy: float, ext: float, S: int):
    x0, x1 = max(0, int(cx - ext)), min(S, int(np.ceil(cx + ext)) + 1)
    y0, y1 = max(0, int(cy - ext)), min(S, int(np.ceil(cy + ext)) + 1)
    return slice(y0, y1), slice(x0, x1)


def _render(rng: np.random.Generator, size: int, kind: str):
    """Render one picture.

    Returns ``(image, mask, clean)``: ``clean`` is the same picture without
    the defect (same noise), so that ``image != clean`` exactly on ``mask``.
    """
    S = size
    s = S / 256.0
    grid = np.arange(S, dtype=_F) + _F(0.5)
    xx, yy = grid[None, :], grid[:, None]  # broadcast to (S, S)

    # -- per-image variation ------------------------------------------------
    cx = S / 2 + rng.uniform(-4, 4) * s
    cy = S / 2 + rng.uniform(-4, 4) * s
    scale = 1.0 + rng.uniform(-0.012, 0.012)
    rot = 0.3 + rng.normal(0, np.deg2rad(2.5))  # a fixtured part: small rotation jitter
    light = np.deg2rad(-135 + rng.normal(0, 12))  # light comes from top-left
    lx, ly = _F(np.cos(light)), _F(np.sin(light))
    gain = rng.normal(1.0, 0.035)
    grad = rng.uniform(0.06, 0.16)
    grad_dir = light + rng.normal(0, 0.4)
    tint = (1.0 + rng.normal(0, 0.012, size=3)) * np.array([0.97, 0.98, 1.0])
    bg_tint = np.array([0.95, 1.0, 1.08], dtype=_F)

    R_out = 0.400 * S * scale
    bw_out = 0.028 * S * scale
    R_bore = 0.110 * S * scale
    bw_in = 0.018 * S * scale
    R_ring = 0.205 * S * scale
    R_bolt = 0.285 * S * scale
    r_hole = 0.033 * S * scale
    bw_hole = 0.012 * S * scale

    dx, dy = xx - _F(cx), yy - _F(cy)
    r = np.hypot(dx, dy)
    cos_rel = (dx * lx + dy * ly) / np.maximum(r, _F(1e-3))  # cos(angle - light)

    # -- background: dark rubber conveyor belt with the part's shadow ------
    c = max(4, S // 8)
    coarse = ndimage.zoom(_smooth_noise(rng, (c, c), 1.2), S / c, order=1)[:S, :S]
    bg = 0.20 + 0.012 * _smooth_noise(rng, (S, S), 0.8 * s) + 0.012 * coarse
    bg = bg + _F(0.006) * np.sin(_F(2 * np.pi / (7.0 * s)) * yy + _F(rng.uniform(0, 2 * np.pi)))
    d_sh = np.hypot(dx + _F(6 * s * lx), dy + _F(6 * s * ly))  # shadow falls away from light
    sh = np.clip((R_out - d_sh) / _F(10 * s) + _F(0.5), 0, 1)
    bg = bg * (1 - _F(0.55) * sh * sh * (3 - 2 * sh))

    # -- turned metal surface ---------------------------------------------
    nr = int(np.ceil(R_out)) + 4
    nt = 512
    brushed = _smooth_noise(rng, (nr, nt), (0.5, 10 * s), mode="wrap")
    t_idx = ((np.arctan2(dy, dx) - _F(rot)) % _F(2 * np.pi)) * _F(nt / (2 * np.pi))
    brushed = ndimage.map_coordinates(
        brushed, [np.minimum(r, _F(nr - 1)), t_idx], order=1, mode="grid-wrap"
    )
    profile = 0.028 * _smooth_noise(rng, nr, 0.7) + 0.022 * _smooth_noise(rng, nr, 6 * s)
    rings = np.interp(r, np.arange(nr), profile).astype(_F)
    surface = 0.60 + 0.085 * (2 * cos_rel * cos_rel - 1) + 0.05 * cos_rel + rings + 0.02 * brushed
    surface *= 1 - _F(0.35) * np.exp(-np.square((r - _F(R_ring)) / _F(0.9 * s)))  # engraved ring

    metal = np.where(r >= R_out - bw_out, 0.50 + 0.33 * cos_rel + 0.02 * brushed, surface)
    metal = np.where(r < R_bore + bw_in, 0.48 - 0.30 * cos_rel + 0.02 * brushed, metal)
    hole_cov = np.clip(_F(R_bore + 0.5) - r, 0, 1)  # 1 inside the through bore
    flat = (r > R_bore + bw_in + 3 * s) & (r < R_out - bw_out - 3 * s)
    for k in range(6):  # bolt holes with bevelled edges
        a = rot + k * np.pi / 3
        hx, hy = cx + R_bolt * np.cos(a), cy + R_bolt * np.sin(a)
        win = _window(hx, hy, r_hole + bw_hole + 3 * s + 2, S)
        hdx, hdy = xx[:, win[1]] - _F(hx), yy[win[0], :] - _F(hy)
        d = np.hypot(hdx, hdy)
        cos_l = (hdx * lx + hdy * ly) / np.maximum(d, _F(1e-3))
        metal[win] = np.where(d < r_hole + bw_hole, 0.46 - 0.30 * cos_l, metal[win])
        hole_cov[win] = np.maximum(hole_cov[win], np.clip(_F(r_hole + 0.5) - d, 0, 1))
        flat[win] &= d > r_hole + bw_hole + 3 * s

    metal_rgb = metal[..., None] * tint.astype(_F)
    hole_rgb = (0.05 + 0.4 * bg)[..., None] * bg_tint
    bg_rgb = bg[..., None] * bg_tint
    part_cov = np.clip(_F(R_out + 0.5) - r, 0, 1)[..., None]
    hole_cov = hole_cov[..., None]
    part_rgb = metal_rgb + hole_cov * (hole_rgb - metal_rgb)
    img = bg_rgb + part_cov * (part_rgb - bg_rgb)
    img = ndimage.gaussian_filter(img, (0.55 * s, 0.55 * s, 0))  # optics

    # -- lighting: gradient and exposure ----------------------------------
    lit = _F(gain) * (1 + _F(grad / S) * ((xx - _F(S / 2)) * _F(np.cos(grad_dir))
                                          + (yy - _F(S / 2)) * _F(np.sin(grad_dir))))
    img *= lit[..., None]

    clean = img
    mask = np.zeros((S, S), dtype=bool)
    if kind != "good":
        img, mask = _add_defect(rng, kind, img, flat, lit, (lx, ly), xx, yy, S)

    # -- sensor noise and quantisation (same noise for clean and defect) ---
    noise = rng.standard_normal(img.shape, dtype=_F) * _F(1.8 / 255)

    def quant(a):
        return np.clip(np.rint((a + noise) * 255), 0, 255).astype(np.uint8)

    out, clean_u8 = quant(img), quant(clean)
    if kind != "good":
        # Guarantee that every mask pixel is visibly changed, and nothing else.
        weak = mask & (np.abs(out.astype(np.int16) - clean_u8).max(axis=2) < 8)
        if weak.any():
            out[weak] = (clean_u8[weak] * 0.6).astype(np.uint8)
        out[~mask] = clean_u8[~mask]
    return out, mask, clean_u8


def _pick_point(rng: np.random.Generator, region: np.ndarray) -> Tuple[float, float]:
    ys, xs = np.nonzero(region)
    i = rng.integers(len(ys))
    return float(xs[i]) + 0.5, float(ys[i]) + 0.5


def _add_defect(rng, kind, img, flat, lit, lvec, xx, yy, S):
    """Draw one defect on the flat metal; return (image, mask)."""
    s = S / 256.0
    lo, hi = DEMO_MASK_FRACTION
    half = 112 / 256 * S - 6 * s  # stay inside the 224/256 centre crop
    inside = (np.abs(xx - S / 2) < half) & (np.abs(yy - S / 2) < half)
    allowed = flat & inside
    draw: Callable = {"scratch": _scratch, "stain": _stain, "hole": _hole}[kind]
    for _ in range(100):
        mask, alpha, color = draw(rng, S, s, xx, yy, allowed, lvec)
        mask &= allowed
        if lo * 1.05 <= mask.mean() <= hi * 0.95:
            break
    else:  # pragma: no cover - the shape ranges make this practically impossible
        raise RuntimeError(f"could not place a {kind} defect")
    alpha = np.where(mask, alpha, 0).astype(_F)[..., None]
    target = color.astype(_F) * lit[..., None]
    return img + alpha * (target - img), mask


def _scratch(rng, S, s, xx, yy, allowed, lvec):
    xm, ym = _pick_point(rng, allowed)  # middle of the scratch
    length = rng.uniform(0.28, 0.45) * S
    # mostly along the annulus (so that it stays on the flat metal), any tilt
    ang = np.arctan2(ym - S / 2, xm - S / 2) + np.pi / 2 + rng.uniform(-0.9, 0.9)
    bend = rng.uniform(-0.15, 0.15) * length
    half = 0.5 * length * np.array([np.cos(ang), np.sin(ang)])
    p0, p2 = np.array([xm, ym]) - half, np.array([xm, ym]) + half
    p1 = (p0 + p2) / 2 + bend * np.array([-np.sin(ang), np.cos(ang)])
    t = np.linspace(0, 1, 48)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    width = max(2, int(round(rng.uniform(3.0, 5.0) * s)))
    canvas = Image.new("L", (S, S), 0)
    ImageDraw.Draw(canvas).line([tuple(p) for p in pts], fill=255, width=width, joint="curve")
    mask = np.asarray(canvas) > 0
    depth = ndimage.distance_transform_edt(mask)
    prof = np.clip(depth / max(depth.max(), 1e-6), 0, 1)
    if rng.random() < 0.5:  # bright scratch catching the light
        color = np.array([0.98, 0.98, 0.96])
        alpha = 0.55 + 0.45 * prof
    else:  # dark groove
        color = np.array([0.16, 0.16, 0.17])
        alpha = 0.55 + 0.4 * prof
    return mask, alpha, color


def _stain(rng, S, s, xx, yy, allowed, lvec):
    x0, y0 = _pick_point(rng, allowed)
    rad = rng.uniform(0.035, 0.07) * S
    field = 1 - np.hypot(xx - _F(x0), yy - _F(y0)) / _F(rad)
    field = field + 0.28 * _smooth_noise(rng, (S, S), 2.5 * s)
    for _ in range(rng.integers(0, 4)):  # satellite droplets
        a, dist = rng.uniform(0, 2 * np.pi), rad * rng.uniform(1.1, 1.7)
        rr = rad * rng.uniform(0.12, 0.25)
        dd = np.hypot(xx - _F(x0 + dist * np.cos(a)), yy - _F(y0 + dist * np.sin(a))) / _F(rr)
        field = np.maximum(field, 1 - dd)
    mask = field > 0
    body = np.clip(field / 0.35, 0, 1)
    rim = np.exp(-np.square(field / 0.08))  # dried "coffee ring" edge
    if rng.random() < 0.5:
        color = np.array([0.42, 0.25, 0.11])  # rust / residue
    else:
        color = np.array([0.17, 0.15, 0.10])  # oil
    alpha = 0.45 + 0.3 * body + 0.2 * rim
    return mask, alpha, color


def _hole(rng, S, s, xx, yy, allowed, lvec):
    x0, y0 = _pick_point(rng, allowed)
    rad = rng.uniform(0.04, 0.065) * S
    aspect = rng.uniform(0.7, 1.0)
    ang = rng.uniform(0, np.pi)
    ddx, ddy = xx - _F(x0), yy - _F(y0)
    u = ddx * _F(np.cos(ang)) + ddy * _F(np.sin(ang))
    v = ddy * _F(np.cos(ang)) - ddx * _F(np.sin(ang))
    d = np.hypot(u, v / _F(aspect)) / _F(rad) + 0.12 * _smooth_noise(rng, (S, S), 1.5 * s)
    mask = d < 1
    # Inside the pit the wall facing the light is in shadow and the far wall
    # is lit; a thin bright burr rim on the side of the light.
    facing = -(ddx * lvec[0] + ddy * lvec[1]) / _F(rad)  # > 0 away from the light
    inner = 0.06 + 0.22 * np.clip(facing, 0, None) * np.clip(d, 0, 1)
    shade = np.where((d > 0.82) & (facing < -0.2), 0.95, np.clip(inner, 0, 1))
    color = shade[..., None] * np.array([1.0, 0.98, 0.95], dtype=_F)
    return mask, 0.92, color
