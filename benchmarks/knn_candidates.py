"""How often half-precision candidates miss the true nearest neighbour of the pixel search.

A two-stage search would find ``k'`` candidates per query position with half-precision
products and recompute only their distances exactly. It equals the float32 search
whenever the true nearest gallery feature is among the candidates. This script counts,
on real features, the query positions where it is not, for several ``k'``:

    python benchmarks/knn_candidates.py --config configs/spade_lite0_mvtec.yaml --ckpt PATH \\
        --images 8 --kprime 1 4 16 64 256

For each level and each stage-1 arithmetic it prints the misses (positions whose best
candidate is farther than the true nearest neighbour, exact distances in float64) out of
all positions, and the largest difference of a level-map value (squared distance) that
the misses would cause:

* ``bf16``: what this CPU runs: ``[q, 1] . [-2 g, |g|^2]`` on centred features, bfloat16
  inputs and a bfloat16 product (``torch.bmm`` in bfloat16; accumulation inside is float32);
* ``bf16-f32out``: the same with a float32 product (a GPU with ``out_dtype``);
* ``fp16-f32out``: float16 inputs, float32 product (GPU tensor cores).

Queries and gallery are centred on the mean query of the image, as ``lightning_ad.core.knn``
does. The gallery of a test image is every position of its ``gallery_k`` nearest training
images, as in :class:`lightning_ad.SpadeModel`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_ad.inference.checkpoint import load_model  # noqa: E402

_QUERY_CHUNK = 128


def datamodule(config: str):
    cfg = yaml.safe_load(open(config))["data"]
    module, _, name = cfg["class_path"].rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    args = dict(cfg.get("init_args") or {})
    args["num_workers"] = 0
    return cls(**args)


def stage1(qc: torch.Tensor, gc: torch.Tensor, kind: str) -> torch.Tensor:
    """Approximate ``|g|^2 - 2 q.g`` ``[Q, G]`` float32 as the half-precision product computes it."""
    qa = torch.cat([qc, torch.ones_like(qc[:, :1])], 1)
    ga = torch.cat([-2 * gc, (gc * gc).sum(1, keepdim=True)], 1)
    if kind == "bf16":
        return (qa.bfloat16() @ ga.bfloat16().T).float()
    dtype = torch.bfloat16 if kind == "bf16-f32out" else torch.float16
    return qa.to(dtype).float() @ ga.to(dtype).float().T


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--images", type=int, default=8, help="test images (evenly spread over the test set)")
    p.add_argument("--kprime", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--kinds", nargs="+", default=["bf16", "bf16-f32out", "fp16-f32out"])
    args = p.parse_args(argv)
    model, _, _ = load_model(args.ckpt)
    dm = datamodule(args.config)
    dm.setup("test")
    dataset = dm.test_dataset
    picks = torch.linspace(0, len(dataset) - 1, args.images).round().long().unique().tolist()
    images = torch.stack([dataset[i]["image"] for i in picks])
    with torch.no_grad():
        feats = model.extract(images)
        _, neighbours = model.nearest_images(feats.pooled)
    kmax = max(args.kprime)
    print(f"{Path(args.config).name}: {len(picks)} test images, gallery_k {model.gallery_k}, k' {args.kprime}")
    for position, fmap in enumerate(feats.pyramid):
        b, c, h, w = fmap.shape
        bank = model.bank.level(position)
        misses = {(kind, k): 0 for kind in args.kinds for k in args.kprime}
        worst = {(kind, k): 0.0 for kind in args.kinds for k in args.kprime}
        for i in range(b):
            q = fmap[i].permute(1, 2, 0).reshape(h * w, c).float()
            g = bank[neighbours[i]].reshape(-1, c).float()
            centre = q.mean(0, keepdim=True)
            qc, gc = q - centre, g - centre
            gd, gn = gc.double(), (gc.double() ** 2).sum(1)
            for q0 in range(0, h * w, _QUERY_CHUNK):
                qq = qc[q0 : q0 + _QUERY_CHUNK]
                qd = qq.double()
                exact = ((qd * qd).sum(1, keepdim=True) + gn[None] - 2 * qd @ gd.T).clamp_min(0)
                true = exact.min(1).values
                for kind in args.kinds:
                    cand = stage1(qq, gc, kind).topk(min(kmax, g.shape[0]), 1, largest=False, sorted=True).indices
                    cand_d = exact.gather(1, cand)
                    for k in args.kprime:
                        best = cand_d[:, :k].min(1).values
                        gap = best - true
                        missed = gap > 1e-9 * (1 + true)
                        misses[kind, k] += int(missed.sum())
                        worst[kind, k] = max(worst[kind, k], float(gap.max()))
        for kind in args.kinds:
            row = "  ".join(f"k'={k}: {misses[kind, k]} ({worst[kind, k]:.3g})" for k in args.kprime)
            print(f"level {model.layers[position]} ({c} ch, {b * h * w} positions, gallery {g.shape[0]}) {kind:12s} "
                  f"misses (largest map difference): {row}")


if __name__ == "__main__":
    main()
