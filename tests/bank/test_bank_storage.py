"""Disk, sharded and host-placed banks score exactly as the in-memory replicated bank; bank files are checked."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, make_mvtec, noise_tensors, require_real, write_config
from PIL import Image

from lightning_ad.core.spade import SpadeModel
from lightning_ad.errors import CheckpointError

SETTINGS = [("disk", "replicated", "auto"), ("memory", "sharded", "auto"), ("disk", "sharded", "auto"),
            ("memory", "replicated", "host")]


@pytest.fixture(scope="module")
def images():
    return noise_tensors(10, 3)


@pytest.fixture
def model(lite0):
    """``model(folder, storage, sharding, device, **settings)``: a K = 3 model whose bank files go to ``folder``; all
    of them run the one session backbone (building a backbone is most of a small fit)."""
    def build(tmp_path: Path, storage="memory", sharding="replicated", device="auto", **kwargs) -> SpadeModel:
        return SpadeModel(image_k=3, gallery_k=3, bank_storage=storage, bank_sharding=sharding, bank_device=device,
                          bank_dir=str(tmp_path), backbone_module=lite0, **kwargs)
    return build


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kappa", [1, 3])
@pytest.mark.parametrize("radius", [None, 8, "auto"])
def test_every_storage_scores_bitwise_as_memory(model, images, tmp_path, dtype, kappa, radius):
    train, test = images
    reference = model(tmp_path / "ref", bank_dtype=dtype, kappa=kappa, search_radius=radius)
    reference.fit_bank(train, batch_size=4)
    expected = reference(test)
    loo = reference.score_bank(torch.arange(4)).anomaly_maps
    for storage, sharding, device in SETTINGS:
        spade = model(tmp_path / f"{storage}{sharding}{device}", storage, sharding, device, bank_dtype=dtype, kappa=kappa,
                      search_radius=radius)
        spade.fit_bank(train, batch_size=4)
        got = spade(test)
        assert spade.search_radius == reference.search_radius  # "auto": every storage decides as memory does
        assert torch.equal(got.image_scores, expected.image_scores) and torch.equal(got.anomaly_maps, expected.anomaly_maps)
        assert torch.equal(spade.score_bank(torch.arange(4)).anomaly_maps, loo)
        # a fresh model from the state dict (files memory-mapped again) gives the same
        fresh = model(tmp_path / "unused", storage, sharding, device, bank_dtype=dtype, kappa=kappa, search_radius=radius)
        fresh.load_state_dict(spade.state_dict())
        assert torch.equal(fresh(test).anomaly_maps, expected.anomaly_maps)


def test_disk_bank_state_dict_names_files_instead_of_holding_levels(model, images, tmp_path):
    spade = model(tmp_path / "bank", "disk")
    spade.fit_bank(images[0], batch_size=4)
    state = spade.state_dict()
    assert "bank.level1" not in state and state["bank.pooled"].shape == (10, 1280)
    assert spade.bank.external and len(list((tmp_path / "bank").rglob("level*.rank0.bin"))) == 3


def test_changed_or_missing_bank_files_are_refused(model, images, tmp_path):
    spade = model(tmp_path / "bank", "disk")
    spade.fit_bank(images[0], batch_size=4)
    state = spade.state_dict()
    (level2,) = (tmp_path / "bank").rglob("level2.rank0.bin")
    data = bytearray(level2.read_bytes())
    data[100] ^= 0xFF
    level2.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checkpoint's SHA-256"):
        model(tmp_path / "x", "disk").load_state_dict(state)
    level2.write_bytes(bytes(data[:-4]))
    with pytest.raises(CheckpointError, match="bytes, the checkpoint expects"):
        model(tmp_path / "x", "disk").load_state_dict(state)
    level2.unlink()
    with pytest.raises(CheckpointError, match="bank file 'level2.rank0.bin' is missing"):
        model(tmp_path / "x", "disk").load_state_dict(state)


def test_moved_bank_files_are_found_through_bank_dir(model, images, tmp_path):
    train, test = images
    spade = model(tmp_path / "bank", "disk")
    spade.fit_bank(train, batch_size=4)
    state, expected = spade.state_dict(), spade(test).anomaly_maps
    moved = (tmp_path / "bank").rename(tmp_path / "moved")
    fresh = model(moved, "disk")
    fresh.load_state_dict(state)
    assert torch.equal(fresh(test).anomaly_maps, expected)


# ---------------------------------------------------------------------- several processes (CLI)


def fit_predict(config: Path, base: Path, name: str, processes: int, predict_processes: int, extra=()) -> dict:
    run = base / name
    run.mkdir(parents=True)
    cli(["fit", "--config", str(config), "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(run),
         *extra], run, processes, timeout=900, launch="cluster")
    (ckpt,) = sorted(run.rglob("*.ckpt"))
    return predict(config, ckpt, run / "pred", predict_processes)


def predict(config: Path, ckpt: Path, out: Path, processes: int) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    init = yaml.safe_load(config.read_text())["data"]["init_args"]
    data = Path(init["root"]) / init["category"] / "test"
    cli(["predict", "--config", str(config), "--ckpt_path", str(ckpt), "--data.predict_dir", str(data),
         "--prediction_writer.output_dir", str(out)], out.parent, processes, timeout=900, launch="cluster")
    with open(out / "predictions.csv") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: r["relpath"])
    maps = {r["relpath"]: np.asarray(Image.open(out / r["map_file"])) for r in rows}
    return {"score": np.array([float(r["image_score"]) for r in rows]), "maps": maps}


def assert_same(a: dict, b: dict, rel: float) -> None:
    np.testing.assert_allclose(a["score"], b["score"], rtol=rel, atol=0)
    assert a["maps"].keys() == b["maps"].keys()
    for key in a["maps"]:
        np.testing.assert_allclose(a["maps"][key], b["maps"][key], rtol=rel, atol=rel * float(np.abs(a["maps"][key]).max()))


def test_sharded_and_disk_banks_on_two_processes_equal_the_replicated_bank(tmp_path):
    """7 training images on 2 processes (one padding repeat); 7 images to predict (uneven per process). The reference
    is the replicated in-memory bank of one process (two processes give its bank: test_distributed)."""
    data = make_mvtec(tmp_path / "data", n_train=7, n_good=2, n_bad=5)
    config = write_config(tmp_path / "config.yaml", data)
    replicated = fit_predict(config, tmp_path, "replicated", 1, 1)
    sharded = fit_predict(config, tmp_path, "sharded", 2, 2, ["--model.bank_sharding", "sharded",
                                                              "--model.bank_storage", "disk"])
    assert_same(replicated, sharded, 1e-5)
    # the sharded fit's checkpoint in 1 process (on 2 processes after a fit on 3: the sharded worker's test)
    (ckpt,) = sorted((tmp_path / "sharded").rglob("*.ckpt"))
    assert_same(replicated, predict(config, ckpt, tmp_path / "one" / "pred", 1), 1e-5)


def test_disk_bank_on_bottle_through_the_cli(tmp_path):
    """Real images through the command line: 24 bottle training images and 8 test images (linked, never copied)
    score bitwise the same from a float16 disk bank as from memory."""
    bottle = require_real("mvtec_ad", "bottle")
    root = tmp_path / "mvtec"
    picks = {"train/good": sorted((bottle / "train" / "good").glob("*.png"))[:24],
             "test/good": sorted((bottle / "test" / "good").glob("*.png"))[:4],
             "test/broken_large": sorted((bottle / "test" / "broken_large").glob("*.png"))[:4]}
    picks["ground_truth/broken_large"] = [bottle / "ground_truth" / "broken_large" / f"{p.stem}_mask.png"
                                          for p in picks["test/broken_large"]]
    for folder, paths in picks.items():
        (root / "bottle" / folder).mkdir(parents=True)
        for path in paths:
            (root / "bottle" / folder / path.name).symlink_to(path.resolve())
    config = tmp_path / "config.yaml"
    import yaml

    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"image_k": 5, "gallery_k": 5, "threshold_samples": 4, "image_threshold_samples": 4, "bank_dtype": "float16"},
        "data": {"class_path": "lightning_ad.MVTecDataModule",
                 "init_args": {"root": str(root), "category": "bottle", "image_size": 128, "crop_size": 112,
                               "batch_size": 16, "num_workers": 0}},
    }))
    memory = fit_predict(config, tmp_path, "memory", 1, 1)
    disk = fit_predict(config, tmp_path, "disk", 1, 1, ["--model.bank_storage", "disk"])
    np.testing.assert_array_equal(memory["score"], disk["score"])
    for key in memory["maps"]:
        np.testing.assert_array_equal(memory["maps"][key], disk["maps"][key])


def test_a_bank_that_does_not_fit_is_refused_naming_every_difference():
    from lightning_ad.bank import MANIFEST_FORMAT, MemoryBank, encode_manifest

    def refusal(state) -> str:
        with pytest.raises(CheckpointError) as err:
            MemoryBank((1, 2), (24, 40), 1280, owner="lite").load_state_dict(state)
        return str(err.value)

    head = "the memory bank in this state dict does not fit the configured model (backbone='lite', layers=[1, 2]): "
    state = {"index": torch.arange(2), "image_size": torch.tensor([64, 64]), "manifest": torch.zeros(0, dtype=torch.uint8),
             "pooled": torch.zeros(2, 100), "level1": torch.zeros(3, 16, 16, 24), "level3": torch.zeros(2, 4, 4, 7)}
    assert refusal(state) == head + ("levels [1, 3] (configured: [1, 2]); pooled size (100,) (lite: 1280); bank tensors disagree "
                                     "on the number of images [2, 3]. Configure the backbone and layers the bank was fitted "
                                     "with, or fit again.")
    files = {"format": MANIFEST_FORMAT, "levels": [1, 3], "dtype": "float16", "shapes": [[16, 16, 24], [4, 4, 7]], "shards": []}
    state = {**state, "manifest": encode_manifest(files), "pooled": torch.zeros(2, 1280)}
    assert refusal(state) == head + ("levels [1, 3] (configured: [1, 2]); channels [24, 7] (lite: [24, 40]); bank_dtype "
                                     "'float16' (configured: 'float32'). Configure the backbone, layers and bank_dtype the "
                                     "bank was fitted with, or fit again.")
