"""SpadeModel (no Trainer) against a straightforward float64 implementation of the method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from lightning_ad.bank.content import content_ids
from lightning_ad.core.spade import Features, SpadeModel
from lightning_ad.errors import ConfigurationError


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(12, 3, 64, 64, generator=gen) * 0.3 + 0.35
    test = torch.rand(3, 3, 64, 64, generator=gen) * 0.3 + 0.35
    test[1, :, 20:34, 20:34] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # a red patch
    return train, test


def neighbourhood_mean(fmap: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` float64 mean of each position's 3x3 neighbours inside the map, from shifted copies."""
    fmap = fmap.double()
    padded = F.pad(fmap, (1, 1, 1, 1))
    inside = F.pad(torch.ones_like(fmap[:, :1]), (1, 1, 1, 1))
    h, w = fmap.shape[-2:]
    total = sum(padded[..., dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    count = sum(inside[..., dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return total / count


def reference_spade(model: SpadeModel, train: torch.Tensor, test: torch.Tensor, image_k: int, gallery_k: int, kappa: int, sigma: float,
                    radius=None):
    """The method written out plainly: full float64 distance matrices, scipy smoothing; with ``radius``
    (input pixels) the gallery positions farther than ``ceil(radius / stride)`` cells in y or x are left out.
    The model's ``aggregate_levels`` (3x3 means), ``pixel_distance`` and level factors are followed."""
    with torch.no_grad():
        train_pyr, train_pool = model.backbone(train)
        test_pyr, test_pool = model.backbone(test)
    train_pyr = [neighbourhood_mean(f) if flag else f for f, flag in zip(train_pyr, model.aggregated)]
    test_pyr = [neighbourhood_mean(f) if flag else f for f, flag in zip(test_pyr, model.aggregated)]
    d_img = torch.cdist(test_pool.double(), train_pool.double()) ** 2
    sorted_d, order = d_img.sort(dim=1)
    scores = sorted_d[:, :image_k].mean(dim=1)
    maps = []
    for b in range(test.shape[0]):
        level_maps = []
        for tr, te in zip(train_pyr, test_pyr):
            c, h, w = te.shape[1:]
            gallery = tr[order[b, :gallery_k]].permute(0, 2, 3, 1).reshape(-1, c).double()
            queries = te[b].permute(1, 2, 0).reshape(-1, c).double()
            diff = queries[:, None, :] - gallery[None, :, :]
            dist = (diff * diff).sum(-1)
            if radius is not None:
                cells = int(np.ceil(radius / (test.shape[-1] // w)))
                ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                ys, xs = ys.flatten(), xs.flatten()
                near = ((ys[:, None] - ys[None, :]).abs() <= cells) & ((xs[:, None] - xs[None, :]).abs() <= cells)
                dist = dist.masked_fill(~near.repeat(1, gallery_k), float("inf"))
            nearest = dist.topk(kappa, dim=1, largest=False).values
            if model.pixel_distance == "euclidean":
                nearest = nearest.sqrt()
            level = nearest.mean(dim=1).reshape(1, 1, h, w)
            level_maps.append(F.interpolate(level, size=test.shape[-2:], mode="bilinear", align_corners=False)[0, 0])
        factors = model.level_factors()
        combined = (torch.stack(level_maps).mean(0) if factors is None else
                    sum(float(f) * m for f, m in zip(factors, level_maps))).numpy()
        maps.append(ndimage.gaussian_filter(combined, sigma) if sigma > 0 else combined)
    return scores, torch.from_numpy(np.stack(maps))


#: The paper's levels (no aggregation, squared distances), and today's defaults with a weighted, balanced mean.
PAPER = {"aggregate_levels": [], "pixel_distance": "squared"}
BALANCED = {"level_balance": "std", "level_weights": [1.0, 2.0, 0.5]}


@pytest.mark.parametrize("image_k,gallery_k,kappa,sigma,radius,levels", [
    (5, 5, 1, 4.0, None, PAPER), (3, 7, 3, 2.0, None, PAPER), (12, 1, 1, 0.0, None, PAPER), (5, 5, 1, 4.0, 8, PAPER),
    (3, 7, 3, 2.0, 12, PAPER), (12, 1, 1, 0.0, 4, PAPER), (5, 5, 1, 4.0, 8, {}), (3, 7, 3, 2.0, None, {}),
    (5, 5, 2, 4.0, 8, BALANCED),
])
def test_scores_and_maps_match_reference(images, image_k, gallery_k, kappa, sigma, radius, levels):
    train, test = images
    model = SpadeModel(backbone="efficientnet_lite0", image_k=image_k, gallery_k=gallery_k, kappa=kappa, sigma=sigma,
                       image_score="dn2", search_radius=radius, **levels)
    model.fit_bank(train, batch_size=5)
    out = model(test)
    ref_scores, ref_maps = reference_spade(model, train, test, image_k, gallery_k, kappa, sigma, radius)
    assert torch.allclose(out.image_scores.double(), ref_scores, rtol=1e-5)
    assert out.anomaly_maps.shape == (3, 64, 64)
    assert float((out.anomaly_maps.double() - ref_maps).abs().max()) <= 1e-4 * float(ref_maps.abs().max())
    # the red patch is the most anomalous image and its maximum lies in the patch
    assert int(out.image_scores.argmax()) == 1
    peak = divmod(int(out.anomaly_maps[1].argmax()), 64)
    assert 14 <= peak[0] <= 40 and 14 <= peak[1] <= 40


def test_bank_is_independent_of_order(images):
    train, _ = images
    model = SpadeModel(backbone="efficientnet_lite0", image_k=2, gallery_k=2)
    feats = model.extract(train)
    model.set_bank(feats, (64, 64))
    reference = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("bank")}
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    model.set_bank(Features([p[perm] for p in feats.pyramid], feats.pooled[perm]), (64, 64), index=perm)
    for key, value in model.state_dict().items():
        if key.startswith("bank"):
            assert torch.equal(value, reference[key]), key


def test_state_dict_round_trip_and_mismatch(images):
    train, test = images
    model = SpadeModel(backbone="efficientnet_lite0", image_k=3, gallery_k=3)
    model.fit_bank(train)
    fresh = SpadeModel(backbone="efficientnet_lite0", image_k=3, gallery_k=3)
    assert not fresh.is_fitted
    fresh.load_state_dict(model.state_dict())
    assert fresh.bank_size == 12 and fresh.image_size == (64, 64)
    assert torch.equal(fresh(test).anomaly_maps, model(test).anomaly_maps)
    other = SpadeModel(backbone="efficientnet_lite0", layers=(2, 3), image_k=3, gallery_k=3)
    with pytest.raises(ValueError, match=r"levels \[1, 2, 3\] \(configured: \[2, 3\]\)"):
        other.load_state_dict(model.state_dict())


def test_half_precision_bank_is_close(images):
    train, test = images
    full = SpadeModel(backbone="efficientnet_lite0", image_k=3, gallery_k=3)
    full.fit_bank(train)
    half = SpadeModel(backbone="efficientnet_lite0", image_k=3, gallery_k=3, bank_dtype="float16")
    half.fit_bank(train)
    assert half.bank.level1.dtype == torch.float16
    assert half.bank.level1.element_size() * 2 == full.bank.level1.element_size()
    a, b = full(test), half(test)
    assert torch.allclose(a.image_scores, b.image_scores, rtol=1e-2)
    assert float((a.anomaly_maps - b.anomaly_maps).abs().max()) < 1e-2 * float(a.anomaly_maps.max())


def test_leave_one_out_excludes_self(images):
    train, _ = images
    model = SpadeModel(backbone="efficientnet_lite0", image_k=2, gallery_k=2)
    model.fit_bank(train)
    loo = model.score_bank()
    assert (loo.image_scores > 0).all() and (loo.anomaly_maps > 0).all()
    # equals scoring image 0 against a bank built without it (rows are ordered by content: find image 0's)
    row = int((model.bank.index == content_ids(train[:1])[0]).nonzero())
    other = SpadeModel(backbone="efficientnet_lite0", image_k=2, gallery_k=2, search_radius=model.search_radius)
    other.fit_bank(train[1:])
    direct = other(train[:1])
    assert torch.allclose(loo.image_scores[row], direct.image_scores[0], rtol=1e-5)
    assert torch.allclose(loo.anomaly_maps[row], direct.anomaly_maps[0], rtol=1e-4, atol=1e-4 * float(direct.anomaly_maps.max()))


def test_errors(images):
    train, test = images
    model = SpadeModel(backbone="efficientnet_lite0", image_k=20, gallery_k=2)
    with pytest.raises(ConfigurationError, match="no memory bank"):
        model(test)
    model.fit_bank(train)
    assert model.ks_in_use() == (12, 2)  # a bank smaller than image_k: every image it holds
    small = SpadeModel(backbone="efficientnet_lite0", image_k=2, gallery_k=2)
    small.fit_bank(train)
    with pytest.raises(ValueError, match="64x64 images"):
        small(torch.rand(1, 3, 96, 96))
    for kwargs, pattern in [({"kappa": 0}, "kappa"), ({"sigma": -1}, "sigma"), ({"bank_dtype": "int8"}, "bank_dtype")]:
        with pytest.raises(ValueError, match=pattern):
            SpadeModel(backbone="efficientnet_lite0", **kwargs)
