"""How good are thresholds learned from normal images alone? F1 at quantile thresholds vs F1-optimal.

    python benchmarks/thresholds.py --data mvtec --root ../shared/data/mvtec_ad --category bottle --k 5
    python benchmarks/thresholds.py --data magnetic_tile --root ../shared/data/magnetic_tile --k 5

Fits the bank once, scores the training images leave-one-out (every image at image level,
``--samples`` of them at pixel level, as ``Spade`` does), scores the test set, and prints
image F1 / precision / recall and pixel F1 when the thresholds are set at several quantiles
of the normal scores, next to the F1-optimal thresholds chosen on the test set itself (an
upper bound no real deployment has).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_ad.core.metrics import f1_optimal_threshold, precision_recall_f1  # noqa: E402
from lightning_ad.core.spade import SpadeModel  # noqa: E402
from lightning_ad.core.spread import spread_indices  # noqa: E402
from lightning_ad.core.thresholds import quantile_threshold  # noqa: E402
from lightning_ad.data import FolderDataModule, MVTecDataModule  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["mvtec", "magnetic_tile"], default="mvtec")
    p.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"))
    p.add_argument("--category", default="bottle")
    p.add_argument("--k", type=int, default=5, help="image_k and gallery_k")
    p.add_argument("--samples", type=int, default=32, help="training images scored leave-one-out at pixel level")
    p.add_argument("--image-quantiles", type=float, nargs="+", default=[0.9, 0.95, 0.98, 0.99, 1.0])
    p.add_argument("--pixel-quantiles", type=float, nargs="+", default=[0.99, 0.995, 0.999, 0.9995, 0.9999])
    args = p.parse_args()

    if args.data == "mvtec":
        dm = MVTecDataModule(args.root, args.category, batch_size=16)
    else:
        dm = FolderDataModule(
            root=args.root, normal_dir="MT_Free/Imgs",
            abnormal_dirs=[f"MT_{c}/Imgs" for c in ("Blowhole", "Break", "Crack", "Fray", "Uneven")],
            mask_pattern="{stem}.png", image_size=[256, 256], batch_size=16,
        )
    dm.setup("fit")
    dm.setup("test")
    model = SpadeModel(backbone="efficientnet_lite0", image_k=args.k, gallery_k=args.k)
    model.fit_bank(batch["image"] for batch in dm.train_dataloader())
    n = model.bank_size
    with torch.inference_mode():
        rows = torch.arange(n)
        loo_image, _ = model.nearest_images(model.bank.pooled.float(), exclude=rows)
        loo_maps = model.score_bank(rows[spread_indices(n, min(args.samples, n))]).anomaly_maps
        scores, labels, maps, masks = [], [], [], []
        for batch in dm.test_dataloader():
            out = model(batch["image"])
            scores.append(out.image_scores)
            maps.append(out.anomaly_maps)
            labels.append(batch["label"])
            masks.append(batch["mask"])
    scores, labels, maps, masks = torch.cat(scores), torch.cat(labels), torch.cat(maps), torch.cat(masks)

    name = args.category if args.data == "mvtec" else "magnetic_tile"
    print(f"\n{name}: {n} training images, {len(labels)} test images, K = {args.k}, "
          f"pixel threshold from {min(args.samples, n)} leave-one-out maps")
    report("image level", loo_image, scores, labels, args.image_quantiles)
    report("pixel level", loo_maps, maps, masks, args.pixel_quantiles)


def report(title: str, normal: torch.Tensor, scores: torch.Tensor, target: torch.Tensor, quantiles) -> None:
    """F1 / precision / recall at quantile thresholds of ``normal`` scores, and at the F1-optimal one."""
    print(f"{title} | threshold | precision | recall | F1")
    rows = []
    for q in quantiles:
        threshold = quantile_threshold(normal, q)
        rows.append((f"quantile {q:<6}", threshold, *precision_recall_f1(scores, target, threshold)))
    threshold, f1, precision, recall = f1_optimal_threshold(scores, target)
    rows.append(("F1-optimal (test)", float(threshold), precision, recall, f1))
    for name, threshold, precision, recall, f1 in rows:
        print(f"{name} | {threshold:9.3f} | {float(precision):9.3f} | {float(recall):6.3f} | {float(f1):.3f}")


if __name__ == "__main__":
    main()
