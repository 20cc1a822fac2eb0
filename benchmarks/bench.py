"""Speed and memory of SPADE on real data: fit, test (split by phase) and a naive reference.

    python benchmarks/bench.py --data-root ../shared/data/mvtec_ad --category bottle \\
        --backbone efficientnet_lite0 --image-k 50 --gallery-k 50 --device cpu --json bench.json

Prints a table:

* fit images/s (feature extraction of the training images, data loading overlapped),
  and with ``--fit-processes 1 2`` the same through ``lightning-ad fit`` on 1 and 2
  processes (DDP; gloo on the CPU);
* test images/s and ms per test image split into backbone, image kNN, pixel kNN and
  post-processing (upsampling, level average, Gaussian smoothing);
* peak resident memory of the process during fit and test (and peak GPU memory on a
  GPU), measured before the naive reference runs (that one needs gigabytes per image);
* achieved GFLOP/s of the pixel kNN (2 (C + 1) flops per query-gallery pair) next to
  the GFLOP/s of a plain float32 matrix product measured in the same run;
* the bank's size and the test metrics (image AUROC of the model's own image score, pixel AUROC,
  PRO), e.g. to see the effect of ``--bank-dtype float16``;
* with ``--cli-loop``: ``lightning-ad test``'s loop per image (fit and test through the CLI, or
  ``--cli-ckpt PATH``), split by Lightning's SimpleProfiler into data wait, ``test_step`` and the
  report's overlays, with the epoch end (gathering, metrics) and the report's figures per image;
* the same test on a naive reference (a full ``torch.cdist`` per image and level, as
  the public SPADE reimplementations do) on ``--naive-images`` test images, with the
  speed ratio and the largest relative score difference.

``--search-radius 8 none`` (the default) scores with the position-aware search within 8
input pixels and with the paper's search over every position (``none``; ``auto``: decided at fit,
as the model's default does): one row each, so
the two are compared in one run; the naive reference is windowed as the row's search is.
Each row also gives the leave-one-out calibration of fit (``calibration s``: every training
image mapped against the rest, as fit does for a map-based image score).

``--gallery-k 5 50 200`` (or several radii) runs each value in a fresh process (peak memory is per
process) and prints one row per value. ``--json PATH`` writes the figures (with several
gallery K: a list).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_ad.core.metrics import binary_auroc, per_region_overlap  # noqa: E402
from lightning_ad.core.spade import SpadeModel, combine_levels  # noqa: E402
from lightning_ad.data import MVTecDataModule  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"))
    p.add_argument("--category", default="bottle")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="imagenet, a state-dict path, or random (timing only)")
    p.add_argument("--image-k", type=int, default=50)
    p.add_argument("--gallery-k", type=int, nargs="+", default=[50])
    p.add_argument("--kappa", type=int, default=1)
    p.add_argument("--search-radius", type=_radius, nargs="+", default=[8.0, None],
                   help="pixel search radius in input pixels, or none (every position); one row per value")
    p.add_argument("--bank-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--chunk-bytes", type=int, default=None, help="kNN block bound (default: the library's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--naive-images", type=int, default=4, help="test images scored by the naive reference (0: skip)")
    p.add_argument("--fit-processes", type=int, nargs="*", default=[], help="also time lightning-ad fit on N processes")
    p.add_argument("--cli-loop", action="store_true",
                   help="also time the test loop of lightning-ad test (fit and test through the CLI, Lightning's "
                        "SimpleProfiler), split into data wait, test_step, the report's overlays and the epoch end")
    p.add_argument("--cli-ckpt", default=None, help="with --cli-loop: test this checkpoint instead of fitting one")
    p.add_argument("--cli-report", action="store_true", help="with --cli-loop: keep the test report (overlays, figures) on")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    return p.parse_args(argv)


def _radius(text: str):
    if text.lower() == "auto":
        return "auto"
    return None if text.lower() in ("none", "null", "global") else float(text)


def _radius_text(radius) -> str:
    return "none" if radius is None else radius if isinstance(radius, str) else f"{radius:g}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def matmul_gflops(device: torch.device) -> float:
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        a @ b
        reps += 1
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def naive_scores(model: SpadeModel, pyramid: List[torch.Tensor], pooled: torch.Tensor, size) -> tuple:
    """The straightforward method: full cdist matrices (image level, then per image and level); with a
    search radius, gallery positions outside each position's window are masked out of the full matrix. The
    model's pixel distance and level factors are applied to the result."""
    bank_pooled = model.bank.pooled.float()
    dist = torch.cdist(pooled.float(), bank_pooled) ** 2
    topk = dist.topk(max(model.image_k, model.gallery_k), dim=1, largest=False)
    scores = topk.values[:, : model.image_k].mean(dim=1)
    maps = []
    for b in range(pooled.shape[0]):
        neighbours = topk.indices[b, : model.gallery_k]
        levels = []
        for fmap, bank in zip(pyramid, model.bank.levels_hwc()):
            c, h, w = fmap.shape[1:]
            gallery = bank[neighbours].float().reshape(-1, c)
            query = fmap[b].permute(1, 2, 0).reshape(-1, c).float()
            d = torch.cdist(query, gallery) ** 2  # [h*w, K*h*w]: the memory hog
            if model.search_radius is not None:
                cells = math.ceil(model.search_radius / (size[0] // h) - 1e-9)
                ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                ys, xs = ys.flatten().to(d.device), xs.flatten().to(d.device)
                near = ((ys[:, None] - ys[None, :]).abs() <= cells) & ((xs[:, None] - xs[None, :]).abs() <= cells)
                d = d.masked_fill(~near.repeat(1, model.gallery_k), float("inf"))
            nearest = d.topk(model.kappa, dim=1, largest=False).values
            if model.pixel_distance == "euclidean":  # the model's pixel distance (its features are already aggregated)
                nearest = nearest.clamp_min(0).sqrt()
            levels.append(nearest.mean(dim=1).reshape(1, h, w))
        maps.append(combine_levels(levels, size, model.sigma, model.level_factors())[0])
    return scores, torch.stack(maps)


def run_one(args: argparse.Namespace, gallery_k: int, radius) -> Dict[str, float]:
    device = torch.device(args.device)
    dm = MVTecDataModule(args.data_root, args.category, batch_size=args.batch_size, num_workers=args.num_workers)
    dm.setup("fit")
    dm.setup("test")
    kwargs = {} if args.chunk_bytes is None else {"chunk_bytes": args.chunk_bytes}
    model = SpadeModel(backbone=args.backbone, weights=args.weights, image_k=args.image_k, gallery_k=gallery_k, kappa=args.kappa,
                       bank_dtype=args.bank_dtype, search_radius=radius, **kwargs).to(device)
    figures: Dict[str, float] = {"gallery_k": gallery_k, "image_k": args.image_k, "search_radius": radius}

    # ---- fit: extraction of the training images, loading overlapped by the workers
    start = time.perf_counter()
    model.fit_bank(batch["image"].to(device, non_blocking=True) for batch in dm.train_dataloader())
    sync(device)
    figures["fit_images_per_s"] = model.bank_size / (time.perf_counter() - start)
    if radius == "auto":  # the row names what fit decided
        figures["search_radius"] = f"auto ({_radius_text(model.search_radius)})"
    figures["bank_mb"] = sum(t.numel() * t.element_size() for t in [model.bank.pooled] + model.bank.levels_hwc()) / 2**20
    # ---- fit's leave-one-out calibration: every training image mapped against the rest (a map-based image score)
    start = time.perf_counter()
    with torch.inference_mode():
        model.leave_one_out()
    sync(device)
    figures["calibration_s"] = time.perf_counter() - start

    # ---- test, phase by phase, with the library's own methods
    phases = {"backbone": 0.0, "image_knn": 0.0, "pixel_knn": 0.0, "post": 0.0}
    pairs_flops = 0.0
    count = 0
    cached = []
    all_scores, all_labels, all_maps, all_masks = [], [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start_all = time.perf_counter()
    with torch.inference_mode():
        for batch in dm.test_dataloader():
            images = batch["image"].to(device, non_blocking=True)
            size = tuple(images.shape[-2:])
            t0 = time.perf_counter()
            features = model.extract(images)
            sync(device)
            t1 = time.perf_counter()
            scores, neighbours = model.nearest_images(features.pooled)
            sync(device)
            t2 = time.perf_counter()
            level_maps = model.level_maps(features.pyramid, neighbours)
            sync(device)
            t3 = time.perf_counter()
            maps = model.combine(level_maps, size)
            sync(device)
            t4 = time.perf_counter()
            phases["backbone"] += t1 - t0
            phases["image_knn"] += t2 - t1
            phases["pixel_knn"] += t3 - t2
            phases["post"] += t4 - t3
            for fmap, cells in zip(features.pyramid, model.level_cells):
                b, c, h, w = fmap.shape
                if cells is None:  # one (C + 1) multiply-add per query-gallery pair
                    pairs_flops += 2.0 * (c + 1) * b * (h * w) * (gallery_k * h * w)
                else:  # subtract, square, add per channel of each pair in the window
                    pairs_flops += 3.0 * c * b * (h * w) * gallery_k * (2 * cells + 1) ** 2
            count += images.shape[0]
            all_scores.append(model.image_scores(scores, model.map_part(maps) if model.uses_maps else None).cpu())
            all_maps.append(maps.cpu())
            all_labels.append(batch["label"])
            all_masks.append(batch["mask"])
            if len(cached) * args.batch_size < args.naive_images:
                cached.append((features, scores.cpu(), maps.cpu(), size))
    total = time.perf_counter() - start_all
    figures["test_images_per_s"] = count / total
    for name, seconds in phases.items():
        figures[f"ms_{name}"] = 1000.0 * seconds / count
    figures["pixel_knn_gflops"] = pairs_flops / phases["pixel_knn"] / 1e9
    figures["peak_rss_mb"] = peak_rss_mb()  # fit + test; the naive reference below needs far more
    if device.type == "cuda":
        figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    figures["matmul_gflops"] = matmul_gflops(device)
    maps_cat, masks_cat = torch.cat(all_maps), torch.cat(all_masks)
    figures["image_auroc"] = float(binary_auroc(torch.cat(all_scores), torch.cat(all_labels)))
    figures["pixel_auroc"] = float(binary_auroc(maps_cat, masks_cat))
    figures["pro"] = float(per_region_overlap(maps_cat, masks_cat, 0.3))
    del maps_cat, masks_cat

    # ---- naive reference on the first images, same features
    if args.naive_images > 0:
        done, naive_time, ours_time, worst = 0, 0.0, 0.0, 0.0
        with torch.inference_mode():
            for features, scores, maps, size in cached:
                n = min(features.pooled.shape[0], args.naive_images - done)
                if n <= 0:
                    break
                pyr = [p[:n] for p in features.pyramid]
                t0 = time.perf_counter()
                ref_scores, ref_maps = naive_scores(model, pyr, features.pooled[:n], size)
                sync(device)
                naive_time += time.perf_counter() - t0
                t0 = time.perf_counter()
                s2, nb = model.nearest_images(features.pooled[:n])
                m2 = model.combine(model.level_maps(pyr, nb), size)
                sync(device)
                ours_time += time.perf_counter() - t0
                ref_scores, ref_maps = ref_scores.cpu().double(), ref_maps.cpu().double()
                worst = max(
                    worst,
                    float(((s2.cpu().double() - ref_scores).abs() / ref_scores.abs()).max()),
                    float((m2.cpu().double() - ref_maps).abs().max() / ref_maps.abs().max()),
                )
                done += n
        per_image_naive = naive_time / done
        # speed-up on the scoring path (kNN + post-processing; the backbone is the same for both)
        figures["naive_test_images_per_s"] = 1.0 / (per_image_naive + phases["backbone"] / count)
        figures["speedup_vs_naive"] = figures["test_images_per_s"] / figures["naive_test_images_per_s"]
        figures["knn_speedup_vs_naive"] = per_image_naive / (ours_time / done)
        figures["max_rel_score_diff"] = worst
        figures["naive_images"] = done
        figures["naive_peak_rss_mb"] = peak_rss_mb()
    figures["test_images"] = count
    figures["train_images"] = model.bank_size
    if args.cli_loop:
        figures.update(cli_loop(args, gallery_k, radius, count))
    return figures


def fit_processes(args: argparse.Namespace, processes: int) -> float:
    """Images/s of ``lightning-ad fit`` on N processes (DDP), read from its log line."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "lightning_ad", "fit", "--config", str(REPO / "configs" / "spade_lite0_mvtec.yaml"),
            "--data.root", args.data_root, "--data.category", args.category,
            "--model.backbone", args.backbone, "--model.weights", args.weights,
            "--model.image_k", "5", "--model.gallery_k", "5",
            "--trainer.devices", str(processes), "--trainer.accelerator", "cpu" if args.device == "cpu" else "gpu",
            "--trainer.default_root_dir", tmp, "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false",
        ]
        if processes > 1:
            cmd += ["--trainer.strategy", "ddp"]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        match = re.search(r"\(([\d.]+) images/s on (\d+) process", out.stdout + out.stderr)
        if out.returncode != 0 or not match:
            raise RuntimeError(f"fit on {processes} processes failed:\n{out.stderr[-2000:]}")
        return float(match.group(1))


_PROFILER_ROW = re.compile(r"^\|\s*(\S[^|]*?)\s*\|\s*(?:[\d.e+-]+|-)\s*\|\s*(\d+)\s*\|\s*([\d.e+-]+)\s*\|")


def cli_loop(args: argparse.Namespace, gallery_k: int, radius, images: int) -> Dict[str, float]:
    """Seconds per test image of ``lightning-ad test``'s loop, by part, from Lightning's SimpleProfiler.

    ``cli_loop_s`` sums what runs once per batch (waiting for data, ``test_step``, every
    ``on_test_batch_*`` hook); ``cli_epoch_end_s`` (gathering and metrics) and ``cli_report_s`` (the
    report's figures) run once after the loop and are given per image too. The test report (overlays,
    figures) is off unless ``--cli-report``; ``cli_fit_s`` is the whole ``lightning-ad fit`` (with its
    leave-one-out calibration) when it runs.
    """
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            "--config", str(REPO / "configs" / "spade_lite0_mvtec.yaml"), "--data.root", args.data_root,
            "--data.category", args.category, "--model.backbone", args.backbone, "--model.weights", args.weights,
            "--model.image_k", str(args.image_k), "--model.gallery_k", str(gallery_k),
            "--model.search_radius", "null" if radius is None else str(radius),
            "--model.bank_dtype", args.bank_dtype, "--trainer.accelerator", "cpu" if args.device == "cpu" else "gpu",
            "--trainer.default_root_dir", tmp, "--trainer.enable_progress_bar", "false",
        ]
        ckpt, fit_s = args.cli_ckpt, None
        if ckpt is None:
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "lightning_ad", "fit", *common], capture_output=True, text=True, cwd=REPO)
            fit_s = time.perf_counter() - start
            found = sorted(Path(tmp).rglob("*.ckpt"))
            if out.returncode != 0 or not found:
                raise RuntimeError(f"lightning-ad fit failed:\n{out.stderr[-2000:]}")
            ckpt = str(found[-1])
        out = subprocess.run([sys.executable, "-m", "lightning_ad", "test", *common, "--ckpt_path", ckpt,
                              "--trainer.profiler", "simple", "--test_report.enabled", str(args.cli_report).lower()],
                             capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            raise RuntimeError(f"lightning-ad test failed:\n{out.stderr[-2000:]}")
    totals: Dict[str, float] = {}
    for line in (out.stdout + out.stderr).splitlines():
        match = _PROFILER_ROW.match(line.strip())
        if match:
            totals[match.group(1)] = float(match.group(3))
    per_batch = {name: t for name, t in totals.items()
                 if name.endswith(("test_next", ".test_step")) or ".on_test_batch_" in name}
    figures = {
        "cli_loop_s": sum(per_batch.values()) / images,
        "cli_data_wait_s": sum(t for n, t in per_batch.items() if n.endswith("test_next")) / images,
        "cli_test_step_s": sum(t for n, t in per_batch.items() if n.endswith(".test_step")) / images,
        "cli_overlays_s": sum(t for n, t in per_batch.items() if "TestReport.on_test_batch_end" in n) / images,
        "cli_epoch_end_s": sum(t for n, t in totals.items() if n.endswith("on_test_epoch_end")) / images,
        "cli_report_s": sum(t for n, t in totals.items() if "TestReport.on_test_end" in n) / images,
    }
    if not per_batch:
        raise RuntimeError("no SimpleProfiler report in the output of lightning-ad test")
    if fit_s is not None:
        figures["cli_fit_s"] = fit_s
    return figures


def print_table(rows: List[Dict[str, float]], args: argparse.Namespace) -> None:
    device = args.device
    print(f"\nSPADE benchmark: {args.category}, backbone {args.backbone} ({args.weights}), device {device}, "
          f"image K {args.image_k}, bank {args.bank_dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    columns = [
        ("gallery K", "gallery_k", "{:.0f}"), ("radius px", "search_radius", "{}"), ("fit img/s", "fit_images_per_s", "{:.1f}"),
        ("calibration s", "calibration_s", "{:.1f}"), ("CLI fit s", "cli_fit_s", "{:.1f}"),
        ("test img/s", "test_images_per_s", "{:.2f}"), ("backbone ms", "ms_backbone", "{:.1f}"),
        ("image kNN ms", "ms_image_knn", "{:.2f}"), ("pixel kNN ms", "ms_pixel_knn", "{:.1f}"),
        ("post ms", "ms_post", "{:.1f}"), ("CLI loop s/img", "cli_loop_s", "{:.3f}"),
        ("CLI data wait s/img", "cli_data_wait_s", "{:.3f}"), ("CLI test_step s/img", "cli_test_step_s", "{:.3f}"),
        ("CLI overlays s/img", "cli_overlays_s", "{:.3f}"), ("CLI epoch end s/img", "cli_epoch_end_s", "{:.3f}"),
        ("CLI report s/img", "cli_report_s", "{:.3f}"), ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("pixel kNN GFLOP/s", "pixel_knn_gflops", "{:.1f}"), ("matmul GFLOP/s", "matmul_gflops", "{:.1f}"),
        ("naive img/s", "naive_test_images_per_s", "{:.3f}"), ("speed-up", "speedup_vs_naive", "{:.1f}x"),
        ("max rel diff", "max_rel_score_diff", "{:.1e}"), ("bank MB", "bank_mb", "{:.1f}"),
        ("image AUROC", "image_auroc", "{:.4f}"), ("pixel AUROC", "pixel_auroc", "{:.4f}"), ("PRO", "pro", "{:.4f}"),
    ]
    if any("peak_gpu_mb" in r for r in rows):
        columns.insert(8, ("peak GPU MB", "peak_gpu_mb", "{:.0f}"))
    cells = [[(_radius_text(r[key]) if key == "search_radius" else fmt.format(r[key])) if key in r else "-"
              for _, key, fmt in columns] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _, _) in enumerate(columns)]
    print(" | ".join(title.rjust(w) for (title, _, _), w in zip(columns, widths)))
    print("-|-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(v.rjust(w) for v, w in zip(c, widths)))


def main(argv=None) -> None:
    args = parse_args(argv)
    if not Path(args.data_root, args.category).is_dir():
        raise SystemExit(f"bench: no category {args.category!r} under {args.data_root!r} (set --data-root)")
    rows: List[Dict[str, float]] = []
    if len(args.gallery_k) == 1 and len(args.search_radius) == 1:
        rows.append(run_one(args, args.gallery_k[0], args.search_radius[0]))
    else:  # one process per value: peak memory is per process
        for k, radius in [(k, r) for k in args.gallery_k for r in args.search_radius]:
            with tempfile.NamedTemporaryFile(suffix=".json") as handle:
                child = [a for a in (argv if argv is not None else sys.argv[1:])]
                cmd = [sys.executable, __file__] + _replace_option(child, "--gallery-k", [str(k)])
                cmd = _replace_option(cmd, "--search-radius", [_radius_text(radius)])
                cmd = _replace_option(cmd, "--json", [handle.name])
                cmd = _replace_option(cmd, "--fit-processes", [])
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                rows.append(json.load(open(handle.name)))
    for processes in args.fit_processes:
        rows[0][f"fit_images_per_s_{processes}proc"] = fit_processes(args, processes)
    print_table(rows, args)
    for processes in args.fit_processes:
        print(f"lightning-ad fit on {processes} process(es): {rows[0][f'fit_images_per_s_{processes}proc']:.1f} images/s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows[0] if len(rows) == 1 else rows, handle, indent=2)


def _replace_option(argv: List[str], name: str, values: List[str]) -> List[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            if item.startswith("--"):
                skip = False
            else:
                continue
        if item == name:
            skip = True
            continue
        out.append(item)
    return out + ([name] + values if values else [])


if __name__ == "__main__":
    main()
