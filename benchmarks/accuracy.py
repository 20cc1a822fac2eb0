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
values are YAML (``layers=[2,3]``). ``test.shift=F`` and ``test.rotate=DEG`` misalign the test
images against the training images (see :class:`Misaligned`: both axes shifted by ``F`` of the
side, or rotated about the centre), to see where a position-aware search (``search_radius``)
breaks: ``--variant "r8-shift10 search_radius=8 test.shift=0.1"``. Each row fits a fresh model (one pass over the
training images, then leave-one-out thresholds) and tests it, as ``lightning-ad fit``
with ``--test_after_fit true`` does; fit and test seconds are wall-clock times of
``trainer.fit`` and ``trainer.test``. Image F1 is at the learned (normal-only) threshold.
"""

from __future__ import annotations

import argparse
import importlib
import json
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

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lightning_ad import Spade  # noqa: E402
from lightning_ad.lightning.console import quiet_lightning  # noqa: E402

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
            unknown = set(test) - {"shift", "rotate"}
            if unknown:
                raise SystemExit(f"accuracy.py: unknown test setting(s) {sorted(unknown)}: test.shift, test.rotate")
            rows.append(Row(base.data, name, model, base.datamodule, data_args, base.seed, merged, test))
    return rows


class Misaligned(torch.utils.data.Dataset):
    """A test set whose served images (and masks) are shifted by ``shift`` of the side in both axes (the
    image's edge repeated into the gap, the mask's gap empty) and rotated by ``rotate`` degrees about
    the centre (bilinear; masks nearest; the corners filled with the image's mean colour)."""

    def __init__(self, dataset: torch.utils.data.Dataset, shift: float = 0.0, rotate: float = 0.0) -> None:
        self.dataset, self.shift, self.rotate = dataset, float(shift), float(rotate)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        import torchvision.transforms.functional as TF

        item = dict(self.dataset[index])
        image, mask = item["image"], item["mask"]
        if self.rotate:
            fill = [float(v) for v in image.mean(dim=(1, 2))]
            image = TF.rotate(image, self.rotate, interpolation=TF.InterpolationMode.BILINEAR, fill=fill)
            mask = TF.rotate(mask[None], self.rotate, interpolation=TF.InterpolationMode.NEAREST, fill=0)[0]
        if self.shift:
            height, width = image.shape[-2:]
            dy, dx = round(self.shift * height), round(self.shift * width)
            image = F.pad(image[None], (dx, 0, dy, 0), mode="replicate")[0, :, :height, :width]
            mask = F.pad(mask, (dx, 0, dy, 0))[:height, :width]
        item["image"], item["mask"] = image.contiguous(), mask.contiguous()
        return item


def make_datamodule(row: Row) -> pl.LightningDataModule:
    module, _, name = row.datamodule.rpartition(".")
    data = getattr(importlib.import_module(module), name)(**row.data_args)
    shift, rotate = row.test_settings.get("shift", 0.0), row.test_settings.get("rotate", 0.0)
    if not (shift or rotate):
        return data

    class MisalignedTest(type(data)):  # the same datamodule, its test images misaligned
        def test_dataloader(self):
            loader = super().test_dataloader()
            return torch.utils.data.DataLoader(Misaligned(loader.dataset, shift, rotate), batch_size=loader.batch_size,
                                               num_workers=loader.num_workers, collate_fn=loader.collate_fn)

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
