"""Fit and test SPADE on a list of data sets and configurations; print one table (Markdown, then JSON).

    python benchmarks/accuracy.py --mvtec-root ../shared/data/mvtec_ad \
        --config configs/spade_lite0_magnetic_tile.yaml --demo \
        --set image_k=5 gallery_k=5 \
        --variant "dn2 image_score=dn2" --variant "topq image_score=topq" \
        --json accuracy.json

Rows are data sets x variants:

* ``--mvtec-root DIR``: every category found in an MVTec AD layout root (a folder with
  ``train/good``), with the model and data settings of ``--mvtec-config``
  (default ``configs/spade_lite0_mvtec.yaml``), ``--categories`` to restrict them;
* ``--config FILE`` (repeatable): the model and ``data`` (``class_path`` and
  ``init_args``) sections of a LightningCLI config, e.g. a folder-layout data set;
* ``--demo``: the embedded demo (``configs/spade_lite0_demo.yaml``), generated under
  ``--demo-root``.

``--set KEY=VALUE ...`` changes a setting on every row, ``--variant "NAME KEY=VALUE ..."``
adds a configuration (rows for each data set; without ``--variant`` there is one,
``default``). A key is a model argument (``image_score``, ``image_k``, ``layers``,
``kappa``, ``sigma`` ...) or ``data.<name>`` (``data.image_size``, ``data.crop_size``);
values are YAML (``layers=[2,3]``). ``test.shift_px=N`` and ``test.rotate=DEG`` misalign the
test images against the training images with real pixels of the photo (see :class:`Misaligned`):
the crop window moves ``N`` pixels of the resized photo right and down (negative: left and up;
the object then sits ``N`` pixels up and left in the crop), and/or the resized photo turns ``DEG``
degrees counter-clockwise about its centre before the crop; masks move with their images. Settings
that would bring pixels from outside the photo into the crop (a shift beyond the margin the resize
leaves, 16 pixels for 256 -> 224; an angle whose filled corners would reach the crop, 8.91 degrees
for 256 -> 224) are refused before any row runs. They show where a position-aware search (``search_radius``) breaks:
``--variant "r8-shift8 search_radius=8 test.shift_px=8"``. Each row fits a fresh model (one pass over the
training images, then leave-one-out thresholds) and tests it, as ``lightning-ad fit``
with ``--test_after_fit true`` does; fit and test seconds are wall-clock times of
``trainer.fit`` and ``trainer.test``. Image F1 is at the learned (normal-only) threshold.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import numbers
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torchvision.transforms.v2.functional as TF  # noqa: E402
from torch import Tensor  # noqa: E402

from lightning_ad import Spade  # noqa: E402
from lightning_ad.data import AnomalyDataset, Preprocess  # noqa: E402
from lightning_ad.lightning.console import quiet_lightning  # noqa: E402

#: The ``test.`` settings (see :class:`Misaligned`).
TEST_SETTINGS = ("shift_px", "rotate")

#: Columns of the table: (key in a result, header, decimals).
COLUMNS = [
    ("image_auroc", "image AUROC", 4), ("pixel_auroc", "pixel AUROC", 4), ("pro", "PRO", 4),
    ("image_f1", "image F1", 4), ("pixel_f1", "pixel F1", 4), ("fit_seconds", "fit s", 1), ("test_seconds", "test s", 1),
]


@dataclass
class Row:
    """One fit and test: a data set (datamodule class and arguments) under one configuration of the model."""

    data: str
    variant: str
    model: Dict[str, Any]
    datamodule: str
    data_args: Dict[str, Any]
    seed: int = 0
    settings: Dict[str, Any] = field(default_factory=dict)
    test_settings: Dict[str, Any] = field(default_factory=dict)


def _load_yaml(path: Path) -> Dict[str, Any]:
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def parse_settings(items: Sequence[str]) -> Dict[str, Any]:
    """``["image_k=5", "layers=[2,3]"]`` -> ``{"image_k": 5, "layers": [2, 3]}`` (values read as YAML)."""
    settings = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"accuracy.py: setting {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def parse_variant(text: str) -> tuple:
    """``"NAME KEY=VALUE ..."`` -> ``(NAME, settings)``."""
    name, *items = text.split()
    return name, parse_settings(items)


def mvtec_categories(root: Path) -> List[str]:
    """Every folder of ``root`` that holds ``train/good``, sorted."""
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir()) if root.is_dir() else []


def config_row(config: Dict[str, Any], name: str, **data_args: Any) -> Row:
    """A row from a LightningCLI config's ``model`` and ``data`` sections (``data_args`` override ``init_args``)."""
    data = config["data"]
    args = {**(data.get("init_args") or {}), **data_args}
    return Row(name, "default", dict(config.get("model") or {}), data["class_path"], args, int(config.get("seed_everything") or 0))


def build_rows(args: argparse.Namespace) -> List[Row]:
    """The data sets of the command line, each under each variant, with ``--set`` applied."""
    bases: List[Row] = []
    if args.mvtec_root:
        root = Path(args.mvtec_root)
        categories = args.categories or mvtec_categories(root)
        if not categories:
            raise SystemExit(f"accuracy.py: no MVTec AD category (a folder with train/good) in {root}")
        config = _load_yaml(Path(args.mvtec_config))
        bases += [config_row(config, f"mvtec/{c}", root=str(root), category=c) for c in categories]
    for path in args.config or []:
        bases.append(config_row(_load_yaml(Path(path)), Path(path).stem))
    if args.demo:
        bases.append(config_row(_load_yaml(REPO / "configs" / "spade_lite0_demo.yaml"), "demo", root=args.demo_root))
    if not bases:
        raise SystemExit("accuracy.py: give at least one of --mvtec-root, --config, --demo")
    common = parse_settings(args.set or [])
    variants = [parse_variant(v) for v in args.variant] if args.variant else [("default", {})]
    rows = []
    for base in bases:
        for name, settings in variants:
            merged = {**common, **settings}
            model = {**base.model, **{k: v for k, v in merged.items() if not k.startswith(("data.", "test."))}}
            data_args = {**base.data_args, **{k[5:]: v for k, v in merged.items() if k.startswith("data.")}}
            test = {k[5:]: v for k, v in merged.items() if k.startswith("test.")}
            unknown = set(test) - set(TEST_SETTINGS)
            if unknown:
                raise SystemExit(f"accuracy.py: unknown test setting(s) {sorted('test.' + k for k in unknown)}; "
                                 f"known: {', '.join('test.' + k for k in TEST_SETTINGS)}")
            rows.append(Row(base.data, name, model, base.datamodule, data_args, base.seed, merged, test))
    return rows


class Misaligned(Preprocess):
    """The datamodule's preprocessing (resize to ``image_size``, crop ``crop_size``) with real misalignment.

    The resized photo (:class:`~lightning_ad.data.Preprocess` without a crop: the same resize, bit for
    bit) is turned ``rotate`` degrees counter-clockwise about its centre (bilinear; masks nearest), then
    cropped by the centre-crop window moved ``shift_px`` pixels right and down (negative: left and up).
    Masks take exactly the same geometry. Every pixel of the crop comes from the photo: a shift beyond the
    margin the resize leaves, or an angle that brings the rotation's empty corners into the crop, raises
    ``SystemExit`` naming the setting and its limit. ``shift_px=0, rotate=0`` gives what ``Preprocess``
    gives. Used as the ``preprocess`` of the test set's :class:`~lightning_ad.data.AnomalyDataset`.
    """

    def __init__(self, image_size, crop_size, shift_px: int = 0, rotate: float = 0.0) -> None:
        super().__init__(image_size, crop_size)
        self.resize = Preprocess(image_size, None)  # the same resize, no crop
        if isinstance(shift_px, bool) or not isinstance(shift_px, numbers.Integral):
            raise SystemExit(f"accuracy.py: test.shift_px={shift_px!r} must be a whole number of pixels")
        if isinstance(rotate, bool) or not isinstance(rotate, numbers.Real) or not math.isfinite(rotate):
            raise SystemExit(f"accuracy.py: test.rotate={rotate!r} must be a number of degrees")
        self.shift_px, self.rotate = int(shift_px), float(rotate)
        (height, width), (h, w) = self.image_size, self.crop_size
        # the centre crop's origin, as torchvision's center_crop takes it
        top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
        self.top, self.left = top + self.shift_px, left + self.shift_px
        if not (0 <= self.top <= height - h and 0 <= self.left <= width - w):
            ahead, behind = min(height - h - top, width - w - left), min(top, left)
            raise SystemExit(
                f"accuracy.py: test.shift_px={self.shift_px} moves the {h}x{w} crop window out of the {height}x{width} "
                f"resized photo (data.image_size {list(self.image_size)} -> data.crop_size {list(self.crop_size)} "
                f"leaves a margin of {ahead} px right/down and {behind} px left/up): use {-behind} <= test.shift_px "
                f"<= {ahead}, or a larger data.image_size")
        if not self.window_inside(self.rotate):
            limit = self.largest_angle(math.copysign(1.0, self.rotate))
            raise SystemExit(
                f"accuracy.py: test.rotate={self.rotate:g} brings the rotation's filled corners into the crop "
                f"(data.image_size {list(self.image_size)} -> data.crop_size {list(self.crop_size)}"
                + (f", test.shift_px={self.shift_px}" if self.shift_px else "")
                + f"): the largest angle allowed this way is {math.copysign(limit, self.rotate):+.2f} degrees")

    def window_inside(self, degrees: float) -> bool:
        """Whether the crop window, on the photo turned ``degrees`` counter-clockwise, lies inside the photo:
        its corners (pixel edges) taken back to the photo before the rotation land within its edges
        (for a centred square crop ``c`` of a square ``W``: ``c/2 (|cos t| + |sin t|) <= W/2``)."""
        (height, width), (h, w) = self.image_size, self.crop_size
        cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        for y in (self.top, self.top + h):
            for x in (self.left, self.left + w):
                dx, dy = x - width / 2, y - height / 2  # offsets from the centre, y down
                # the rotation takes (u, v) to (u cos + v sin, -u sin + v cos); back: (dx cos - dy sin, dx sin + dy cos)
                u, v = dx * cos - dy * sin, dx * sin + dy * cos
                if abs(u) > width / 2 + 1e-9 or abs(v) > height / 2 + 1e-9:
                    return False
        return True

    def largest_angle(self, sign: float = 1.0) -> float:
        """The largest angle (degrees, to 0.01, in the direction of ``sign``) up to which the window stays inside."""
        steps = 0
        while steps < 9000 and self.window_inside(sign * (steps + 1) / 100):
            steps += 1
        return steps / 100

    def _window(self, tensor: Tensor) -> Tensor:
        h, w = self.crop_size
        return tensor[..., self.top:self.top + h, self.left:self.left + w].contiguous()

    def image(self, array: np.ndarray) -> Tensor:
        photo = self.resize.image(array)  # [3, H, W] float32 in [0, 1]
        if self.rotate:
            photo = TF.rotate(photo, self.rotate, interpolation=TF.InterpolationMode.BILINEAR)
        return self._window(photo)

    def mask(self, mask: np.ndarray) -> Tensor:
        photo = self.resize.mask(mask)  # [H, W] uint8
        if self.rotate:
            photo = TF.rotate(photo[None], self.rotate, interpolation=TF.InterpolationMode.NEAREST)[0]
        return self._window(photo)

    def __repr__(self) -> str:
        return (f"Misaligned(image_size={list(self.image_size)}, crop_size={list(self.crop_size)}, "
                f"shift_px={self.shift_px}, rotate={self.rotate:g})")


def make_datamodule(row: Row) -> pl.LightningDataModule:
    """The row's datamodule; with ``test.shift_px`` or ``test.rotate``, its test set served through
    :class:`Misaligned` (the same samples; training, validation and the model's input contract unchanged)."""
    module, _, name = row.datamodule.rpartition(".")
    data = getattr(importlib.import_module(module), name)(**row.data_args)
    shift_px, rotate = row.test_settings.get("shift_px", 0), row.test_settings.get("rotate", 0.0)
    if not (shift_px or rotate):
        return data
    preprocess = getattr(data, "preprocess", None)
    if not isinstance(preprocess, Preprocess):
        raise SystemExit(f"accuracy.py: test.shift_px / test.rotate need a datamodule with a Preprocess; "
                         f"{row.datamodule} has none")
    misaligned = Misaligned(preprocess.image_size, preprocess.crop_size, shift_px, rotate)

    class MisalignedTest(type(data)):  # the same datamodule, its test images misaligned
        def setup(self, stage: Optional[str] = None) -> None:
            super().setup(stage)
            if self.test_dataset is not None and self.test_dataset.preprocess is not misaligned:
                self.test_dataset = AnomalyDataset(self.test_dataset.samples, misaligned)

    data.__class__ = MisalignedTest
    return data


def run_row(row: Row, workdir: Path, accelerator: str = "cpu") -> Dict[str, Any]:
    """Fit and test one row; its metrics (as :func:`lightning_ad.evaluate` defines them) and times."""
    pl.seed_everything(row.seed, verbose=False)
    model = Spade(**row.model)
    data = make_datamodule(row)
    trainer = pl.Trainer(default_root_dir=str(workdir), max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         accelerator=accelerator, devices=1)
    started = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    trainer.test(model, datamodule=data, verbose=False)
    test_seconds = time.perf_counter() - started
    metrics = dict(model.test_evaluation.metrics) if model.test_evaluation is not None else {}
    return {"data": row.data, "variant": row.variant, "settings": row.settings, **metrics,
            "fit_seconds": fit_seconds, "test_seconds": test_seconds, "train_images": model.model.bank_size,
            "test_images": len(model.test_results) if model.test_results is not None else 0}


def markdown(results: Sequence[Dict[str, Any]]) -> str:
    """The results as one Markdown table (``-`` where a metric is not defined)."""
    lines = ["| data | variant | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for r in results:
        cells = [f"{r[k]:.{d}f}" if isinstance(r.get(k), float) else "-" for k, _, d in COLUMNS]
        lines.append(f"| {r['data']} | {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mvtec-root", help="an MVTec AD layout root: every category found in it is a row")
    p.add_argument("--categories", nargs="+", help="only these categories of --mvtec-root")
    p.add_argument("--mvtec-config", default=str(REPO / "configs" / "spade_lite0_mvtec.yaml"),
                   help="model and data settings of the MVTec rows")
    p.add_argument("--config", action="append", help="a LightningCLI config (model and data sections): a row")
    p.add_argument("--demo", action="store_true", help="the embedded demo data set: a row")
    p.add_argument("--demo-root", default="datasets/demo", help="where the demo is generated (or found)")
    p.add_argument("--set", nargs="+", help="KEY=VALUE settings for every row (model arguments or data.<name>)")
    p.add_argument("--variant", action="append", help='"NAME KEY=VALUE ...": a configuration (repeatable)')
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = parser().parse_args(argv)
    quiet_lightning()
    rows = build_rows(args)
    for row in rows:  # refuse an impossible setting before any row runs
        make_datamodule(row)
    results = []
    with tempfile.TemporaryDirectory(prefix="accuracy-") as workdir:
        for i, row in enumerate(rows):
            print(f"[{i + 1}/{len(rows)}] {row.data} / {row.variant} {row.settings}", file=sys.stderr, flush=True)
            results.append(run_row(row, Path(workdir) / str(i), args.accelerator))
            print(markdown(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(markdown(results))
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
