"""Numbers that must be sane: NaN or infinite features and scores stop the run with a named error, and CPU runs are
bitwise repeatable (tiny generated data, random-weight backbones)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_trainer, random_spade, small_datamodule

from lightning_ad import Spade
from lightning_ad.core.spade import SpadeModel

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"), pytest.mark.usefixtures("one_thread")]


def _nan_hook(module, inputs, output):
    pyramid, pooled = output
    pooled = pooled.clone()
    pooled[0, 0] = float("nan")
    return pyramid, pooled


def test_nan_in_training_features_raises_before_a_bank_exists(small_set, tmp_path):
    model = random_spade()
    model.model.backbone.register_forward_hook(_nan_hook)
    with pytest.raises(FloatingPointError, match=r"training features \(pooled\) contain 3 NaN or infinite values"):
        make_trainer(tmp_path / "run").fit(model, datamodule=small_datamodule(small_set))
    assert not model.model.is_fitted


def test_nan_in_test_features_raises_before_metrics(small_fit, small_set, tmp_path, monkeypatch):
    model, _ = small_fit
    logged = []
    monkeypatch.setattr(Spade, "_log_evaluation", lambda self, stage, results: logged.append(stage))
    model.model.backbone.register_forward_hook(_nan_hook)
    with pytest.raises(FloatingPointError, match=r"test features \(pooled\) contain 1 NaN"):
        make_trainer(tmp_path / "test").test(model, datamodule=small_datamodule(small_set))
    assert logged == []


def test_infinite_score_raises(small_fit):
    model, _ = small_fit
    images = torch.rand(1, 3, 32, 32)
    features = model.model.extract(images)
    features.pyramid[0][0, 0, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="(anomaly maps|image scores) contain"):
        model.model.score_features(features, (32, 32))


def _spade_run(root: Path) -> bytes:
    dm = small_datamodule(root)
    dm.setup()
    train = torch.stack([dm.train_dataset[i]["image"] for i in range(len(dm.train_dataset))])
    test = torch.stack([dm.test_dataset[i]["image"] for i in range(len(dm.test_dataset))])
    torch.manual_seed(0)  # the random backbone weights
    model = SpadeModel(backbone="efficientnet_lite0", weights="random", image_k=2, gallery_k=3, kappa=2, sigma=2.0)
    model.fit_bank(train, batch_size=4)
    out = model(test)
    parts = [t.numpy().tobytes() for t in [train, test, model.bank.pooled, *model.bank.levels_hwc(), out.image_scores, out.anomaly_maps]]
    return b"".join(parts)


def test_cpu_results_are_bitwise_repeatable(small_set):
    first, second = _spade_run(small_set), _spade_run(small_set)
    assert len(first) > 10_000
    assert first == second


def test_cpu_fit_and_test_through_the_trainer_are_bitwise_repeatable(small_set, tmp_path):
    def run(name):
        torch.manual_seed(0)
        model = random_spade()
        tr = make_trainer(tmp_path / name)
        dm = small_datamodule(small_set)
        tr.fit(model, datamodule=dm)
        tr.test(model, datamodule=dm, verbose=False)
        r = model.test_results
        return [t.numpy().tobytes() for t in (model.model.bank.pooled, model.model.bank.level1, r.score, r.anomaly_map)]

    assert run("a") == run("b")


def test_nan_error_is_a_user_facing_error(small_set, tmp_path):
    from lightning_ad.errors import LightningADError, NumericalError

    model = random_spade()
    model.model.backbone.register_forward_hook(_nan_hook)
    with pytest.raises(NumericalError, match="NaN") as info:
        make_trainer(tmp_path / "run").fit(model, datamodule=small_datamodule(small_set))
    assert isinstance(info.value, (LightningADError, FloatingPointError))
