"""ONNX and TorchScript exports: same numbers as the Detector, metadata inside, runnable without lightning_ad, written safely."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, make_mvtec, make_trainer
from PIL import Image

from lightning_ad import MVTecDataModule, Spade
from lightning_ad.data.transforms import Preprocess
from lightning_ad.errors import CheckpointError, ConfigurationError
from lightning_ad.inference import export as export_module
from lightning_ad.inference.detector import Detector, as_rgb_uint8
from lightning_ad.inference.export import OUTPUT_NAMES, ExportableSpade, build_exportable, export_detector, export_main
from lightning_ad.inference.geometry import PhotoPreprocess

onnx = pytest.importorskip("onnx")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
ort = pytest.importorskip("onnxruntime")

IMAGE_SIZE, CROP = 64, 48
#: A second exported input size (not the contract's): the maps come back at it, with NaN borders.
OTHER = (80, 100)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    root = make_mvtec(base / "data", n_train=6, n_good=2, n_bad=2, size=64)
    dm = MVTecDataModule(str(root), category="widget", image_size=IMAGE_SIZE, crop_size=CROP, batch_size=4, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(base / "run").fit(Spade(image_k=3, gallery_k=3, threshold_samples=4), datamodule=dm)
    ckpt = next((base / "run").rglob("*.ckpt"))
    files = sorted(str(p) for p in (root / "widget" / "test").rglob("*.png"))
    images = np.stack([as_rgb_uint8(f) for f in files])  # [4, 64, 64, 3]
    other = np.stack([np.asarray(Image.fromarray(im).resize(OTHER[::-1], Image.BICUBIC)) for im in images])
    detector = Detector.from_checkpoint(ckpt)
    out = base / "out"
    out.mkdir()
    return {"base": base, "root": root, "ckpt": ckpt, "images": images, "other": other, "detector": detector, "out": out,
            "expected": detector(list(images)), "expected_other": detector(list(other))}


@pytest.fixture(scope="module")
def exported(tiny):
    paths = {}
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        paths[fmt] = tiny["out"] / f"model{suffix}"
        export_detector(tiny["ckpt"], fmt, paths[fmt])
        paths[fmt + "_other"] = tiny["out"] / f"other{suffix}"
        export_detector(tiny["ckpt"], fmt, paths[fmt + "_other"], input_size=OTHER)
    return paths


def run_onnx(path: Path, images: np.ndarray):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def run_torchscript(path: Path, images: np.ndarray):
    model = torch.jit.load(str(path))
    with torch.no_grad():
        return [t.numpy() for t in model(torch.from_numpy(images))]


def assert_matches(outputs, expected, rtol=1e-4):
    score, normalized, decision, maps, mask = (np.asarray(o) for o in outputs)
    assert score.shape == (len(expected),) and maps.shape == (len(expected), *expected[0].size)
    assert decision.dtype == np.bool_ and mask.dtype == np.bool_
    ref_score = np.array([d.score for d in expected])
    np.testing.assert_allclose(score, ref_score, rtol=rtol)
    np.testing.assert_allclose(normalized, [d.normalized_score for d in expected], rtol=rtol)
    ref_maps = np.stack([d.anomaly_map for d in expected])
    assert np.array_equal(np.isnan(maps), np.isnan(ref_maps))
    finite = np.isfinite(ref_maps)
    scale = np.abs(ref_maps[finite]).max()
    assert np.abs(maps[finite] - ref_maps[finite]).max() <= rtol * scale
    threshold = expected[0].image_threshold
    clear = np.abs(ref_score - threshold) > 1e-4 * threshold
    assert np.array_equal(decision[clear], np.array([d.decision for d in expected])[clear])
    pixel_t = expected[0].pixel_threshold
    ref_mask = np.stack([d.mask for d in expected])
    clear_px = ~finite | (np.abs(np.nan_to_num(ref_maps) - pixel_t) > 1e-4 * pixel_t)
    assert np.array_equal(mask[clear_px], ref_mask[clear_px])
    return float(np.abs(score - ref_score).max() / ref_score.max()), float(np.abs(maps[finite] - ref_maps[finite]).max() / scale)


# ---------------------------------------------------------------------- numbers


def test_uint8_preprocessing_is_torchs_kernel_bit_for_bit():
    rng = np.random.default_rng(0)
    cases = [((900, 900), 256, 224), ((2000, 3000), 256, 224), ((37, 100), 64, 48), ((64, 64), 80, None), ((64, 50), 64, 48), ((48, 64), 64, 33)]
    for (height, width), size, crop in cases:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        contract = {"image_size": [size, size], "crop_size": [crop, crop] if crop else None}
        expected = Preprocess(size, crop).image(image)
        got = PhotoPreprocess(contract)(torch.from_numpy(image)[None])[0]
        assert torch.equal(got, expected), (height, width, size, crop)


def test_exported_preprocessing_is_torchs_kernel_bit_for_bit(tmp_path):
    """In ONNX the resize's tap sums are integer products (MatMulInteger): still torch's pixels, at any photo size."""
    contract = {"image_size": [64, 64], "crop_size": [48, 48]}
    path = tmp_path / "preprocess.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PhotoPreprocess(contract), (torch.zeros(1, 101, 90, 3, dtype=torch.uint8),), str(path),
                          dynamo=False, opset_version=export_module.OPSET, input_names=["x"],
                          dynamic_axes={"x": {0: "batch", 1: "height", 2: "width"}})
    assert "MatMulInteger" in {node.op_type for node in onnx.load(str(path)).graph.node}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for height, width in [(900, 900), (2000, 3000), (37, 100), (64, 50), (48, 64), (97, 61)]:
        photos = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        expected = torch.stack([Preprocess(64, 48).image(photo) for photo in photos])
        assert torch.equal(torch.from_numpy(session.run(None, {"x": photos})[0]), expected), (height, width)


def test_exportable_scoring_equals_the_model(tiny):
    """The export-friendly kNN path (no knn.py) gives the Detector's numbers in eager mode."""
    module, _ = build_exportable(tiny["ckpt"])
    with torch.no_grad():
        outputs = [t.numpy() for t in module(torch.from_numpy(tiny["images"]))]
    score_rel, map_rel = assert_matches(outputs, tiny["expected"], rtol=1e-5)
    assert score_rel < 1e-5 and map_rel < 1e-5


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_equals_detector(tiny, exported, fmt):
    run = run_onnx if fmt == "onnx" else run_torchscript
    assert_matches(run(exported[fmt], tiny["images"]), tiny["expected"])
    assert_matches(run(exported[fmt], tiny["images"][1:2]), tiny["expected"][1:2])  # any batch size
    # another input size: maps at that size, NaN exactly where the Detector has NaN
    outputs = run(exported[fmt + "_other"], tiny["other"])
    assert np.asarray(outputs[3]).shape == (4, *OTHER)
    assert np.isnan(np.asarray(outputs[3])).any()
    assert_matches(outputs, tiny["expected_other"])


def test_metadata_is_inside(tiny, exported):
    info = tiny["detector"].info
    model = onnx.load(str(exported["onnx"]))
    meta = json.loads({p.key: p.value for p in model.metadata_props}["lightning_ad"])
    extra = {"lightning_ad.json": ""}
    torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    ts_meta = json.loads(extra["lightning_ad.json"])
    for fmt, found in (("onnx", meta), ("torchscript", ts_meta)):
        assert found["format"] == fmt
        assert found["thresholds"] == info["thresholds"]
        assert found["contract"] == info["input"]
        assert found["input"]["size"] is None and found["input"]["dtype"] == "uint8"  # decoded photos of any size
        assert "antialias=True" in found["input"]["resample"] and found["search_radius"] == info["search_radius"]
        assert (found["backbone"], found["layers"]) == (info["backbone"], info["layers"])
        assert (found["image_k"], found["gallery_k"], found["kappa"]) == (3, 3, 1)
        assert found["lightning_ad_version"] == info["lightning_ad_version"]
        assert found["outputs"] == list(OUTPUT_NAMES)
    session = ort.InferenceSession(str(exported["onnx_other"]), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["lightning_ad"])["input"]["size"] == list(OTHER)
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)


# ---------------------------------------------------------------------- standalone runtimes


def _run_python(code: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import sys\n" + textwrap.dedent(code)], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_torchscript_runs_with_torch_alone(tiny, exported, tmp_path):
    np.save(tmp_path / "images.npy", tiny["images"])
    out = _run_python(f"""
        import sys, json, torch, numpy
        extra = {{"lightning_ad.json": ""}}
        model = torch.jit.load({str(exported["torchscript"])!r}, _extra_files=extra)
        images = torch.from_numpy(numpy.load("images.npy"))
        score, normalized, decision, maps, mask = model(images)
        numpy.save("ts_score.npy", score.numpy()); numpy.save("ts_maps.npy", maps.numpy())
        try:
            model(images.float())
        except Exception as err:
            print("DTYPE-ERROR", "uint8 [B, H, W, 3]" in str(err) and "torch.float32" in str(err))
        print("IMPORTED", any(name.startswith("lightning_ad") for name in sys.modules))
        print(json.loads(extra["lightning_ad.json"])["backbone"])
    """, tmp_path)
    assert "IMPORTED False" in out and "DTYPE-ERROR True" in out and "efficientnet_lite0" in out
    np.testing.assert_allclose(np.load(tmp_path / "ts_score.npy"), [d.score for d in tiny["expected"]], rtol=1e-4)
    assert np.array_equal(np.isnan(np.load(tmp_path / "ts_maps.npy")), np.isnan(np.stack([d.anomaly_map for d in tiny["expected"]])))


def test_onnx_runs_with_onnxruntime_and_numpy_alone(tiny, exported, tmp_path):
    np.save(tmp_path / "images.npy", tiny["images"])
    out = _run_python(f"""
        import sys, json, numpy, onnxruntime
        session = onnxruntime.InferenceSession({str(exported["onnx"])!r}, providers=["CPUExecutionProvider"])
        score, normalized, decision, maps, mask = session.run(None, {{"images": numpy.load("images.npy")}})
        numpy.save("onnx_score.npy", score)
        print("IMPORTED", sorted(n for n in ("torch", "lightning_ad") if n in sys.modules))
        print(json.loads(session.get_modelmeta().custom_metadata_map["lightning_ad"])["contract"])
    """, tmp_path)
    assert "IMPORTED []" in out and "'crop_size': [48, 48]" in out
    np.testing.assert_allclose(np.load(tmp_path / "onnx_score.npy"), [d.score for d in tiny["expected"]], rtol=1e-4)


def readme_block(language: str, must_hold: str) -> str:
    """The one fenced ``language`` block of README.md that holds ``must_hold``."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if must_hold in b]
    assert len(found) == 1, f"README.md: {len(found)} {language} blocks hold {must_hold!r}"
    return found[0]


def test_readme_metadata_snippet_runs_without_lightning_ad(tiny, exported, tmp_path):
    """The README's lines that read the metadata of exported files, as written, on exported files."""
    snippet = readme_block("python", "_extra_files")
    (tmp_path / "detector.pt").symlink_to(exported["torchscript"])
    (tmp_path / "detector.onnx").symlink_to(exported["onnx"])
    out = _run_python(snippet + "\nprint('ONNX', meta['format'], sorted(meta['thresholds']))\n"
                      "print('IMPORTED', any(name.startswith('lightning_ad') for name in sys.modules))\n", tmp_path)
    thresholds = tiny["detector"].info["thresholds"]
    first = out.splitlines()[0]
    assert str(thresholds) in first and "'crop_size': [48, 48]" in first and "'size': None" in first, out
    assert "ONNX onnx ['image', 'pixel']" in out and "IMPORTED False" in out


def test_wrong_input_size_or_dtype_is_refused(tiny, exported):
    fixed = ort.InferenceSession(str(exported["onnx_other"]), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="(?s)invalid dimensions.*Got: 64 Expected: 80"):
        fixed.run(None, {"images": tiny["images"]})
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"(?s)Unexpected input data type.*expected: \(tensor\(uint8\)\)"):
        session.run(None, {"images": tiny["images"].astype(np.float32)})
    fixed_ts = torch.jit.load(str(exported["torchscript_other"]))
    with pytest.raises(Exception, match=r"(?s)uint8 \[B, 80, 100, 3\].*Got shape"):
        fixed_ts(torch.from_numpy(tiny["images"]))
    model = torch.jit.load(str(exported["torchscript"]))
    with pytest.raises(Exception, match=r"(?s)uint8 \[B, H, W, 3\].*Got dtype torch\.float32\."):
        model(torch.from_numpy(tiny["images"]).float())
    for dtype in (torch.float64, torch.float16, torch.int64, torch.int32, torch.int8, torch.bool, torch.uint16):
        with pytest.raises(Exception, match=rf"(?s)uint8 \[B, H, W, 3\].*Got dtype {str(dtype).replace('.', '[.]')}\."):
            model(torch.from_numpy(tiny["images"]).to(dtype))
    with pytest.raises(Exception, match="Got shape"):
        model(torch.from_numpy(tiny["images"][0]))
    with pytest.raises(Exception, match="Got shape"):
        model(torch.from_numpy(tiny["images"][..., :2]))


# ---------------------------------------------------------------------- files


def test_refuses_to_overwrite_and_writes_atomically(tiny, exported, monkeypatch):
    target = exported["torchscript"]
    before = target.read_bytes()
    for fmt in ("torchscript", "onnx"):
        with pytest.raises(ConfigurationError, match=rf"{target.name}.*overwrite"):
            export_detector(tiny["ckpt"], fmt, target)
    assert target.read_bytes() == before

    def broken_save(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")  # a half-written temporary file, then a failure
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_detector(tiny["ckpt"], "torchscript", target, overwrite=True)
    assert target.read_bytes() == before  # the old file is intact ...
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".")) == []  # ... and no temp file is left
    monkeypatch.undo()
    export_detector(tiny["ckpt"], "torchscript", target, overwrite=True)  # overwrite=True replaces it
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".")) == []


def _plain_file_mode(folder: Path) -> int:
    """The permission bits of a file written by a plain open() (the process's umask)."""
    plain = folder / "plain.txt"
    plain.write_text("x")
    mode = plain.stat().st_mode & 0o777
    plain.unlink()
    return mode


def test_exported_files_get_the_permission_of_other_outputs(tiny, exported):
    """mkstemp creates 0600: the TorchScript file was unreadable by the group while every other output was not."""
    expected = _plain_file_mode(tiny["out"])
    assert expected & 0o044, "this test needs a umask that lets others read (e.g. 022)"
    modes = {fmt: exported[fmt].stat().st_mode & 0o777 for fmt in ("onnx", "torchscript", "onnx_other", "torchscript_other")}
    assert modes == dict.fromkeys(modes, expected), (oct(expected), {k: oct(v) for k, v in modes.items()})


def test_large_models_use_external_data(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(export_module, "ONNX_EXTERNAL_BYTES", 0)
    target = tmp_path / "external.onnx"
    export_detector(tiny["ckpt"], "onnx", target)
    assert (tmp_path / "external.onnx.data").stat().st_size > target.stat().st_size
    expected = _plain_file_mode(tmp_path)
    assert [p.stat().st_mode & 0o777 for p in (target, tmp_path / "external.onnx.data")] == [expected, expected]
    assert_matches(run_onnx(target, tiny["images"]), tiny["expected"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["external.onnx", "external.onnx.data"]


def test_errors_and_command_line(tiny, tmp_path, capsys):
    with pytest.raises(ConfigurationError, match="format 'tflite'"):
        export_detector(tiny["ckpt"], "tflite", tmp_path / "x")
    with pytest.raises(CheckpointError, match="does not exist"):
        export_detector(tmp_path / "missing.ckpt", "onnx", tmp_path / "x.onnx")
    with pytest.raises(ConfigurationError, match="input_size"):
        export_detector(tiny["ckpt"], "onnx", tmp_path / "x.onnx", input_size=(0, 10))
    with pytest.raises(ConfigurationError, match="does not exist"):
        export_detector(tiny["ckpt"], "onnx", tmp_path / "no" / "x.onnx")
    target = tmp_path / "cli.pt"
    assert export_main(["--ckpt_path", str(tiny["ckpt"]), "--format", "torchscript", "--output", str(target),
                        "--input_size", "40", "60"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = torch.jit.load(str(target))
    assert model(torch.zeros(2, 40, 60, 3, dtype=torch.uint8))[3].shape == (2, 40, 60)
    with pytest.raises(ConfigurationError, match="--overwrite"):
        export_main(["--ckpt_path", str(tiny["ckpt"]), "--format", "torchscript", "--output", str(target)])
    with pytest.raises(SystemExit):
        export_main(["--ckpt_path", str(tiny["ckpt"]), "--format", "tflite", "--output", str(target)])


@pytest.mark.parametrize("image_score", ["dn2", "max", "topq", "combined"])
def test_every_image_score_is_exported_as_the_model_scores(tiny, image_score):
    """The exported graph computes the checkpoint's image score, whichever it is (not always DN2)."""
    detector = Detector.from_checkpoint(tiny["ckpt"])
    model = detector.model
    model.image_score = image_score
    if image_score == "combined":
        model.dn2_scale.fill_(2.0)
        model.map_scale.fill_(3.0)
    expected = detector(list(tiny["images"]))
    module = ExportableSpade(model, detector.contract, tuple(tiny["images"].shape[1:3]),
                             expected[0].image_threshold, expected[0].pixel_threshold)
    with torch.no_grad():
        outputs = [t.numpy() for t in module(torch.from_numpy(tiny["images"]))]
    np.testing.assert_allclose(outputs[0], [d.score for d in expected], rtol=1e-5)
    if image_score != "dn2":  # the statistic of the map, not the pooled-vector distance
        served = torch.stack([detector.preprocess.image(np.ascontiguousarray(image)) for image in tiny["images"]])
        dn2 = model.nearest_images(model.extract(served).pooled)[0]
        assert not np.allclose(outputs[0], dn2.numpy(), rtol=1e-3)


@pytest.mark.parametrize("radius", [None, 0, 4, 16])
def test_onnx_runs_the_search_the_model_runs(tiny, tmp_path, radius):
    """The exported graph traces the model's own pixel search: the window of its search_radius, or every position."""
    detector = Detector.from_checkpoint(tiny["ckpt"])
    detector.model.search_radius = radius
    expected = detector(list(tiny["images"]))
    module = ExportableSpade(detector.model, detector.contract, tuple(tiny["images"].shape[1:3]),
                             expected[0].image_threshold, expected[0].pixel_threshold).eval()
    export_module._write_onnx(module, {"search_radius": radius}, tmp_path / "m.onnx")
    outputs = run_onnx(tmp_path / "m.onnx", tiny["images"])
    score_rel, map_rel = assert_matches(outputs, expected, rtol=1e-5)
    assert score_rel < 1e-5 and map_rel < 1e-5
    detector.model.search_radius = 0 if radius is None else None  # the other search gives other maps
    other = detector(list(tiny["images"]))
    assert not np.allclose(np.nan_to_num(outputs[3]), np.nan_to_num(np.stack([d.anomaly_map for d in other])), rtol=1e-3)


def test_onnx_takes_decoded_photos_of_any_size_without_torch(tiny, exported, tmp_path):
    """The default export: photos of their own size in (512 x 512, 900 x 900, 640 x 480 greyscale as RGB),
    the Detector's scores and maps out (1e-5 relative), maps of the photo's size; ONNX Runtime and numpy alone."""
    rng = np.random.default_rng(7)
    photos = {"512": np.stack([np.asarray(Image.fromarray(im).resize((512, 512), Image.BICUBIC)) for im in tiny["images"][:2]]),
              "900": np.stack([np.asarray(Image.fromarray(im).resize((900, 900), Image.BILINEAR)) for im in tiny["images"][2:]]),
              "grey": np.repeat(rng.integers(0, 256, (2, 480, 640, 1), dtype=np.uint8), 3, axis=-1)}
    for name, batch in photos.items():
        np.save(tmp_path / f"{name}.npy", batch)
    _run_python(f"""
        import numpy, onnxruntime, sys
        session = onnxruntime.InferenceSession({str(exported["onnx"])!r}, providers=["CPUExecutionProvider"])
        for name in {sorted(photos)!r}:
            outputs = session.run(None, {{"images": numpy.load(name + ".npy")}})
            for i, out in enumerate(outputs):
                numpy.save(f"{{name}}_{{i}}.npy", out)
        assert not any(n in sys.modules for n in ("torch", "lightning_ad"))
    """, tmp_path)
    for name, batch in photos.items():
        outputs = [np.load(tmp_path / f"{name}_{i}.npy") for i in range(len(OUTPUT_NAMES))]
        expected = tiny["detector"](list(batch))
        assert outputs[3].shape == batch.shape[:3]
        score_rel, map_rel = assert_matches(outputs, expected, rtol=1e-5)
        assert score_rel < 1e-5 and map_rel < 1e-5, name


def _deploy_doc_resize():
    """The numpy resize snippet of docs/deploy.md, run as written."""
    import re

    from conftest import REPO

    text = (REPO / "docs" / "deploy.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def resize_uint8" in block]
    namespace: dict = {}
    exec(code, namespace)
    return namespace["resize_uint8"]


def test_deploy_doc_resize_snippet_is_the_contracts_resampling(tiny, tmp_path):
    """The README's numpy snippet resizes bit for bit as torch (the contract), so a fixed-size export fed with
    photos resized by it gives the Detector's scores on the photos themselves."""
    import torchvision.transforms.v2.functional as TF

    resize = _deploy_doc_resize()
    rng = np.random.default_rng(3)
    for height, width, out_h, out_w in ((512, 512, 256, 256), (900, 700, 256, 256), (37, 120, 64, 80), (64, 64, 64, 64)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = TF.resize(torch.from_numpy(image).permute(2, 0, 1), [out_h, out_w], antialias=True).permute(1, 2, 0).numpy()
        assert np.array_equal(resize(image, out_h, out_w), expected), (height, width, out_h, out_w)
    size = tuple(tiny["detector"].contract["image_size"])  # the fixed size: the contract's own, resized again as identity
    export_detector(tiny["ckpt"], "onnx", tmp_path / "fixed.onnx", input_size=size)
    photos = np.stack([np.asarray(Image.fromarray(im).resize((300, 240), Image.BICUBIC)) for im in tiny["images"]])
    resized = np.stack([resize(photo, *size) for photo in photos])
    outputs = run_onnx(tmp_path / "fixed.onnx", resized)
    expected = tiny["detector"](list(photos))
    np.testing.assert_allclose(outputs[0], [d.score for d in expected], rtol=1e-5)


@pytest.mark.parametrize("aggregated, distance, weights, scales", [
    ([False, False, False], "squared", None, None),  # the paper's levels
    ([True, True, False], "euclidean", [1.0, 0.5, 2.0], [0.5, 2.0, 3.0]),  # aggregated, weighted, balanced
])
def test_onnx_combines_the_levels_as_the_model_does(tiny, tmp_path, aggregated, distance, weights, scales):
    """Local aggregation, the pixel distance and the level factors of the checkpoint are in the graph."""
    detector = Detector.from_checkpoint(tiny["ckpt"])
    model = detector.model
    model.aggregate_levels = tuple(level for level, flag in zip(model.layers, aggregated) if flag)
    model.pixel_distance, model.level_weights = distance, weights
    if scales is not None:
        model.level_balance = "mean"
        model.level_scales.copy_(torch.tensor(scales, dtype=torch.float64))
    expected = detector(list(tiny["images"]))
    module = ExportableSpade(model, detector.contract, tuple(tiny["images"].shape[1:3]),
                             expected[0].image_threshold, expected[0].pixel_threshold).eval()
    export_module._write_onnx(module, {}, tmp_path / "m.onnx")
    outputs = run_onnx(tmp_path / "m.onnx", tiny["images"])
    score_rel, map_rel = assert_matches(outputs, expected, rtol=1e-5)
    assert score_rel < 1e-5 and map_rel < 1e-5
    default = tiny["expected"]  # the checkpoint's own settings give other maps
    assert not np.allclose(np.nan_to_num(outputs[3]), np.nan_to_num(np.stack([d.anomaly_map for d in default])), rtol=1e-3)


def test_a_disk_bank_is_exported_as_it_scores(tiny, tmp_path):
    """A bank kept in files goes into the graph whole: the ONNX file of a disk-bank checkpoint equals its Detector
    (and the Detector of the same images fitted in memory)."""
    dm = MVTecDataModule(str(tiny["root"]), category="widget", image_size=IMAGE_SIZE, crop_size=CROP, batch_size=4,
                         num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path / "run").fit(Spade(image_k=3, gallery_k=3, threshold_samples=4, bank_storage="disk",
                                                 bank_dir=str(tmp_path / "bank")), datamodule=dm)
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    detector = Detector.from_checkpoint(ckpt)
    assert detector.model.bank.external
    expected = detector(list(tiny["images"]))
    np.testing.assert_allclose([d.score for d in expected], [d.score for d in tiny["expected"]], rtol=1e-6)
    export_detector(ckpt, "onnx", tmp_path / "disk.onnx")
    score_rel, map_rel = assert_matches(run_onnx(tmp_path / "disk.onnx", tiny["images"]), expected, rtol=1e-5)
    assert score_rel < 1e-5 and map_rel < 1e-5


def test_a_bank_with_views_is_exported_as_it_scores(tiny, tmp_path):
    """``bank_augment``: the views' rows go into the graph with the images' rows; the ONNX file equals its Detector."""
    dm = MVTecDataModule(str(tiny["root"]), category="widget", image_size=IMAGE_SIZE, crop_size=CROP, batch_size=4,
                         num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path / "run").fit(Spade(image_k=3, gallery_k=3, threshold_samples=4, bank_augment="flips"),
                                           datamodule=dm)
    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    detector = Detector.from_checkpoint(ckpt)
    assert len(detector.model.bank) == 3 * detector.model.bank_size
    expected = detector(list(tiny["images"]))
    export_detector(ckpt, "onnx", tmp_path / "views.onnx")
    score_rel, map_rel = assert_matches(run_onnx(tmp_path / "views.onnx", tiny["images"]), expected, rtol=1e-5)
    assert score_rel < 1e-5 and map_rel < 1e-5


def test_export_wraps_the_model_and_scores_nothing_itself():
    """The exported module is the model's own scoring: inference/export.py defines and imports no search, level map
    or image score (the photo's geometry and the decisions are all it adds)."""
    import ast

    tree = ast.parse(Path(export_module.__file__).read_text())
    defined = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    scoring_words = ("knn", "search", "level", "nearest", "image_score", "combine")
    assert not [name for name in defined if any(word in name.lower() for word in scoring_words)]
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    kernels = {"core.knn", "core.windowed", "core.levels", "core.image_scores", "core.padding"}
    assert not {name for name in imported if name.lstrip(".") in kernels}
