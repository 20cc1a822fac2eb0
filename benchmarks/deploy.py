"""Deployed detectors on the CPU: eager PyTorch (``Detector``) against the exported ONNX file in
onnxruntime and the TorchScript file, at the same K, on the same decoded images, in one run.

    python benchmarks/deploy.py --data-root ../shared/data/mvtec_ad --category bottle --k 5 --images 16 \
        --search-radius 8 none

Fits a bank on the category's training images for each pixel search (``--search-radius``: input
pixels, or ``none`` for every position; or takes ``--ckpt``), exports it as the deployed files are
(photos of any size), and prints a Markdown table: images/s of each runtime (decoding excluded:
every runtime gets the same uint8 photos), the speed relative to eager at the same search, and
the largest relative difference of its image scores and maps from eager's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402

from lightning_ad import Detector, MVTecDataModule, Spade  # noqa: E402
from lightning_ad.data.folders import list_images  # noqa: E402
from lightning_ad.data.images import load_image  # noqa: E402
from lightning_ad.inference.export import export_detector  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"))
    p.add_argument("--category", default="bottle")
    p.add_argument("--ckpt", default=None, help="a fitted checkpoint (default: fit one here)")
    p.add_argument("--k", type=int, default=5, help="image_k and gallery_k of the fit")
    p.add_argument("--images", type=int, default=16, help="test images timed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="timed passes (the best is kept)")
    p.add_argument("--search-radius", nargs="+", default=["8", "none"],
                   help="pixel search radius in input pixels, or none (every position): rows for each")
    return p.parse_args(argv)


def fit_checkpoint(args: argparse.Namespace, folder: Path, radius) -> Path:
    model = Spade(image_k=args.k, gallery_k=args.k, search_radius=radius)
    data = MVTecDataModule(root=args.data_root, category=args.category, batch_size=16)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(folder), accelerator="cpu", devices=1, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    path = folder / f"bench-{radius}.ckpt"
    trainer.save_checkpoint(str(path))
    return path


def best_rate(run, count: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return count / best


def relative(a: np.ndarray, b: np.ndarray) -> float:
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("inf")
    scale = max(float(np.abs(a[finite]).max()), 1e-12) if finite.any() else 1.0
    return float(np.abs(a[finite] - b[finite]).max() / scale) if finite.any() else 0.0


def time_runtimes(args: argparse.Namespace, ckpt: Path, folder: Path, arrays: List[np.ndarray]) -> List[Dict[str, object]]:
    """Rows of one checkpoint: eager (``Detector``), TorchScript and ONNX Runtime on the same photos."""
    batch = np.stack(arrays)
    detector = Detector.from_checkpoint(ckpt, batch_size=args.batch_size)
    eager: List = []

    def run_eager() -> None:
        eager[:] = detector(list(arrays))

    rows: List[Dict[str, object]] = [{"runtime": "eager PyTorch (Detector)", "rate": best_rate(run_eager, len(arrays), args.repeats),
                                      "score": 0.0, "map": 0.0}]
    scores = np.array([d.score for d in eager])
    maps = np.stack([d.anomaly_map for d in eager])
    out: Dict[str, object] = {}
    ts_path = folder / f"{ckpt.stem}.pt"
    export_detector(ckpt, "torchscript", ts_path)
    scripted = torch.jit.load(str(ts_path))

    def run_ts() -> None:
        parts = [scripted(torch.from_numpy(batch[i : i + args.batch_size])) for i in range(0, len(batch), args.batch_size)]
        out["ts"] = (np.concatenate([p[0].numpy() for p in parts]), np.concatenate([p[3].numpy() for p in parts]))

    rate = best_rate(run_ts, len(arrays), args.repeats)
    rows.append({"runtime": "TorchScript", "rate": rate, "score": relative(out["ts"][0], scores), "map": relative(out["ts"][1], maps)})
    try:
        import onnxruntime as ort
    except ImportError:
        return rows
    onnx_path = folder / f"{ckpt.stem}.onnx"
    export_detector(ckpt, "onnx", onnx_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run_onnx() -> None:
        parts = [session.run(None, {name: batch[i : i + args.batch_size]}) for i in range(0, len(batch), args.batch_size)]
        out["onnx"] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[3] for p in parts]))

    rate = best_rate(run_onnx, len(arrays), args.repeats)
    rows.append({"runtime": "ONNX (onnxruntime)", "rate": rate, "score": relative(out["onnx"][0], scores),
                 "map": relative(out["onnx"][1], maps)})
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    radii = [None if r.lower() in ("none", "null") else float(r) for r in args.search_radius]
    test_dir = Path(args.data_root) / args.category / "test"
    files = sorted(p for group in sorted(test_dir.iterdir()) for p in list_images(group))[: args.images]
    arrays = [load_image(p) for p in files]
    size = arrays[0].shape[:2]
    arrays = [a for a in arrays if a.shape[:2] == size]
    table: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.ckpt:
            table += [{**row, "search": "checkpoint's"} for row in time_runtimes(args, Path(args.ckpt), folder, arrays)]
        else:
            for radius in radii:
                rows = time_runtimes(args, fit_checkpoint(args, folder, radius), folder, arrays)
                table += [{**row, "search": "every position" if radius is None else f"{radius:g} px"} for row in rows]
    print(f"\n{args.category}, K={args.k}, {len(arrays)} test photos of {size[0]}x{size[1]} (exported for any size), "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads\n")
    print("| search | runtime | images/s | vs eager | max rel. diff score | max rel. diff map |")
    print("|---|---|---|---|---|---|")
    base = {}
    for row in table:
        base.setdefault(row["search"], row["rate"])
        print(f"| {row['search']} | {row['runtime']} | {row['rate']:.2f} | {row['rate'] / base[row['search']]:.2f}x | "
              f"{row['score']:.1e} | {row['map']:.1e} |")


if __name__ == "__main__":
    main()
