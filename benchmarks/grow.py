"""A bank that grows equals a fresh fit: fit on part of an MVTec category's good images, grow the checkpoint with
the rest (``lightning-ad fit --ckpt_path OLD``), fit afresh on all of them, and compare.

    python benchmarks/grow.py --data-root ../shared/data --category bottle --first 100 --storage memory disk

The first ``--first`` training images are a seeded random draw (``numpy.random.default_rng(seed)``), so the
grown bank receives its images in another order than the fresh fit. Each fit is the command line's
(``python -m lightning_ad fit`` on a temporary MVTec layout of symbolic links, no image copied); each
checkpoint is then scored on the category's whole test set by :class:`lightning_ad.Detector`. The table gives,
per bank storage, the bank sizes, the largest relative differences of the thresholds and of the image scores
between grown and fresh, whether every test decision agrees, and each run's image AUROC and pixel AUROC
(exact), with the seconds of each fit. The given checkpoint's SHA-256 is checked before and after growing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from lightning_ad import Detector
from lightning_ad.core.metrics import binary_auroc


def _layout(root: Path, category: Path, train: List[Path]) -> Path:
    """An MVTec layout below ``root``: ``train/good`` holds links to ``train``, ``test`` and ``ground_truth`` link
    to the category's."""
    good = root / category.name / "train" / "good"
    good.mkdir(parents=True)
    for path in train:
        (good / path.name).symlink_to(path.resolve())
    for part in ("test", "ground_truth"):
        (root / category.name / part).symlink_to((category / part).resolve())
    return root


def _fit(layout: Path, category: str, out: Path, storage: str, ckpt: Path | None = None) -> tuple[Path, float]:
    args = [sys.executable, "-m", "lightning_ad", "fit", "--config", "configs/spade_lite0_mvtec.yaml",
            "--data.root", str(layout), "--data.category", category, "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--model.bank_storage", storage,
            "--model.bank_dir", str(out / "bank")]
    if ckpt is not None:
        args += ["--ckpt_path", str(ckpt)]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise SystemExit(f"fit failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return next(out.rglob("*.ckpt")), time.perf_counter() - started


def _score(ckpt: Path, files: List[str]) -> Dict[str, object]:
    detector = Detector.from_checkpoint(ckpt, batch_size=16)
    found = detector(files)
    return {"scores": torch.tensor([d.score for d in found], dtype=torch.float64), "maps": [d.anomaly_map for d in found],
            "decisions": [d.decision for d in found], "thresholds": (detector.image_threshold, detector.pixel_threshold),
            "bank": detector.model.bank_size}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def main(argv: List[str] | None = None) -> None:
    default_root = os.environ.get("LIGHTNING_AD_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=default_root)
    p.add_argument("--category", default="bottle")
    p.add_argument("--first", type=int, default=100, help="good images of the first fit; the rest grow it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", nargs="+", choices=["memory", "disk"], default=["memory", "disk"])
    args = p.parse_args(argv)
    category = Path(args.data_root) / "mvtec_ad" / args.category
    train = sorted((category / "train" / "good").glob("*.png"))
    pick = set(np.random.default_rng(args.seed).choice(len(train), args.first, replace=False).tolist())
    first, rest = [t for i, t in enumerate(train) if i in pick], [t for i, t in enumerate(train) if i not in pick]
    tests = sorted((category / "test").rglob("*.png"))
    labels = torch.tensor([0 if t.parent.name == "good" else 1 for t in tests])
    masks = []
    from PIL import Image
    for t in tests:
        gt = category / "ground_truth" / t.parent.name / f"{t.stem}_mask.png"
        masks.append(np.asarray(Image.open(gt)) > 0 if gt.is_file() else None)
    print(f"{args.category}: {len(first)} good images, grown by {len(rest)}, against a fresh fit on {len(train)}; "
          f"{len(tests)} test images\n")
    print("| storage | banks (first, grown, fresh) | thresholds: largest relative difference | image scores: largest "
          "relative difference | decisions agree | image AUROC grown / fresh | pixel AUROC grown / fresh | fit s "
          "(first, grow, fresh) |")
    print("|---|---|---|---|---|---|---|---|")
    for storage in args.storage:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            old_layout = _layout(base / "first-data", category, first)
            new_layout = _layout(base / "rest-data", category, rest)
            all_layout = _layout(base / "all-data", category, train)
            old, s1 = _fit(old_layout, args.category, base / "first", storage)
            digest = hashlib.sha256(old.read_bytes()).hexdigest()
            grown, s2 = _fit(new_layout, args.category, base / "grown", storage, ckpt=old)
            if hashlib.sha256(old.read_bytes()).hexdigest() != digest:
                raise SystemExit("the first checkpoint changed while growing")
            fresh, s3 = _fit(all_layout, args.category, base / "fresh", storage)
            files = [str(t) for t in tests]
            a, b, o = _score(grown, files), _score(fresh, files), _score(old, files)
            thr = max(_rel(x, y) for x, y in zip(a["thresholds"], b["thresholds"]))
            sc = float(((a["scores"] - b["scores"]).abs() / b["scores"].abs().clamp_min(1e-12)).max())
            agree = a["decisions"] == b["decisions"]
            aurocs = []
            for run in (a, b):
                image = float(binary_auroc(run["scores"], labels))
                keep = [i for i, m in enumerate(masks) if m is not None or labels[i] == 0]
                values = np.concatenate([run["maps"][i][~np.isnan(run["maps"][i])].ravel() for i in keep])
                truth = np.concatenate([(masks[i] if masks[i] is not None else np.zeros_like(run["maps"][i], bool))
                                        [~np.isnan(run["maps"][i])].ravel() for i in keep])
                pixel = float(binary_auroc(torch.from_numpy(values), torch.from_numpy(truth.astype(np.int64))))
                aurocs.append((image, pixel))
            print(f"| {storage} | {o['bank']}, {a['bank']}, {b['bank']} | {thr:.2e} | {sc:.2e} | {agree} | "
                  f"{aurocs[0][0]:.4f} / {aurocs[1][0]:.4f} | {aurocs[0][1]:.4f} / {aurocs[1][1]:.4f} | "
                  f"{s1:.0f}, {s2:.0f}, {s3:.0f} |")


if __name__ == "__main__":
    main()
