"""Banks of 1,000 to 100,000 images: bytes, write time, peak RSS of fit and test, kNN and test speed.

Extracting 100,000 images on 2 cores is not practical, so the banks are built from the real
bottle training features (Lite0, resize 256, crop 224), replicated with small perturbations
(x (1 + 0.01 noise), a fixed seed), and written batch by batch as fit writes them. Test scores
real bottle test images against them. Each (size, storage, phase) runs in its own process, so
that peak RSS (``ru_maxrss``) is that phase's.

    python benchmarks/scale.py --data-root ../shared/data/mvtec_ad --sizes 1000 10000 100000 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_features(args):
    from lightning_ad import MVTecDataModule
    from lightning_ad.spade import SpadeModel

    cache = Path(args.out) / "real.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    model = SpadeModel(image_k=args.image_k, gallery_k=args.gallery_k, bank_dtype="float16").eval()
    data = MVTecDataModule(args.data_root, category="bottle", batch_size=16, num_workers=0)
    data.setup("fit")
    data.setup("test")
    started, train = time.perf_counter(), []
    for batch in data.train_dataloader():
        train.append(model.extract(batch["image"]))
    rate = sum(f.pooled.shape[0] for f in train) / (time.perf_counter() - started)
    test_images = torch.stack([data.test_dataset[i]["image"] for i in range(0, len(data.test_dataset), 5)][: args.test_images])
    test = model.extract(test_images)
    out = {"pooled": torch.cat([f.pooled for f in train]), "rate": rate, "size": list(test_images.shape[-2:]),
           "pyramid": [torch.cat([f.pyramid[i] for f in train]) for i in range(3)],
           "test_pooled": test.pooled, "test_pyramid": test.pyramid}
    torch.save(out, cache)
    return out


def model_for(args, storage, folder):
    from lightning_ad.spade import SpadeModel

    return SpadeModel(image_k=args.image_k, gallery_k=args.gallery_k, bank_dtype="float16", bank_storage=storage,
                      bank_dir=str(folder)).eval()


def phase_fit(args, size, storage):
    """Write a bank of ``size`` images as fit does (batches of 32); save its state dict."""
    from lightning_ad.distributed import BankCollector
    from lightning_ad.spade import Features

    real = real_features(args)
    folder = Path(args.out) / f"{storage}{size}"
    model = model_for(args, storage, folder)
    collector = BankCollector(model, str(folder))
    gen = torch.Generator().manual_seed(0)
    count, started = real["pooled"].shape[0], time.perf_counter()
    for first in range(0, size, 32):
        ids = torch.arange(first, min(size, first + 32))
        src = ids % count
        noise = lambda t: t[src] * (1 + 0.01 * torch.randn(t[src].shape, generator=gen))  # noqa: E731
        collector.append(ids, Features([noise(level) for level in real["pyramid"]], noise(real["pooled"])),
                         tuple(real["size"]))
    collector.finish()
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "state.pt")
    return {"bank_mb": model.bank.nbytes() / 2**20, "write_s": seconds, "fit_rss_mb": peak_rss_mb()}


def phase_test(args, size, storage):
    from lightning_ad.spade import Features

    real = real_features(args)
    folder = Path(args.out) / f"{storage}{size}"
    model = model_for(args, storage, folder)
    model.load_state_dict(torch.load(folder / "state.pt", weights_only=True, mmap=True))
    pooled, pyramid = real["test_pooled"], real["test_pyramid"]
    n, t_img, t_pix, started = pooled.shape[0], 0.0, 0.0, time.perf_counter()
    for first in range(0, n, args.batch):
        part = slice(first, first + args.batch)
        t0 = time.perf_counter()
        scores, neighbours = model.nearest_images(pooled[part].float())
        t1 = time.perf_counter()
        maps = model.level_maps([p[part] for p in pyramid], neighbours)
        t2 = time.perf_counter()
        model.combine(maps, tuple(real["size"]))
        t_img, t_pix = t_img + t1 - t0, t_pix + t2 - t1
    total = time.perf_counter() - started
    Features  # noqa: B018 - imported for symmetry with phase_fit
    return {"image_knn_ms": 1000 * t_img / n, "pixel_knn_ms": 1000 * t_pix / n, "test_img_s": n / total,
            "test_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data/mvtec_ad")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--storages", nargs="+", default=["memory", "disk"])
    parser.add_argument("--image-k", type=int, default=50)
    parser.add_argument("--gallery-k", type=int, default=50)
    parser.add_argument("--test-images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="/tmp/lightning_ad_scale")
    parser.add_argument("--phase", nargs=3, metavar=("PHASE", "SIZE", "STORAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.phase:
        phase, size, storage = args.phase
        result = (phase_fit if phase == "fit" else phase_test)(args, int(size), storage)
        print("RESULT " + json.dumps(result))
        return
    rate = real_features(args)["rate"]
    print(f"real extraction (bottle, Lite0, 224 x 224, 2 threads): {rate:.1f} images/s\n")
    print("| images | storage | bank MB | write s | fit peak RSS MB | test peak RSS MB | image kNN ms/img | "
          "pixel kNN ms/img (K 50) | test img/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for storage in args.storages:
            row = {}
            for phase in ("fit", "test"):
                cmd = [sys.executable, __file__, "--phase", phase, str(size), storage, "--out", args.out,
                       "--data-root", args.data_root, "--image-k", str(args.image_k), "--gallery-k", str(args.gallery_k),
                       "--test-images", str(args.test_images), "--batch", str(args.batch)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if not line:
                    print(done.stderr[-2000:], file=sys.stderr)
                    break
                row.update(json.loads(line[0][7:]))
            if "test_img_s" in row:
                print(f"| {size:,} | {storage} | {row['bank_mb']:.0f} | {row['write_s']:.1f} | {row['fit_rss_mb']:.0f} | "
                      f"{row['test_rss_mb']:.0f} | {row['image_knn_ms']:.2f} | {row['pixel_knn_ms']:.0f} | "
                      f"{row['test_img_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
