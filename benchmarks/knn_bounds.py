"""Why the pixel search is not made 2x faster exactly on this CPU: product speed and pruning bounds.

    python benchmarks/knn_bounds.py --config configs/spade_lite0_mvtec.yaml \\
        --config configs/spade_lite0_magnetic_tile.yaml --images 8 --gallery-k 50

Two measurements, on real features (the config's datamodule, EfficientNet-Lite0, the
bank built from all its training images, ``--images`` test images evenly spread):

1. **Product speed** of one search block at the stride-4 shape (256 queries x 4096 gallery
   rows, C + 1 = 25), float32 and bfloat16 (``torch.bmm``), then reduced by ``amin``, beside
   a square float32 product: GFLOP/s and ms per test image at gallery K. A two-stage
   search can save at most the ratio of the first two columns, before its re-rank.
2. **Exact pruning.** An exact search may skip a gallery row only where a lower bound of its
   distance exceeds an upper bound ``u`` of the query's nearest distance. ``u`` is the
   nearest distance over the 3x3 neighbourhood of the query's own position in the K
   gallery images (a cheap, tight bound: the column "u exact" is how often it already is
   the true nearest distance). The table gives the fraction of the gallery that the
   bounds cannot exclude (1.0 = no saving):

   * ``proj d``: the squared distance of the projections on the gallery's top d principal
     directions, per query (the most a d-dimensional index could skip);
   * ``proj 1, blocks``: the same on one direction, where a block of 256 queries (sorted
     by projection) searches one contiguous slice: what a matrix product can skip;
   * ``balls``: k-means clusters (64 per training image) with their radii, per query, and
     per block (a cluster of queries of about 64 against a gallery cluster).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from knn_candidates import datamodule  # noqa: E402  (benchmarks/ is on the path when run as a script)

from lightning_ad.core.knn import grouped_knn  # noqa: E402
from lightning_ad.core.spade import SpadeModel  # noqa: E402

BLOCK_Q, BLOCK_G, CHANNELS = 256, 4096, 25


def best_time(fn, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def product_speed(gallery_k: int) -> None:
    q = torch.randn(1, BLOCK_Q, CHANNELS)
    g = torch.randn(1, BLOCK_G, CHANNELS).transpose(1, 2)
    blocks = (3136 / BLOCK_Q) * (gallery_k * 3136 / BLOCK_G)
    flops = 2 * BLOCK_Q * BLOCK_G * CHANNELS
    square = torch.randn(1024, 1024)
    sq = 2 * 1024**3 / best_time(lambda: square @ square, 10) / 1e9
    print(f"product speed, {torch.get_num_threads()} threads, blocks {BLOCK_Q} x {CHANNELS} by {CHANNELS} x {BLOCK_G}:\n")
    print("| arithmetic | block GFLOP/s | block + amin GFLOP/s | ms per image (stride 4) | square float32 GFLOP/s |")
    print("|---|---|---|---|---|")
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        qq, gg = q.to(dtype), g.to(dtype)
        alone = best_time(lambda: torch.bmm(qq, gg))
        reduced = best_time(lambda: torch.bmm(qq, gg).amin(-1))
        print(f"| {name} | {flops / alone / 1e9:.0f} | {flops / reduced / 1e9:.0f} | {1000 * reduced * blocks:.0f} | {sq:.0f} |")


def kmeans(x: torch.Tensor, k: int, iters: int = 8):
    """Centres ``[k, C]``, radii ``[k]`` and assignment ``[R]`` of rows ``x`` ``[R, C]`` (seeded)."""
    gen = torch.Generator().manual_seed(0)
    centres = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        centres = sums / torch.bincount(assign, minlength=k).clamp_min(1)[:, None]
    assign = torch.cdist(x, centres).argmin(1)
    radii = torch.zeros(k).scatter_reduce(0, assign, (x - centres[assign]).norm(dim=1), "amax")
    return centres, radii, assign


def neighbourhood_bound(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``u`` ``[H * W]``: nearest squared distance over the 3x3 neighbourhood in gallery images ``g`` ``[M, H, W, C]``."""
    best = torch.full(q.shape[:2], float("inf"))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = torch.roll(g, shifts=(dy, dx), dims=(1, 2))
            best = torch.minimum(best, ((shifted - q[None]) ** 2).sum(-1).min(0).values)
    return best.flatten()


def pruning(config: str, images: int, gallery_k: int) -> None:
    dm = datamodule(config)
    dm.setup("fit")
    dm.setup("test")
    model = SpadeModel(image_k=gallery_k, gallery_k=gallery_k).eval()
    with torch.no_grad():
        model.fit_bank(batch["image"] for batch in dm.train_dataloader())
        test = dm.test_dataset
        picks = torch.linspace(0, len(test) - 1, images).round().long().unique().tolist()
        feats = model.extract(torch.stack([test[i]["image"] for i in picks]))
        _, neighbours = model.nearest_images(feats.pooled)
    print(f"\n{Path(config).name}: {len(picks)} test images, gallery K {gallery_k}, bank {model.bank_size} images\n")
    print("| level | u exact | proj 1 | proj 2 | proj 4 | proj 8 | proj 1, blocks | balls | balls, blocks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for position, fmap in enumerate(feats.pyramid):
        b, c, h, w = fmap.shape
        bank = model.bank.levels_hwc()[position].float()
        clusters = {}
        sums = torch.zeros(8)
        for i in range(b):
            q = fmap[i].permute(1, 2, 0)
            rows = neighbours[i].tolist()
            g = bank[rows]
            qf, gf = q.reshape(-1, c), g.reshape(-1, c)
            true = grouped_knn(qf[None], bank.reshape(len(bank), -1, c), neighbours[i : i + 1], 1)[0, :, 0]
            u = neighbourhood_bound(q, g)
            sums[0] += float((u <= true * (1 + 1e-5)).float().mean())
            centre = qf.mean(0)
            qc, gc = qf - centre, gf - centre
            directions = torch.linalg.eigh(gc.T @ gc).eigenvectors
            for j, d in enumerate((1, 2, 4, 8)):
                proj = directions[:, -d:]
                bound = torch.cdist(qc @ proj, gc @ proj) ** 2
                sums[1 + j] += float((bound <= u[:, None]).float().mean())
            qp, gp = qc @ directions[:, -1], (gc @ directions[:, -1]).sort().values
            order, searched = qp.argsort(), 0
            for start in range(0, len(order), BLOCK_Q):
                block = order[start : start + BLOCK_Q]
                lo = torch.searchsorted(gp, (qp[block] - u[block].sqrt()).min())
                hi = torch.searchsorted(gp, (qp[block] + u[block].sqrt()).max())
                searched += len(block) * int(hi - lo)
            sums[5] += searched / (len(qp) * len(gp))
            for row in rows:
                if row not in clusters:
                    clusters[row] = kmeans(bank[row].reshape(-1, c), min(64, h * w // 4))
            centres = torch.cat([clusters[r][0] for r in rows])
            radii = torch.cat([clusters[r][1] for r in rows])
            sizes = torch.cat([torch.bincount(clusters[r][2], minlength=len(clusters[r][1])) for r in rows]).float()
            keep = ((torch.cdist(qf, centres) - radii).clamp_min(0) ** 2 <= u[:, None]).float()
            sums[6] += float((keep @ sizes).mean() / sizes.sum())
            q_centres, q_radii, q_assign = kmeans(qf, max(1, h * w // 64))
            u_max = torch.zeros(len(q_radii)).scatter_reduce(0, q_assign, u, "amax")
            gap = (torch.cdist(q_centres, centres) - q_radii[:, None] - radii[None]).clamp_min(0) ** 2
            counts = torch.bincount(q_assign, minlength=len(q_radii)).float()
            sums[7] += float((counts[:, None] * (gap <= u_max[:, None]).float() * sizes[None]).sum() / (counts.sum() * sizes.sum()))
        row = " | ".join(f"{v / b:.3f}" for v in sums)
        print(f"| {model.layers[position]} ({c} ch) | {row} |", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, help="a datamodule config (repeatable)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--gallery-k", type=int, default=50)
    args = p.parse_args(argv)
    product_speed(args.gallery_k)
    for config in args.config:
        pruning(config, args.images, args.gallery_k)


if __name__ == "__main__":
    main()
