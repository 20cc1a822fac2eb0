"""How the few-shot threshold rules behave: fit on seeded draws of a few good images, learn thresholds by each
rule, and measure on the whole test set what share of good images and good pixels they flag (the quantile
thresholds aim at 5 % and 0.1 %), the share of defective images found, and image and pixel F1.

    python benchmarks/few_shot_thresholds.py --sets bottle magnetic_tile --shots 1 2 4 8 16 --draws 2

Rules (normal scores whose quantiles, ``image_quantile`` 0.95 and ``pixel_quantile`` 0.999, set the thresholds):

* ``loo``: leave-one-out scores of the training images (each against the others; 2 images or more);
* ``loo+views``: those and the scores of :data:`~lightning_ad.core.views.THRESHOLD_VIEWS` of each image scored
  against the other images (the default below ``few_shot_below`` images);
* ``views``: the views scored against the whole bank, their own image included (the default for one image).

Draws: ``numpy.random.default_rng(seed * 1000 + shots).choice(N, shots, replace=False)`` of the sorted training
set, as ``benchmarks/few_shot.py``; default settings with ``search_radius: 8``; means over the draws.
"""

from __future__ import annotations

import argparse
import collections
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import yaml

import lightning_ad
from lightning_ad.core.spade import SpadeModel
from lightning_ad.core.thresholds import quantile_threshold
from lightning_ad.core.views import THRESHOLD_VIEWS, views_of

REPO = Path(__file__).resolve().parents[1]


def load(name: str, root: Path):
    """``(train dataset, test items)`` of bottle or Magnetic Tile, as the configs prepare them."""
    config = "spade_lite0_mvtec.yaml" if name == "bottle" else "spade_lite0_magnetic_tile.yaml"
    data = yaml.safe_load(open(REPO / "configs" / config))["data"]
    args = {**data["init_args"], "num_workers": 0}
    if name == "bottle":
        args.update(root=str(root / "mvtec_ad"), category="bottle")
    else:
        args["root"] = str(root / "magnetic_tile")
    module = getattr(lightning_ad, data["class_path"].rsplit(".", 1)[1])(**args)
    module.setup("fit")
    module.setup("test")
    test = module.test_dataloader().dataset
    return module.train_dataset, [test[i] for i in range(len(test))]


def rules(model: SpadeModel, train: torch.Tensor):
    """``{rule: (image scores [n], maps [n, H, W])}`` of the normal scores each rule uses."""
    views = views_of(train, THRESHOLD_VIEWS)
    alone = model(views)
    out = {"views": (alone.image_scores, alone.anomaly_maps)}
    if train.shape[0] >= 2:
        loo = model.score_bank()
        source = torch.arange(train.shape[0]).repeat_interleave(len(THRESHOLD_VIEWS))
        others = model.score_features(model.extract(views), model.image_size, exclude=source)
        out["loo"] = (loo.image_scores, loo.anomaly_maps)
        out["loo+views"] = (torch.cat([loo.image_scores, others.image_scores]), torch.cat([loo.anomaly_maps, others.anomaly_maps]))
    return out


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("LIGHTNING_AD_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--sets", nargs="+", choices=["bottle", "magnetic_tile"], default=["bottle", "magnetic_tile"])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--draws", type=int, default=2)
    args = p.parse_args(argv)
    table = collections.defaultdict(list)
    for name in args.sets:
        train, test = load(name, Path(args.data_root))
        images = torch.stack([t["image"] for t in test])
        good = torch.tensor([int(t["label"]) == 0 for t in test])
        masks = torch.stack([torch.as_tensor(t["mask"]).reshape(images.shape[-2:]) for t in test]) > 0
        for shots in args.shots:
            for seed in range(args.draws):
                pick = sorted(np.random.default_rng(seed * 1000 + shots).choice(len(train), shots, replace=False).tolist())
                x = torch.stack([train[i]["image"] for i in pick])
                model = SpadeModel(search_radius=8)
                model.fit_bank(x)
                with torch.inference_mode():
                    outs = [model(b) for b in images.split(16)]
                    scores, maps = torch.cat([o.image_scores for o in outs]), torch.cat([o.anomaly_maps for o in outs])
                    for rule, (normal_scores, normal_maps) in rules(model, x).items():
                        flagged = scores >= quantile_threshold(normal_scores, 0.95)
                        pixels = maps >= quantile_threshold(normal_maps, 0.999)
                        f1_image = 2 * int((flagged & ~good).sum()) / max(1, int(flagged.sum()) + int((~good).sum()))
                        f1_pixel = 2 * int((pixels & masks).sum()) / max(1, int(pixels.sum()) + int(masks.sum()))
                        table[(name, shots, rule)].append((float(flagged[good].float().mean()), float(flagged[~good].float().mean()),
                                                           f1_image, float(pixels[good].float().mean()), f1_pixel))
    print("| data | good images | rule | good images flagged | defective images found | image F1 | good pixels flagged | pixel F1 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for (name, shots, rule), values in table.items():
        m = np.mean(np.array(values), axis=0)
        print(f"| {name} | {shots} | {rule} | {100 * m[0]:.1f} % | {100 * m[1]:.1f} % | {m[2]:.3f} | {100 * m[3]:.2f} % | {m[4]:.3f} |")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
