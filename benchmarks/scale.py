"""Banks of 1,000 to 100,000 images: bytes, write time, peak RSS of fit and test, kNN and test speed.

Extracting 100,000 images on 2 cores is not practical, so the banks are built from the real
bottle training features (Lite0, resize 256, crop 224), replicated with small perturbations
(x (1 + 0.01 noise), seeded per batch of 32), and written batch by batch as fit writes them.
Test scores real bottle test images against them. Each (size, storage, phase) runs in its own
process, so that peak RSS (``ru_maxrss``) is that phase's.

Rows per size:

* ``memory``: the in-memory replicated bank (skipped, with the reason, when its fit would not
  fit in the available memory);
* ``disk``: ``bank_storage: disk``, memory-mapped at test;
* ``sharded x2``: ``bank_storage: disk, bank_sharding: sharded`` on 2 processes (torch.distributed,
  gloo, 1 thread each): each process writes only its share of the batches and, at test, searches
  only its rows for the queries of both (:func:`~lightning_ad.core.sharded.sharded_grouped_knn`);
  bank MB and RSS are per process (the largest). Its scores are compared with the disk bank's.

Each bank's files are deleted after its test unless ``--keep-banks`` (a 100,000-image bank is
about 25 GB); scores are kept in ``OUT/scores-<storage><size>.pt``.

    python benchmarks/scale.py --data-root ../shared/data/mvtec_ad --sizes 1000 10000 100000 --out /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

#: Batch of the synthetic fit (rows written per call), as a Lightning fit with batch_size 32.
BATCH = 32
#: Peak RSS of an in-memory fit over the bank's bytes: measured 5.2 (1,000 images) and 6.7 (10,000) above the disk fit
#: (the batches, their concatenation in float32, the sorted copy), rounded up.
MEMORY_FIT_FACTOR = 7
SHARDED = "sharded x2"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def available_mb() -> float:
    """``MemAvailable`` of /proc/meminfo, MB (inf where it cannot be read)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def real_features(args):
    from lightning_ad import MVTecDataModule
    from lightning_ad.core.spade import SpadeModel

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


def image_bytes(real) -> int:
    """Bytes of one image's row in a float16 bank (pyramid and pooled vector)."""
    return 2 * (sum(level[0].numel() for level in real["pyramid"]) + real["pooled"].shape[1])


def synthetic_batch(real, first: int, size: int):
    """Ids ``[B]`` and Features of bank rows ``first .. first + 31`` (below ``size``): real rows times
    ``1 + 0.01 noise``, the noise seeded by ``first`` (the same rows whichever process writes them)."""
    from lightning_ad.core.spade import Features

    ids = torch.arange(first, min(size, first + BATCH))
    src = ids % real["pooled"].shape[0]
    gen = torch.Generator().manual_seed(first)

    def noise(t):
        return t[src] * (1 + 0.01 * torch.randn(t[src].shape, generator=gen))

    return ids, Features([noise(level) for level in real["pyramid"]], noise(real["pooled"]))


def model_for(args, storage, folder, sharding="replicated"):
    from lightning_ad.core.spade import SpadeModel

    return SpadeModel(image_k=args.image_k, gallery_k=args.gallery_k, bank_dtype="float16", bank_storage=storage,
                      bank_sharding=sharding, bank_dir=str(folder)).eval()


def folder_of(args, size, storage) -> Path:
    return Path(args.out) / f"{storage.replace(' ', '')}{size}"


def phase_fit(args, size, storage):
    """Write a bank of ``size`` images as fit does (batches of 32); save its state dict."""
    from lightning_ad.lightning.collect import BankCollector

    real = real_features(args)
    folder = folder_of(args, size, storage)
    model = model_for(args, storage, folder)
    collector = BankCollector(model, str(folder))
    started = time.perf_counter()
    for first in range(0, size, BATCH):
        ids, features = synthetic_batch(real, first, size)
        collector.append(ids, features, tuple(real["size"]))
    collector.finish()
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "state.pt")
    return {"bank_mb": model.bank.nbytes() / 2**20, "write_s": seconds, "fit_rss_mb": peak_rss_mb()}


def score(model, real, rows, batch):
    """Score test images ``rows`` in batches: scores ``[n]``, maps ``[n, H, W]``, image and pixel kNN seconds."""
    pooled, pyramid = real["test_pooled"], real["test_pyramid"]
    scores, maps, t_img, t_pix = [], [], 0.0, 0.0
    for part in rows.split(batch):
        t0 = time.perf_counter()
        found, neighbours = model.nearest_images(pooled[part].float())
        t1 = time.perf_counter()
        levels = model.level_maps([p[part] for p in pyramid], neighbours)
        t2 = time.perf_counter()
        maps.append(model.combine(levels, tuple(real["size"])))
        scores.append(found)
        t_img, t_pix = t_img + t1 - t0, t_pix + t2 - t1
    model.end_scoring()  # a sharded bank: serve the other process's searches until both are done
    empty = torch.zeros(0, *real["size"])
    return (torch.cat(scores) if scores else torch.zeros(0), torch.cat(maps) if maps else empty), t_img, t_pix


def phase_test(args, size, storage):
    real = real_features(args)
    folder = folder_of(args, size, storage)
    model = model_for(args, storage, folder)
    t0 = time.perf_counter()
    model.load_state_dict(torch.load(folder / "state.pt", weights_only=True, mmap=True))  # disk: checks SHA-256
    load_s = time.perf_counter() - t0
    n = real["test_pooled"].shape[0]
    started = time.perf_counter()
    (scores, maps), t_img, t_pix = score(model, real, torch.arange(n), args.batch)
    total = time.perf_counter() - started
    torch.save({"scores": scores, "maps": maps}, Path(args.out) / f"scores-{storage}{size}.pt")
    return {"image_knn_ms": 1000 * t_img / n, "pixel_knn_ms": 1000 * t_pix / n, "test_img_s": n / total,
            "test_rss_mb": peak_rss_mb(), "load_s": load_s}


# ---------------------------------------------------------------------- sharded, 2 processes


def _shard_worker(rank: int, args, size: int, phase: str, store: str) -> None:
    """One of 2 processes: ``fit`` writes batches ``rank, rank + 2, ...``; ``test`` loads the saved
    state (each process keeps its own shard) and scores test images ``rank::2``. Writes its result JSON."""
    import torch.distributed as dist

    from lightning_ad.bank import finish_stream
    from lightning_ad.distributed import gather_objects

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)  # no server: any exit order
    real = real_features(args)
    folder = folder_of(args, size, SHARDED)
    model = model_for(args, "disk", folder, "sharded")
    result = {}
    if phase == "fit":
        started = time.perf_counter()
        writer = model.bank.writer(str(folder), rank)
        for first in range(rank * BATCH, size, 2 * BATCH):
            ids, features = synthetic_batch(real, first, size)
            writer.append(ids, features.pooled, features.pyramid, tuple(real["size"]))
        finish_stream(writer, model.bank)
        dist.barrier()
        result.update(write_s=time.perf_counter() - started, bank_mb=model.bank.nbytes() / 2**20,
                      held=int(model.bank.held().sum()))
        if rank == 0:
            torch.save(model.state_dict(), folder / "state.pt")
    else:
        t0 = time.perf_counter()
        model.load_state_dict(torch.load(folder / "state.pt", weights_only=True, mmap=True))
        result.update(load_s=time.perf_counter() - t0, bank_mb=model.bank.nbytes() / 2**20, held=int(model.bank.held().sum()))
        n = real["test_pooled"].shape[0]
        rows = torch.arange(rank, n, 2)
        dist.barrier()
        started = time.perf_counter()
        (scores, maps), t_img, t_pix = score(model, real, rows, args.batch)
        dist.barrier()
        total = time.perf_counter() - started
        parts = gather_objects((rows, scores, maps))
        result.update(image_knn_ms=1000 * t_img / n, pixel_knn_ms=1000 * t_pix / n, test_img_s=n / total)
        if rank == 0:
            order = torch.cat([p[0] for p in parts]).argsort()
            scores, maps = torch.cat([p[1] for p in parts])[order], torch.cat([p[2] for p in parts])[order]
            torch.save({"scores": scores, "maps": maps}, Path(args.out) / f"scores-sharded{size}.pt")
    result["rss_mb"] = peak_rss_mb()
    (Path(args.out) / f"shard-{phase}{size}-rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def phase_sharded(args, size, phase):
    """Run :func:`_shard_worker` on 2 processes; the ranks' results combined (largest RSS and bank)."""
    import torch.multiprocessing as mp

    store = Path(args.out) / f"store-{phase}{size}-{os.getpid()}"
    store.unlink(missing_ok=True)
    mp.spawn(_shard_worker, args=(args, size, phase, str(store)), nprocs=2, join=True)
    ranks = [json.loads((Path(args.out) / f"shard-{phase}{size}-rank{r}.json").read_text()) for r in range(2)]
    out = {"bank_mb": max(r["bank_mb"] for r in ranks), "rows_per_rank": [r["held"] for r in ranks]}
    if phase == "fit":
        out.update(write_s=max(r["write_s"] for r in ranks), fit_rss_mb=max(r["rss_mb"] for r in ranks))
        return out
    out.update(test_rss_mb=max(r["rss_mb"] for r in ranks), load_s=max(r["load_s"] for r in ranks),
               image_knn_ms=ranks[0]["image_knn_ms"], pixel_knn_ms=ranks[0]["pixel_knn_ms"],
               test_img_s=min(r["test_img_s"] for r in ranks))
    got = torch.load(Path(args.out) / f"scores-sharded{size}.pt", weights_only=True)
    for storage in ("disk", "memory"):
        path = Path(args.out) / f"scores-{storage}{size}.pt"
        if path.exists():
            ref = torch.load(path, weights_only=True)
            out.update(compared_with=storage, score_diff=float((got["scores"] - ref["scores"]).abs().max()),
                       map_diff=float((got["maps"] - ref["maps"]).abs().max()))
            break
    return out


# ---------------------------------------------------------------------- driver


def run_phase(args, phase: str, size: int, storage: str):
    cmd = [sys.executable, __file__, "--phase", phase, str(size), storage, "--out", args.out,
           "--data-root", args.data_root, "--image-k", str(args.image_k), "--gallery-k", str(args.gallery_k),
           "--test-images", str(args.test_images), "--batch", str(args.batch)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        print(done.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(line[0][7:])


def memory_skip_reason(size: int, real) -> str:
    """Why an in-memory bank of ``size`` images is not built here ('' when it fits)."""
    need = MEMORY_FIT_FACTOR * size * image_bytes(real) / 2**20
    free = available_mb()
    if need <= free:
        return ""
    return (f"skipped: an in-memory fit needs about {MEMORY_FIT_FACTOR} x the bank ({need / 1024:.0f} GB), "
            f"{free / 1024:.0f} GB available: use bank_storage disk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="../shared/data/mvtec_ad")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--storages", nargs="+", default=["memory", "disk", "sharded"],
                        help="memory, disk, sharded (2 processes, disk storage)")
    parser.add_argument("--image-k", type=int, default=50)
    parser.add_argument("--gallery-k", type=int, default=50)
    parser.add_argument("--test-images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="/tmp/lightning_ad_scale")
    parser.add_argument("--keep-banks", action="store_true", help="keep each bank's files after its test")
    parser.add_argument("--phase", nargs=3, metavar=("PHASE", "SIZE", "STORAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.phase:
        phase, size, storage = args.phase
        if storage == "sharded":
            result = phase_sharded(args, int(size), phase)
        else:
            result = (phase_fit if phase == "fit" else phase_test)(args, int(size), storage)
        print("RESULT " + json.dumps(result))
        return
    real = real_features(args)
    rate = real["rate"]
    print(f"real extraction (bottle, Lite0, 224 x 224, {torch.get_num_threads()} threads): {rate:.1f} images/s; "
          f"{image_bytes(real) / 1024:.0f} KB per image in float16\n")
    print("| images | storage | bank MB | write s | fit peak RSS MB | load s | test peak RSS MB | image kNN ms/img | "
          "pixel kNN ms/img (K 50) | test img/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for size in args.sizes:
        for storage in args.storages:
            name = SHARDED if storage == "sharded" else storage
            if storage == "memory" and (reason := memory_skip_reason(size, real)):
                print(f"| {size:,} | {name} | {size * image_bytes(real) / 2**20:.0f} | {reason} |||||||", flush=True)
                continue
            row = {}
            for phase in ("fit", "test"):
                result = run_phase(args, phase, size, storage)
                if result is None:
                    break
                row.update(result)
            if not args.keep_banks:
                shutil.rmtree(folder_of(args, size, name), ignore_errors=True)
            if "test_img_s" not in row:
                print(f"| {size:,} | {name} | failed (see the error above) ||||||||", flush=True)
                continue
            print(f"| {size:,} | {name} | {row['bank_mb']:.0f} | {row['write_s']:.1f} | {row['fit_rss_mb']:.0f} | "
                  f"{row['load_s']:.1f} | {row['test_rss_mb']:.0f} | {row['image_knn_ms']:.2f} | {row['pixel_knn_ms']:.0f} | "
                  f"{row['test_img_s']:.2f} |", flush=True)
            if storage == "sharded":
                diff = (f"max abs difference from the {row['compared_with']} bank: scores {row['score_diff']:.3g}, maps "
                        f"{row['map_diff']:.3g}" if "compared_with" in row else "no single-process bank to compare with")
                notes.append(f"{size:,} sharded x2: rows per process {row['rows_per_rank']}; {diff}")
            notes.append(f"{size:,} {name}: writing took {row['write_s']:.1f} s; extracting {size:,} images at "
                         f"{rate:.1f} images/s would take {size / rate / 60:.0f} min")
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
