"""Shared fixtures and data builders: the real data folder (one setting), tiny generated data sets.

Builders write small image files in the layouts the datamodules read:

* :func:`make_mvtec`: an MVTec AD category (``train/good``, ``test/<defect>``,
  ``ground_truth/<defect>/<stem>_mask.png``);
* :func:`make_image_folder` / :func:`make_magnetic_tile`: plain folders of ``<stem>.jpg``
  with, optionally, the mask ``<stem>.png`` beside each (the Magnetic Tile layout).

Then what several test modules run: fits (:func:`fit_checkpoint`, the session's CLI fit :func:`fitted`), the
command line (:func:`run`, :func:`cli` on several processes) and a server process (:class:`ServerProcess`).
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from PIL import Image

from lightning_ad import FolderDataModule, MVTecDataModule, Spade
from lightning_ad.serve.client import free_port, stop_server, wait_until_healthy

REPO = Path(__file__).resolve().parents[1]
#: The one setting that locates the real data (MVTec AD bottle, Magnetic Tile).
DATA_ENV = "LIGHTNING_AD_DATA"
#: Side of the images of :func:`noise_image` and :func:`square_mask` by default, pixels.
SIZE = 40


def real_data_root() -> Path:
    return Path(os.environ.get(DATA_ENV, REPO.parent / "shared" / "data")).expanduser()


def require_real(*parts: str) -> Path:
    """The real-data folder ``parts`` below the data root, or skip with the reason."""
    path = real_data_root().joinpath(*parts)
    if not path.is_dir():
        pytest.skip(
            f"real data not found at {path}: set {DATA_ENV} to the folder holding mvtec_ad/ and "
            "magnetic_tile/ (default ../shared/data from the repository root)"
        )
    return path


def pytest_configure(config):
    """A worker of ``pytest -n N`` (pytest-xdist, the default: pyproject's ``addopts``) runs on one thread, and so do
    the processes its tests start: two workers with two threads each on two cores wait on each other's threads."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)

# ---------------------------------------------------------------------- pictures


def write_image(path: Path, image: Union[np.ndarray, Image.Image], mode: Optional[str] = None, **save_kwargs) -> Path:
    """Save an array (``[H, W]`` or ``[H, W, C]``, read as PIL ``mode`` when given) or a PIL
    image to ``path`` (format from the extension; ``save_kwargs`` go to ``Image.save``),
    creating the folders. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image, mode) if mode else Image.fromarray(image)
    image.save(path, **save_kwargs)
    return path


def encoded(image: Union[np.ndarray, Image.Image], fmt: str) -> bytes:
    """The bytes of ``image`` saved in format ``fmt`` (``"PNG"``, ``"JPEG"`` ...)."""
    buffer = io.BytesIO()
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(buffer, fmt)
    return buffer.getvalue()


def noise_image(seed: int = 0, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """Uniform random RGB pixels, uint8 ``[h, w, 3]``, a function of ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def textured(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth random texture, RGB uint8 [size, size, 3]."""
    base = rng.normal(128, 20, (size // 8, size // 8, 3))
    image = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def square_mask(h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """uint8 ``[h, w]``: 255 on rows ``h//4 .. h//2 - 1`` x columns ``w//4 .. w//2 - 1``, else 0."""
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 255
    return mask


def file_bytes(folder: Path) -> Dict[str, bytes]:
    """Relative path (``/``-separated) -> bytes of every file below ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def read_array(path: Path) -> np.ndarray:
    """The pixels of an image file as stored (no conversion)."""
    with Image.open(path) as im:
        return np.asarray(im)


# ---------------------------------------------------------------------- layouts


def make_mvtec(
    root: Path,
    category: str = "widget",
    n_train: int = 9,
    n_good: int = 3,
    n_bad: int = 4,
    size: int = 64,
    seed: int = 0,
    defect: str = "defect",
) -> Path:
    """A tiny MVTec-layout category below ``root``: textured images, bright square defects
    (14 x 14 pixels) in ``test/<defect>`` with exact masks. Returns ``root``."""
    rng = np.random.default_rng(seed)
    base = root / category
    for i in range(n_train):
        write_image(base / "train" / "good" / f"{i:03d}.png", textured(rng, size))
    for i in range(n_good):
        write_image(base / "test" / "good" / f"{i:03d}.png", textured(rng, size))
    for i in range(n_bad):
        image = textured(rng, size)
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(8, size - 24, 2)
        image[y : y + 14, x : x + 14] = [250, 30, 30]
        mask[y : y + 14, x : x + 14] = 255
        write_image(base / "test" / defect / f"{i:03d}.png", image)
        write_image(base / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


def make_image_folder(
    folder: Path, count: int, *, seed: int = 0, masks: Optional[str] = None, defect: bool = False, size: int = SIZE
) -> List[Path]:
    """``count`` images ``folder/NNN.jpg`` (:func:`noise_image` of ``seed + i``); with
    ``masks`` (a ``mask_pattern`` such as ``"{stem}.png"``) each gets its mask beside it:
    all zero, or with ``defect`` the :func:`square_mask` with a soft edge (one row of 100
    above it). Returns the image paths."""
    images = []
    for i in range(count):
        path = write_image(folder / f"{i:03d}.jpg", noise_image(seed + i, size, size))
        images.append(path)
        if masks is not None:
            mask = np.zeros((size, size), np.uint8)
            if defect:
                mask = square_mask(size, size)
                mask[size // 4 - 1, :] = 100  # a soft edge
            write_image(folder / masks.format(stem=path.stem), mask)
    return images


def make_magnetic_tile(root: Path, n_free: int = 10, defects: Optional[Mapping[str, int]] = None, size: int = SIZE) -> Path:
    """The Magnetic Tile layout below ``root``: ``MT_<class>/Imgs/NNN.jpg`` with the mask
    ``NNN.png`` beside each; ``MT_Free`` (``n_free`` images, empty masks) and the defect
    classes ``defects`` (name -> count; default Blowhole 3, Crack 2). Returns ``root``."""
    defects = {"MT_Blowhole": 3, "MT_Crack": 2} if defects is None else defects
    make_image_folder(root / "MT_Free" / "Imgs", n_free, seed=0, masks="{stem}.png", size=size)
    for k, (name, count) in enumerate(defects.items()):
        make_image_folder(root / name / "Imgs", count, seed=1000 * (k + 1), masks="{stem}.png", defect=True, size=size)
    return root


@pytest.fixture
def tiny_mvtec(tmp_path: Path) -> Path:
    """Root folder of a tiny MVTec-layout data set with category ``widget``."""
    return make_mvtec(tmp_path / "mvtec")


def make_trainer(root: Path, **kwargs) -> pl.Trainer:
    """A quiet one-pass CPU Trainer writing below ``root`` (keyword arguments override the defaults)."""
    options = dict(default_root_dir=str(root), max_epochs=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0)
    options.update(kwargs)
    return pl.Trainer(**options)


# ---------------------------------------------------------------------- fits


def dm(root, **kwargs):
    """The datamodule of a :func:`make_mvtec` set (``widget``, 64 x 64, no crop, batches of 4)."""
    return MVTecDataModule(str(root), "widget", image_size=64, crop_size=64, batch_size=4, num_workers=0, **kwargs)


def only_checkpoint(root: Path) -> Path:
    """The one checkpoint below ``root``."""
    found = sorted(root.rglob("*.ckpt"))
    assert len(found) == 1, found
    return found[0]


def fit_checkpoint(base: Path, datamodule: pl.LightningDataModule, **spade) -> Path:
    """Fit ``Spade`` in a plain Trainer and return the checkpoint it wrote."""
    options = dict(image_k=3, gallery_k=3, threshold_samples=4)
    options.update(spade)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(base / "run").fit(Spade(**options), datamodule=datamodule)
    return only_checkpoint(base / "run")


# ---------------------------------------------------------------------- the command line


def run_process(args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m lightning_ad ARGS`` in ``cwd``, a process of its own, its output captured."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("LIGHTNING_AD_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lightning_ad", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def run(args, cwd: Path) -> subprocess.CompletedProcess:
    """``lightning-ad ARGS`` in ``cwd``, run in this process, its console output captured as :func:`run_process`
    would capture it: what it prints, Lightning's log lines and the warnings a fresh process shows (the warning
    filters of a new interpreter plus the package's own). The exit status is the command's (2: a user-facing error;
    1: an exception, its traceback in ``stderr``). Half the time of a process of its own on 2 cores: the imports
    are done."""
    import contextlib
    import io
    import logging
    import traceback
    import warnings

    from lightning_ad.command import main
    from lightning_ad.lightning.quiet import quiet_lightning

    out, err = io.StringIO(), io.StringIO()
    handlers = list({id(handler): handler for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
                     if isinstance(logger, logging.Logger) for handler in logger.handlers
                     if type(handler) is logging.StreamHandler}.values())  # the console's, not pytest's or files'
    streams = [handler.setStream(err) for handler in handlers]
    before, argv, code = os.getcwd(), sys.argv, 0
    debug = os.environ.pop("LIGHTNING_AD_DEBUG", None)
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.resetwarnings()  # a new interpreter's filters (this changes the filters: warnings show again)
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            quiet_lightning()
            # printed as a process prints them (pytest records the warnings of a test instead)
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            sys.argv = ["lightning-ad", *map(str, args)]
            try:
                main()  # the command line from sys.argv, as the console command reads it
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
            except Exception:  # noqa: BLE001 - what a process would print before exiting with 1
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(before)
        sys.argv = argv
        for handler, stream in zip(handlers, streams):
            handler.setStream(stream)
        if debug is not None:
            os.environ["LIGHTNING_AD_DEBUG"] = debug
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def logged_metrics(save_dir: Path) -> dict:
    """The test metrics logged below ``save_dir`` (every ``metrics.csv``, later rows winning)."""
    rows = []
    for path in sorted(save_dir.rglob("metrics.csv")):
        with open(path) as handle:
            rows += list(csv.DictReader(handle))
    merged = {}
    for row in rows:
        merged.update({k: float(v) for k, v in row.items() if v not in ("", None) and k.startswith("test/")})
    return merged


def fit_then_test(config: str, overrides: list, workdir: Path) -> dict:
    """``lightning-ad fit --test_after_fit true`` with the shipped ``config`` and ``overrides``: the test metrics it logs.

    Thresholds are learned from 16 training images' leave-one-out scores instead of the config's every image, and
    no test report is drawn (the metrics are logged without it): AUROC and PRO depend on neither, and the run takes a
    fraction of its time. The command runs in this process (:func:`run`): the same command line without a second
    interpreter's imports."""
    logs = workdir / "logs"
    fit = run(["fit", "--config", str(REPO / "configs" / config), *overrides, "--test_after_fit", "true",
               "--model.threshold_samples", "16", "--model.image_threshold_samples", "16", "--test_report.enabled", "false",
               "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(logs),
               "--trainer.enable_progress_bar", "false"], workdir)
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoints = sorted(logs.rglob("*.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    return logged_metrics(logs)


def write_config(path: Path, data_root: Path) -> Path:
    """A CLI config of a :func:`make_mvtec` set at ``data_root`` (Lite0, K = 3, 64 x 64), written to ``path``."""
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"backbone": "efficientnet_lite0", "image_k": 3, "gallery_k": 3, "threshold_samples": 5},
        "data": {
            "class_path": "lightning_ad.MVTecDataModule",
            "init_args": {"root": str(data_root), "category": "widget", "image_size": 64, "crop_size": 64,
                          "batch_size": 2, "num_workers": 0},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def cli(args, cwd: Path, processes: int, timeout: float = 600, launch: str = "lightning") -> subprocess.CompletedProcess:
    """``lightning-ad ARGS`` on ``processes`` CPU devices with DDP; it must succeed, and its output is captured.

    One process: :func:`run`, in this process. Several: ``python -m lightning_ad``, its other ranks started by
    Lightning (``launch="lightning"``: what ``--trainer.devices N`` does for a user), or every rank started here at
    once with the variables a cluster launcher (``torchrun``, SLURM) sets (``launch="cluster"``: the ranks import in
    parallel; their outputs are joined, rank 0's first)."""
    cwd.mkdir(parents=True, exist_ok=True)
    if processes == 1:
        result = run([*args, "--trainer.devices", "1"], cwd)
        assert result.returncode == 0, result.stderr[-4000:]
        return result
    command = [sys.executable, "-m", "lightning_ad", *args, "--trainer.devices", str(processes), "--trainer.strategy", "ddp"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if launch == "lightning":
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stderr[-4000:]
        return result
    port = free_port()
    procs = [subprocess.Popen(command, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(env, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(processes),
                                       NODE_RANK="0", RANK=str(rank), LOCAL_RANK=str(rank)))
             for rank in range(processes)]
    outputs = [proc.communicate(timeout=timeout) for proc in procs]
    failed = [f"rank {rank}, exit {proc.returncode}:\n{err[-3000:]}" for rank, (proc, (_, err)) in enumerate(zip(procs, outputs))
              if proc.returncode]
    assert not failed, "\n".join(failed)
    return subprocess.CompletedProcess(command, 0, "".join(out for out, _ in outputs), "".join(err for _, err in outputs))


@pytest.fixture(scope="session")
def lite0():
    """The offline ImageNet Lite0 backbone (levels 1, 2, 3), built once and shared by the models of tests that
    only run it (``SpadeModel(backbone_module=lite0)``)."""
    from lightning_ad.core.backbones import build_backbone

    return build_backbone("efficientnet_lite0", (1, 2, 3), "imagenet")


@pytest.fixture(scope="session")
def fitted(tmp_path_factory):
    """A CLI fit of a tiny MVTec set (DN2 image score): ``(folder, config, checkpoint)``; tests only read it."""
    base = tmp_path_factory.mktemp("cli")
    data = make_mvtec(base / "data")
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "default_root_dir": str(base / "runs")},
        "model": {"image_k": 3, "gallery_k": 3, "threshold_samples": 2, "image_score": "dn2"},
        "data": {"class_path": "lightning_ad.MVTecDataModule",
                 "init_args": {"root": str(data), "category": "widget", "image_size": 64, "crop_size": 64,
                               "batch_size": 4, "num_workers": 0}},
    }))
    result = run(["fit", "--config", str(config)], base)
    assert result.returncode == 0, result.stderr[-3000:]
    (ckpt,) = sorted((base / "runs").rglob("*.ckpt"))
    assert f"fitted checkpoint: {ckpt}" in result.stdout + result.stderr
    return base, config, ckpt


# ---------------------------------------------------------------------- a server process


def bottle_dir() -> Path:
    return real_data_root() / "mvtec_ad" / "bottle"


def fit_serving_checkpoint(base: Path) -> Tuple[Path, List[Path]]:
    """A fitted checkpoint and the test images to post: a few bottle images (symlinked, never
    copied) at 128 -> crop 112 when the data is there, else a tiny generated set (64 -> 48)."""
    bottle = bottle_dir()
    if (bottle / "train" / "good").is_dir():
        folders = {name: base / name for name in ("train", "good", "bad")}
        for folder in folders.values():
            folder.mkdir(parents=True)
        for path in sorted((bottle / "train" / "good").glob("*.png"))[:12]:
            (folders["train"] / path.name).symlink_to(path.resolve())
        tests = sorted((bottle / "test" / "good").glob("*.png"))[:3]
        bad = [sorted((bottle / "test" / group).glob("*.png"))[i] for group in ("broken_large", "contamination") for i in (0, 1)]
        for path in tests:
            (folders["good"] / path.name).symlink_to(path.resolve())
        for i, path in enumerate(bad):
            (folders["bad"] / f"{i}_{path.name}").symlink_to(path.resolve())
        dm = FolderDataModule(normal_dir=str(folders["train"]), abnormal_dirs=[str(folders["bad"])],
                              normal_test_dir=str(folders["good"]), mask_pattern=None, image_size=128, crop_size=112,
                              batch_size=12, num_workers=0)
        return fit_checkpoint(base, dm, image_k=3, gallery_k=3), tests + bad
    root = make_mvtec(base / "data", n_train=6, n_good=2, n_bad=3, size=64)
    dm = MVTecDataModule(str(root), category="widget", image_size=64, crop_size=48, batch_size=4, num_workers=0)
    return fit_checkpoint(base, dm), sorted((root / "widget" / "test").rglob("*.png"))


#: The request limits of the :func:`served` server.
MAX_BYTES = 1_500_000
MAX_MEGAPIXELS = 1.0


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A server process of a :func:`fit_serving_checkpoint` checkpoint (batches of at most 4, MAX_BYTES,
    MAX_MEGAPIXELS), shared by the server's tests and the browser's: ``{"server", "url", "ckpt", "images"}``.
    It must leave its working folder and its temporary folder empty."""
    base = tmp_path_factory.mktemp("serve")
    ckpt, images = fit_serving_checkpoint(base / "fit")
    server = ServerProcess(ckpt, base / "server", "--max_batch_size", "4", "--batch_timeout", "0.05",
                           "--max_bytes", str(MAX_BYTES), "--max_megapixels", str(MAX_MEGAPIXELS))
    try:
        yield {"server": server, "url": server.url, "ckpt": ckpt, "images": images}
    finally:
        server.stop()
    assert not any(server.run_dir.iterdir()), f"the server wrote into its working folder: {list(server.run_dir.iterdir())}"
    assert not any(server.tmpdir.iterdir()), f"the server left temporary files: {list(server.tmpdir.iterdir())}"


class ServerProcess:
    """``python -m lightning_ad.serve`` in its own session, working folder and TMPDIR."""

    def __init__(self, ckpt: Path, workdir: Path, *extra: str, startup_s: float = 150.0,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.workdir = workdir
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        env = dict(os.environ if env is None else env, TMPDIR=str(self.tmpdir),
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "lightning_ad.serve", "--ckpt_path", str(ckpt), "--port", str(self.port), *extra]
        self.run_dir = workdir / "cwd"
        self.run_dir.mkdir()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(cmd, cwd=self.run_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        if not wait_until_healthy(self.url, lambda: self.process.poll() is None, startup_s):
            exited = self.process.poll() is not None
            self.stop()
            problem = f"exited with {self.process.returncode}" if exited else f"was not ready after {startup_s} s"
            raise RuntimeError(f"the server {problem}:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        stop_server(self.process)


# ---------------------------------------------------------------------- small runs with random weights (failure rules)

#: Side of the images of :func:`make_small_set`, pixels (served at 32 x 32).
SMALL = 36


@pytest.fixture
def one_thread():
    """One intra-op thread: on a loaded 2-core machine OpenMP threads that wait on each other make a
    32x32 forward pass take seconds instead of milliseconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def noise_tensors(n_train: int, n_test: int, size: int = 64, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(train [n_train, 3, size, size], test [n_test, ...])``: seeded uniform noise in [0.35, 0.65], the second test
    image with a white 14 x 14 square from ``(size - 14) // 2 - 5`` (20 at 64 pixels): tensors for a ``SpadeModel``."""
    gen = torch.Generator().manual_seed(seed)
    train = torch.rand(n_train, 3, size, size, generator=gen) * 0.3 + 0.35
    test = torch.rand(n_test, 3, size, size, generator=gen) * 0.3 + 0.35
    at = (size - 14) // 2 - 5
    test[1, :, at:at + 14, at:at + 14] = 1.0
    return train, test


def make_small_set(root: Path, n_train: int = 6) -> Path:
    """An MVTec-layout category ``widget`` of random 36 x 36 images: ``n_train`` good, 2 good and 2 ``crack`` test
    images (a white 12 x 12 square, with its mask). Returns ``root``."""
    rng = np.random.default_rng(0)
    base = root / "widget"
    for i in range(n_train):
        write_image(base / "train" / "good" / f"{i:03d}.png", rng.integers(60, 200, (SMALL, SMALL, 3), dtype=np.uint8))
    for i in range(2):
        write_image(base / "test" / "good" / f"{i:03d}.png", rng.integers(60, 200, (SMALL, SMALL, 3), dtype=np.uint8))
        image = rng.integers(60, 200, (SMALL, SMALL, 3), dtype=np.uint8)
        image[8:20, 8:20] = 255
        mask = np.zeros((SMALL, SMALL), np.uint8)
        mask[8:20, 8:20] = 255
        write_image(base / "test" / "crack" / f"{i:03d}.png", image)
        write_image(base / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture
def small_set(tmp_path) -> Path:
    """A fresh :func:`make_small_set` (tests may break its files)."""
    return make_small_set(tmp_path / "data")


def small_datamodule(root: Path, **kwargs) -> MVTecDataModule:
    """The datamodule of a :func:`make_small_set` (32 x 32, batches of 2)."""
    args = dict(root=str(root), category="widget", image_size=32, crop_size=32, batch_size=2, num_workers=0)
    args.update(kwargs)
    return MVTecDataModule(**args)


def random_spade(**kwargs) -> Spade:
    """``Spade`` with random backbone weights, K = 2, sigma 1 (keyword arguments override)."""
    args = dict(weights="random", image_k=2, gallery_k=2, sigma=1.0)
    args.update(kwargs)
    return Spade(**args)


def count_backbone_calls(model: Spade) -> list:
    """The batch sizes the backbone of ``model`` is called with from now on (a list that fills)."""
    calls: list = []
    model.model.backbone.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    return calls


@pytest.fixture
def small_fit(small_set, tmp_path):
    """A :func:`random_spade` fitted on :func:`small_set` and the checkpoint its fit wrote."""
    torch.manual_seed(0)
    model = random_spade()
    trainer = make_trainer(tmp_path / "run")
    trainer.fit(model, datamodule=small_datamodule(small_set))
    path = trainer.checkpoint_callback.best_model_path
    assert path and os.path.isfile(path)
    return model, path


class CrashMidFit(pl.Callback):
    """Raises ``RuntimeError("killed halfway")`` after the second training batch (the bank is not complete)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("killed halfway")
