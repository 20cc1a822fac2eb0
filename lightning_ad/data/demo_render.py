"""The embedded demo data set: procedural pictures and masks, written in the MVTec AD layout.

:func:`make_demo_dataset` writes a small inspection data set in the MVTec AD
folder layout so that the library's main command can run on a fresh machine
without any download.  The images show a turned metal flange (centre bore,
six bolt holes, an engraved ring) lying on a dark rubber conveyor belt, seen
from above under a slightly varying light; the test split adds three defect
types (``scratch``, ``stain``, ``hole``) with exact pixel masks.

Everything is computed from a seed with numpy; no third-party images or data
are used, so the generated files are synthetic and fall under this library's
own licence (Apache-2.0).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import zlib
from pathlib import Path
from typing import Callable, Dict, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..errors import LightningADError

__all__ = [
    "DEMO_CATEGORY",
    "DEMO_DEFECT_TYPES",
    "DEMO_MASK_FRACTION",
    "DemoDatasetError",
    "make_demo_dataset",
]

#: Name of the category folder written by :func:`make_demo_dataset`.
DEMO_CATEGORY = "demo_parts"
#: Defect folders of the test split (each has a ``ground_truth`` folder).
DEMO_DEFECT_TYPES: Tuple[str, ...] = ("scratch", "stain", "hole")
#: Every defect mask covers a fraction of the image inside this range.
DEMO_MASK_FRACTION: Tuple[float, float] = (0.003, 0.05)

# Bump when the pictures change, so that old folders are not mistaken for new.
_FORMAT_VERSION = 2
# Recorded in the marker files; kept from before the renderer had its own module, so that
# folders made earlier are still recognised (and the files stay byte-identical).
_GENERATOR = "lightning_ad.data.demo"
_MARKER = ".complete"  # written last; holds the arguments as JSON
_STAMP = ".lightning_ad_demo.json"  # written first; "this folder is ours"
_TMP_TAG = ".partial-"
_OLD_TAG = ".replaced-"

PathLike = Union[str, "os.PathLike[str]"]


class DemoDatasetError(LightningADError, RuntimeError):
    """The target folder exists and cannot be used or replaced."""


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def make_demo_dataset(
    root: PathLike,
    category: str = DEMO_CATEGORY,
    *,
    n_train: int = 40,
    n_test_good: int = 12,
    n_test_per_defect: int = 8,
    image_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate (or reuse) the demo inspection data set and return its folder.

    Layout (MVTec AD), with ``NNN`` counting from ``000``::

        <root>/<category>/train/good/NNN.png
        <root>/<category>/test/good/NNN.png
        <root>/<category>/test/<defect>/NNN.png
        <root>/<category>/ground_truth/<defect>/NNN_mask.png

    for ``<defect>`` in :data:`DEMO_DEFECT_TYPES` (``scratch``, ``stain``,
    ``hole``).  Images are RGB PNGs of ``image_size`` x ``image_size``
    pixels; masks are single-channel (``L``) PNGs of the same size holding
    255 exactly on the pixels the defect changed and 0 elsewhere.  Good
    images have no mask.  Each defect covers a fraction of the image inside
    :data:`DEMO_MASK_FRACTION` and lies inside the central 224/256 crop with
    a margin.

    Args:
        root: folder that receives the category folder (created if missing).
        category: name of the category folder (a plain folder name).
        n_train: number of defect-free training images.
        n_test_good: number of defect-free test images.
        n_test_per_defect: number of test images (and masks) per defect type.
        image_size: side of the square images in pixels (at least 64).
        seed: seed of the generator.  The same arguments give byte-identical
            files (with the same numpy, scipy and Pillow versions on the same
            platform); every image has its own random stream, so image ``k``
            does not depend on how many images are requested.
        overwrite: replace an existing folder that this function made with
            other arguments, or that it left incomplete.  A folder it did not
            make is never deleted, not even with ``overwrite=True``.

    Returns:
        ``Path(root) / category``.

    Behaviour with existing files: when the folder already holds a complete
    data set made with the same arguments (its ``.complete`` marker, written
    last, records them) it is returned untouched.  A new data set is written
    into a temporary sibling folder which is renamed into place only when
    complete, so an interrupted run never leaves a folder that looks
    complete; leftovers of interrupted runs of this machine are removed on
    the next generation.  An empty folder is simply filled.  Any other
    existing folder raises :class:`DemoDatasetError` naming it, unless
    ``overwrite=True`` and it is a data set made by this function.

    Licence: the content is generated procedurally from the seed; it contains
    no third-party images or data.
    """
    params = _check_args(
        category, n_train, n_test_good, n_test_per_defect, image_size, seed
    )
    root = Path(os.fspath(root))
    target = root / category

    state = _inspect(target, params)
    if state == "complete":
        return target
    if state in ("mismatch", "incomplete") and not overwrite:
        raise DemoDatasetError(_refusal(target, state, params))
    if state == "foreign":
        raise DemoDatasetError(
            f"{target} exists and was not made by make_demo_dataset (no "
            f"{_STAMP} inside); refusing to touch it, even with "
            "overwrite=True. Move or delete it yourself, or choose another "
            "root/category."
        )

    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root, category)
    tmp = _new_sibling(root, f".{category}{_TMP_TAG}{os.getpid()}-")
    try:
        _write_json(tmp / _STAMP, {**params, "host": socket.gethostname(), "pid": os.getpid()})
        _generate_into(tmp, params)
        _write_json(tmp / _MARKER, params)  # last file: the set is complete
        _install(tmp, target, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --------------------------------------------------------------------------
# folder bookkeeping
# --------------------------------------------------------------------------
def _check_args(category, n_train, n_test_good, n_test_per_defect, image_size, seed) -> Dict:
    if not isinstance(category, str) or category in ("", ".", "..") or any(
        sep in category for sep in ("/", "\\", os.sep)
    ) or category.startswith("."):
        raise ValueError(f"category must be a plain folder name, got {category!r}")
    for name, value, low in (
        ("n_train", n_train, 1),
        ("n_test_good", n_test_good, 0),
        ("n_test_per_defect", n_test_per_defect, 0),
        ("image_size", image_size, 64),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    return {
        "generator": _GENERATOR,
        "format_version": _FORMAT_VERSION,
        "category": category,
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_per_defect": int(n_test_per_defect),
        "image_size": int(image_size),
        "seed": int(seed),
        "defect_types": list(DEMO_DEFECT_TYPES),
    }


def _read_json(path: Path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _inspect(target: Path, params: Dict) -> str:
    """One of: missing, empty, complete, mismatch, incomplete, foreign."""
    if not os.path.lexists(target):
        return "missing"
    if target.is_symlink() or not target.is_dir():
        return "foreign"
    if not any(target.iterdir()):
        return "empty"
    marker = _read_json(target / _MARKER)
    if isinstance(marker, dict) and marker.get("generator") == _GENERATOR:
        return "complete" if marker == params else "mismatch"
    stamp = _read_json(target / _STAMP)
    if isinstance(stamp, dict) and stamp.get("generator") == _GENERATOR:
        return "incomplete"
    return "foreign"


def _refusal(target: Path, state: str, params: Dict) -> str:
    if state == "mismatch":
        old = _read_json(target / _MARKER) or {}
        diff = ", ".join(
            f"{k}={old.get(k)!r} (requested {params[k]!r})"
            for k in sorted(params)
            if old.get(k) != params[k]
        )
        return (
            f"{target} holds a demo data set made with other arguments: {diff}. "
            "Pass overwrite=True to replace it, or choose another root/category."
        )
    return (
        f"{target} holds an incomplete demo data set (no {_MARKER} marker; an "
        "earlier run was probably interrupted). Pass overwrite=True to replace it."
    )


def _new_sibling(parent: Path, prefix: str) -> Path:
    """Create a new empty folder ``parent/prefix<random>`` (umask permissions)."""
    while True:
        path = parent / (prefix + secrets.token_hex(4))
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_partials(root: Path, category: str) -> None:
    """Delete temporary folders of dead generator processes of this host."""
    host = socket.gethostname()
    for prefix in (f".{category}{_TMP_TAG}", f".{category}{_OLD_TAG}"):
        for path in root.glob(prefix + "*"):
            if path.is_symlink() or not path.is_dir():
                continue
            stamp = _read_json(path / _STAMP)
            if not (isinstance(stamp, dict) and stamp.get("generator") == _GENERATOR):
                continue  # not ours (or the stamp is not yet written): leave it
            if prefix.endswith(_TMP_TAG):
                pid = stamp.get("pid")
                if stamp.get("host") != host or not isinstance(pid, int) or _pid_alive(pid):
                    continue
            shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, target: Path, params: Dict) -> None:
    """Atomically move the finished folder ``tmp`` to ``target``."""
    old = None
    state = _inspect(target, params)
    if state in ("mismatch", "incomplete"):  # ours and overwrite=True
        old = _new_sibling(target.parent, f".{target.name}{_OLD_TAG}")
        os.rmdir(old)  # only reserved the name
        os.replace(target, old)
    elif state == "empty":
        try:
            os.rmdir(target)
        except OSError:
            pass
    try:
        os.replace(tmp, target)
    except OSError:
        # Someone else finished first: accept their result if it is ours too.
        if _inspect(target, params) == "complete":
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return
        if old is not None and not os.path.lexists(target):
            os.replace(old, target)
        raise DemoDatasetError(f"could not move the generated data set into {target}")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _generate_into(folder: Path, params: Dict) -> None:
    size, seed = params["image_size"], params["seed"]
    jobs = [("train", "good", params["n_train"]), ("test", "good", params["n_test_good"])]
    jobs += [("test", d, params["n_test_per_defect"]) for d in DEMO_DEFECT_TYPES]
    for split, kind, count in jobs:
        img_dir = folder / split / kind
        img_dir.mkdir(parents=True)
        mask_dir = None
        if kind != "good":
            mask_dir = folder / "ground_truth" / kind
            mask_dir.mkdir(parents=True)
        width = max(3, len(str(count - 1)))
        for i in range(count):
            image, mask = _render_sample(seed, split, kind, i, size)
            name = f"{i:0{width}d}"
            _save_png(Image.fromarray(image, "RGB"), img_dir / f"{name}.png")
            if mask_dir is not None:
                _save_png(Image.fromarray(mask.astype(np.uint8) * 255, "L"),
                          mask_dir / f"{name}_mask.png")


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="PNG", compress_level=1)


# --------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------
def _rng_for(seed: int, split: str, kind: str, index: int) -> np.random.Generator:
    """Independent stream per image (stable across processes and versions)."""
    tag = zlib.crc32(f"{split}/{kind}".encode("utf-8"))
    return np.random.default_rng([int(seed), tag, int(index)])


def _render_sample(seed: int, split: str, kind: str, index: int, size: int):
    """Return ``(image uint8 HxWx3, mask bool HxW)`` for one file."""
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
