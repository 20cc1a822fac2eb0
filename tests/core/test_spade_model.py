"""SpadeModel (no Trainer) against a straightforward float64 implementation of the method."""

from __future__ import annotations

import pytest
import torch
from references import reference_spade

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
