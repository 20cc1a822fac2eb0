"""Tests of the embedded procedural demo data set (lightning_ad.data.demo_render, .demo_install, .demo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, file_bytes, read_array
from PIL import Image

import lightning_ad
from lightning_ad.data import demo_install, demo_render
from lightning_ad.data.demo_install import DEMO_CATEGORY, DemoDatasetError, make_demo_dataset
from lightning_ad.data.demo_render import DEMO_DEFECT_TYPES, DEMO_MASK_FRACTION

SMALL = dict(n_train=4, n_test_good=3, n_test_per_defect=2, image_size=96)


def _without_stamp(files: dict) -> dict:
    return {k: v for k, v in files.items() if k != ".lightning_ad_demo.json"}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo_default")
    path = make_demo_dataset(root)
    assert path == root / DEMO_CATEGORY
    return path


# ---------------------------------------------------------------- content --
def test_layout_and_counts(default_set):
    ds = default_set
    assert sorted(p.name for p in ds.iterdir() if p.is_dir()) == ["ground_truth", "test", "train"]
    assert sorted(p.name for p in (ds / "train").iterdir()) == ["good"]
    assert sorted(p.name for p in (ds / "test").iterdir()) == sorted(("good",) + DEMO_DEFECT_TYPES)
    assert sorted(p.name for p in (ds / "ground_truth").iterdir()) == sorted(DEMO_DEFECT_TYPES)
    assert len(DEMO_DEFECT_TYPES) == 3

    expected = {"train/good": 40, "test/good": 12, **{f"test/{d}": 8 for d in DEMO_DEFECT_TYPES}}
    for sub, n in expected.items():
        names = sorted(p.name for p in (ds / sub).iterdir())
        assert names == [f"{i:03d}.png" for i in range(n)], sub
        for name in names:
            with Image.open(ds / sub / name) as im:
                assert im.format == "PNG"
                assert im.mode == "RGB"
                assert im.size == (256, 256)
    for d in DEMO_DEFECT_TYPES:
        names = sorted(p.name for p in (ds / "ground_truth" / d).iterdir())
        assert names == [f"{i:03d}_mask.png" for i in range(8)]
    marker = json.loads((ds / ".complete").read_text())
    assert marker["seed"] == 0 and marker["n_train"] == 40 and marker["image_size"] == 256


def test_masks_binary_sized_and_in_range(default_set):
    ds = default_set
    lo, hi = DEMO_MASK_FRACTION
    assert 0.002 <= lo < hi <= 0.05
    crop_lo, crop_hi = 16 + 4, 240 - 4  # 224/256 centre crop, with a margin
    for d in DEMO_DEFECT_TYPES:
        for img_path in sorted((ds / "test" / d).glob("*.png")):
            mask_path = ds / "ground_truth" / d / f"{img_path.stem}_mask.png"
            assert mask_path.is_file(), mask_path
            with Image.open(mask_path) as m, Image.open(img_path) as im:
                assert m.mode == "L"
                assert m.size == im.size
                mask = np.asarray(m)
            assert set(np.unique(mask).tolist()) == {0, 255}
            frac = (mask == 255).mean()
            assert lo <= frac <= hi, (mask_path, frac)
            ys, xs = np.nonzero(mask)
            assert crop_lo <= ys.min() and ys.max() < crop_hi, mask_path
            assert crop_lo <= xs.min() and xs.max() < crop_hi, mask_path
    # good images have no mask
    assert not (ds / "ground_truth" / "good").exists()
    assert not list((ds / "ground_truth").rglob("*good*"))
    n_masks = len(list((ds / "ground_truth").rglob("*.png")))
    assert n_masks == 8 * len(DEMO_DEFECT_TYPES)


def test_normal_images_are_not_copies(default_set):
    imgs = [read_array(p).astype(np.float32) for p in sorted((default_set / "train" / "good").glob("*.png"))]
    imgs += [read_array(p).astype(np.float32) for p in sorted((default_set / "test" / "good").glob("*.png"))]
    assert len({im.tobytes() for im in imgs}) == len(imgs)
    # more than sensor noise: shifts, rotations, lighting, texture
    for a, b in zip(imgs, imgs[1:]):
        assert np.abs(a - b).mean() > 3.0
    # but all show the same kind of part: the centre pixel (the bore) is dark,
    # the ring around it is bright metal
    for im in imgs:
        assert im[128, 128].mean() < 60
        assert im[128, 128 + 60].mean() > 100 or im[128, 128 - 60].mean() > 100


def test_defects_change_pixels_under_mask(default_set):
    ds = default_set
    goods = np.stack([read_array(p).astype(np.float32) for p in sorted((ds / "train" / "good").glob("*.png"))])
    ref = np.median(goods, axis=0)
    good_diff = np.abs(goods[:8] - ref).mean(axis=3)  # normal variation
    for d in DEMO_DEFECT_TYPES:
        insides, normals = [], []
        for img_path in sorted((ds / "test" / d).glob("*.png")):
            img = read_array(img_path).astype(np.float32)
            mask = read_array(ds / "ground_truth" / d / f"{img_path.stem}_mask.png") > 0
            diff = np.abs(img - ref).mean(axis=2)
            inside, outside = diff[mask].mean(), diff[~mask].mean()
            normal_inside = good_diff[:, mask].mean()  # good images, same place
            assert inside > 2.0 * outside, (img_path, inside, outside)
            assert inside > 1.25 * normal_inside, (img_path, inside, normal_inside)
            assert inside > 20, (img_path, inside)
            insides.append(inside)
            normals.append(normal_inside)
        assert np.mean(insides) > 2.5 * np.mean(normals), (d, insides, normals)


@pytest.mark.parametrize("kind", DEMO_DEFECT_TYPES)
def test_mask_marks_exactly_the_altered_pixels(kind):
    for i in range(4):
        out, mask, clean = demo_render._render(demo_render._rng_for(0, "test", kind, i), 128, kind)
        changed = np.abs(out.astype(np.int16) - clean).max(axis=2)
        assert mask.shape == out.shape[:2] == clean.shape[:2]
        assert mask.any()
        assert (changed[~mask] == 0).all()
        assert (changed[mask] >= 8).all()


def test_image_does_not_depend_on_counts(tmp_path):
    a = make_demo_dataset(tmp_path / "a", **SMALL)
    b = make_demo_dataset(tmp_path / "b", **{**SMALL, "n_train": 6, "n_test_per_defect": 3})
    for rel in ["train/good/003.png", "test/good/002.png", "test/hole/001.png",
                "ground_truth/hole/001_mask.png"]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# ----------------------------------------------------------- determinism --
def test_deterministic_byte_identical(tmp_path):
    a = make_demo_dataset(tmp_path / "one", **SMALL)
    b = make_demo_dataset(tmp_path / "two", **SMALL)
    fa, fb = file_bytes(a), file_bytes(b)
    pngs = [k for k in fa if k.endswith(".png")]
    assert len(pngs) == 4 + 3 + 2 * 3 + 2 * 3
    assert {k: fa[k] for k in pngs} == {k: fb[k] for k in pngs}
    assert fa[".complete"] == fb[".complete"]

    c = make_demo_dataset(tmp_path / "three", **{**SMALL, "seed": 1})
    fc = file_bytes(c)
    assert all(fc[k] != fa[k] for k in pngs if "_mask" not in k)


# ------------------------------------------------------------ idempotence --
def test_second_call_does_not_rewrite(tmp_path, monkeypatch):
    path = make_demo_dataset(tmp_path, **SMALL)

    def no_render(*args, **kwargs):
        raise AssertionError("an existing complete data set was regenerated")

    monkeypatch.setattr(demo_install, "render_sample", no_render)
    before = file_bytes(path)
    old = 1_000_000_000  # 2001: any rewrite would bump the times
    entries = [path, *path.rglob("*")]
    for p in entries:
        os.utime(p, ns=(old, old))
    again = make_demo_dataset(tmp_path, **SMALL)
    assert again == path
    assert all(p.stat().st_mtime_ns == old for p in entries)
    assert file_bytes(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_CATEGORY]  # no leftovers


def test_empty_target_folder_is_filled(tmp_path):
    (tmp_path / DEMO_CATEGORY).mkdir()
    path = make_demo_dataset(tmp_path, **SMALL)
    assert (path / ".complete").is_file()
    assert len(list((path / "train" / "good").glob("*.png"))) == SMALL["n_train"]


# ------------------------------------------------------------ interrupted --
def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    reference = file_bytes(make_demo_dataset(tmp_path / "ref", **SMALL))
    root = tmp_path / "root"
    calls = {"n": 0}
    real_save = demo_install._save_png

    def failing_save(img, path):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated interruption")
        real_save(img, path)

    monkeypatch.setattr(demo_install, "_save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        make_demo_dataset(root, **SMALL)
    assert calls["n"] == 7
    assert not (root / DEMO_CATEGORY).exists()
    assert list(root.iterdir()) == []  # the temporary folder was removed

    monkeypatch.setattr(demo_install, "_save_png", real_save)
    path = make_demo_dataset(root, **SMALL)
    assert _without_stamp(file_bytes(path)) == _without_stamp(reference)


def test_killed_generation_leftovers_are_cleaned(tmp_path):
    """A process killed mid-way (SIGKILL) leaves only a hidden temporary folder."""
    root = tmp_path / "root"
    script = textwrap.dedent(
        f"""
        import os, signal
        from lightning_ad.data import demo_install
        real, n = demo_install._save_png, [0]
        def save(img, path):
            n[0] += 1
            if n[0] == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            real(img, path)
        demo_install._save_png = save
        demo_install.make_demo_dataset({str(root)!r}, **{SMALL!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode != 0
    leftovers = [p for p in root.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(f".{DEMO_CATEGORY}.partial-")
    assert not (root / DEMO_CATEGORY).exists()
    # a foreign folder that merely looks similar must survive
    foreign = root / f".{DEMO_CATEGORY}.partial-1-user"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")

    path = make_demo_dataset(root, **SMALL)
    assert (path / ".complete").is_file()
    assert not leftovers[0].exists()
    assert (foreign / "keep.txt").read_text() == "mine"


def test_incomplete_target_raises_and_overwrite_replaces(tmp_path):
    path = make_demo_dataset(tmp_path, **SMALL)
    reference = file_bytes(path)
    (path / ".complete").unlink()  # e.g. copied without the marker
    (path / "train" / "good" / "000.png").unlink()
    with pytest.raises(DemoDatasetError) as err:
        make_demo_dataset(tmp_path, **SMALL)
    assert str(path) in str(err.value)
    assert "incomplete" in str(err.value)
    assert not (path / ".complete").exists()  # untouched

    again = make_demo_dataset(tmp_path, **SMALL, overwrite=True)
    assert again == path
    assert _without_stamp(file_bytes(path)) == _without_stamp(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_CATEGORY]


def test_foreign_folder_is_never_deleted(tmp_path):
    target = tmp_path / DEMO_CATEGORY
    (target / "train" / "good").mkdir(parents=True)
    precious = target / "train" / "good" / "my_photo.png"
    precious.write_bytes(b"not generated")
    for overwrite in (False, True):
        with pytest.raises(DemoDatasetError) as err:
            make_demo_dataset(tmp_path, **SMALL, overwrite=overwrite)
        assert str(target) in str(err.value)
    assert precious.read_bytes() == b"not generated"
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_CATEGORY]

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DemoDatasetError):
        make_demo_dataset(tmp_path, "a_file", **SMALL, overwrite=True)
    assert (tmp_path / "a_file").read_text() == "x"


def test_other_arguments_raise_clear_error(tmp_path):
    path = make_demo_dataset(tmp_path, **SMALL)
    before = file_bytes(path)
    with pytest.raises(DemoDatasetError) as err:
        make_demo_dataset(tmp_path, **{**SMALL, "seed": 7})
    msg = str(err.value)
    assert str(path) in msg and "seed" in msg and "overwrite=True" in msg
    with pytest.raises(DemoDatasetError):
        make_demo_dataset(tmp_path, **{**SMALL, "n_train": 5})
    assert file_bytes(path) == before

    make_demo_dataset(tmp_path, **{**SMALL, "seed": 7}, overwrite=True)
    assert json.loads((path / ".complete").read_text())["seed"] == 7
    assert file_bytes(path)["train/good/000.png"] != before["train/good/000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_CATEGORY]


def test_stamp_records_this_host(tmp_path):
    path = make_demo_dataset(tmp_path, **SMALL)
    stamp = json.loads((path / ".lightning_ad_demo.json").read_text())
    assert stamp["generator"] == "lightning_ad.data.demo"
    assert stamp["host"] == socket.gethostname()


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"category": "a/b"}, ValueError),
        ({"category": ".hidden"}, ValueError),
        ({"n_train": 0}, ValueError),
        ({"image_size": 32}, ValueError),
        ({"seed": -1}, ValueError),
        ({"n_test_good": 1.5}, TypeError),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, exc):
    with pytest.raises(exc):
        make_demo_dataset(tmp_path, **{**SMALL, **kwargs})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- datamodule --
def test_datamodule_serves_the_demo(default_set):
    assert lightning_ad.DemoDataModule is lightning_ad.data.DemoDataModule
    assert lightning_ad.data.make_demo_dataset is make_demo_dataset
    before = file_bytes(default_set)
    dm = lightning_ad.DemoDataModule(root=str(default_set.parent), seed=0, image_size=64, crop_size=64, num_workers=0)
    dm.setup()
    assert file_bytes(default_set) == before  # the complete set made with the same arguments is reused
    assert len(dm.train_dataset) == 40
    labels = [s.label for s in dm.test_dataset.samples]
    assert labels.count(0) == 12 and labels.count(1) == 8 * len(DEMO_DEFECT_TYPES)
    assert dm.test_dataset.has_masks
