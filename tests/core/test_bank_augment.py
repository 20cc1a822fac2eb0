"""``bank_augment``: views of each training image join the bank beside it, and leave-one-out leaves them out too."""

from __future__ import annotations

import pytest
import torch
from conftest import dm, fit_checkpoint, make_mvtec, noise_tensors

from lightning_ad.bank.content import content_ids
from lightning_ad.core.knn import slab_knn
from lightning_ad.core.spade import SpadeModel
from lightning_ad.core.views import VIEW_BIT, row_groups, view, view_ids
from lightning_ad.errors import CheckpointError, ConfigurationError
from lightning_ad.inference import checkpoint as ckpt
from lightning_ad.inference.detector import Detector


@pytest.fixture(scope="module")
def images():
    return noise_tensors(6, 2, size=48, seed=3)


def spade(lite0, **kwargs) -> SpadeModel:
    settings = dict(image_k=3, gallery_k=3, search_radius=None, backbone_module=lite0)
    settings.update(kwargs)
    return SpadeModel(**settings).eval()


def test_the_views_are_rows_after_the_images_named_after_them(lite0, images):
    train, _ = images
    model = spade(lite0, bank_augment="flips")
    model.fit_bank(train[:4])
    index = model.bank.index
    assert (model.bank_size, len(model.bank), model.views_per_image) == (4, 12, 2)
    assert bool((index[:4] < VIEW_BIT).all()) and bool((index[4:] >= VIEW_BIT).all())
    groups = row_groups(index)
    for row in range(4):  # each image's group: itself and its two views
        assert int((groups == groups[row]).sum()) == 3
    # a view's row holds the features of that view of its image, under the id view_ids gives it
    first = content_ids(train[:1])
    for name, view_id in zip(("hflip", "vflip"), view_ids(first, 2).tolist()):
        (row,) = (index == view_id).nonzero().flatten().tolist()
        expected = model.extract(view(train[:1], name)).pooled[0]
        torch.testing.assert_close(model.bank.pooled[row], expected, rtol=1e-4, atol=1e-5)
    (own,) = (index == first[0]).nonzero().flatten().tolist()
    assert not torch.allclose(model.bank.pooled[own], model.extract(view(train[:1], "vflip")).pooled[0], atol=1e-3)


def test_leave_one_out_scores_an_image_against_the_other_images_and_their_views(lite0, images):
    """An image left out takes its views with it: its leave-one-out score is its score against a bank of the others."""
    train = images[0][:4].clone()
    train[0] = (train[0] + train[0].flip(-1)) / 2  # its mirror image is itself: its hflip view is its twin
    model = spade(lite0, bank_augment="flips")
    model.fit_bank(train)
    row = int((model.bank.index == content_ids(train[:1])[0]).nonzero()[0])
    others = spade(lite0, bank_augment="flips")
    others.fit_bank(train[1:4])
    left_out, against_others = model.score_bank(torch.tensor([row])), others(train[:1])
    torch.testing.assert_close(left_out.image_scores, against_others.image_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(left_out.anomaly_maps, against_others.anomaly_maps, rtol=1e-5, atol=1e-5)
    groups = row_groups(model.bank.index)
    _, neighbours = model.nearest_images(model.bank.pooled[[row]], exclude=torch.tensor([row]))
    assert neighbours.shape == (1, 3) and not bool((groups[neighbours] == groups[row]).any())
    # leaving out its own row alone would keep its twin, the nearest row
    nearest = slab_knn(model.bank.pooled[[row]], model.bank.pooled, 3, chunk_bytes=2**24, exclude=torch.tensor([row])).indices
    assert int(groups[nearest[0, 0]]) == int(groups[row])


def test_an_augmented_bank_grown_by_images_equals_a_fresh_fit(lite0, images):
    train, test = images
    fresh = spade(lite0, bank_augment="flips+rotations", image_k=4, gallery_k=4)
    fresh.fit_bank(train)
    grown = spade(lite0, bank_augment="flips+rotations", image_k=4, gallery_k=4)
    grown.fit_bank(train[:2])
    grown.add_images(train[2:])
    assert torch.equal(grown.bank.index, fresh.bank.index) and len(fresh.bank) == 36
    assert torch.equal(grown.bank.pooled, fresh.bank.pooled)
    for name in ("image_threshold", "pixel_threshold"):
        assert float(getattr(grown, name)) == pytest.approx(float(getattr(fresh, name)), rel=1e-6)
    a, b = grown(test), fresh(test)
    assert torch.equal(a.image_scores, b.image_scores) and torch.equal(a.anomaly_maps, b.anomaly_maps)
    # the same image again is skipped, views and all
    assert grown.add_images(train[:1]) == [(0, -1)] and len(grown.bank) == 36


def test_a_disk_bank_with_views_scores_as_memory(lite0, images, tmp_path):
    train, test = images
    memory = spade(lite0, bank_augment="rotations")
    memory.fit_bank(train)
    disk = spade(lite0, bank_augment="rotations", bank_storage="disk", bank_dir=str(tmp_path))
    disk.fit_bank(train)
    assert torch.equal(disk.bank.index, memory.bank.index)
    a, b = disk(test), memory(test)
    assert torch.equal(a.image_scores, b.image_scores) and torch.equal(a.anomaly_maps, b.anomaly_maps)


def test_bad_settings_are_refused_by_name(lite0):
    with pytest.raises(ConfigurationError, match="bank_augment"):
        spade(lite0, bank_augment="mirror")
    wide = torch.rand(2, 3, 32, 48)
    with pytest.raises(ConfigurationError, match="rot90.*square"):
        spade(lite0, bank_augment="rotations").fit_bank(wide)
    with pytest.raises(CheckpointError, match="bank_augment 'flips' \\(configured: 'none'\\)"):
        ckpt.check_compatible({"backbone": "b", "layers": [1], "bank_augment": "flips"}, "b", [1], [])


def test_the_checkpoint_records_it_and_the_detector_follows(tmp_path):
    root = make_mvtec(tmp_path / "data", n_train=4, n_good=1, n_bad=1)
    path = fit_checkpoint(tmp_path, dm(root), bank_augment="flips", few_shot_below=0)
    detector = Detector.from_checkpoint(path)
    assert detector.model.bank_augment == "flips"
    assert (detector.model.bank_size, len(detector.model.bank)) == (4, 12)
    assert torch.load(path, map_location="cpu", weights_only=True)["lightning_ad"]["bank_augment"] == "flips"
    test = sorted((root / "widget" / "test").rglob("*.png"))
    again = Detector.from_checkpoint(path)
    assert [d.score for d in detector([str(p) for p in test])] == [d.score for d in again([str(p) for p in test])]


def test_the_fit_says_how_many_rows_scoring_uses(lite0, images):
    train, _ = images
    lines = []
    spade(lite0, bank_augment="flips", image_k=50, gallery_k=50).fit_bank(train[:2], say=lines.append)
    assert ("image_k=50 and gallery_k=50 with 2 training image(s) and 4 views of them (bank_augment): scoring uses 6 "
            "and 6 (3 leave-one-out).") in lines
