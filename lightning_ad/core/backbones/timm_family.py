"""Any timm model with features at stride 4, 8 and 16, and where its weights come from.

``timm/<model>`` selects it (:data:`TIMM_PREFIX`); its weights are timm's pretrained ones
(from huggingface_hub's or torch.hub's cache, or downloaded) or a state-dict file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .base import IMAGENET_MEAN, IMAGENET_STD, LEVEL_STRIDES, FeatureExtractor
from .weights import read_state_dict

__all__ = ["TIMM_PREFIX", "TimmBackbone", "import_timm", "timm_level_indices", "timm_layout"]

#: Prefix of the backbone names that select any timm model (``timm/resnet18``).
TIMM_PREFIX = "timm/"


def import_timm():
    """The ``timm`` module (a RuntimeError with the pip command if it is missing)."""
    try:
        import timm
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the backbones need the package 'timm': pip install 'timm>=1.0.3'") from err
    return timm


def timm_level_indices(model: str, reductions: Sequence[int]) -> Tuple[Dict[int, int], int]:
    """Strides of a timm model's features -> ({level: index of the last one at the level's stride}, last index)."""
    reductions = [int(r) for r in reductions]
    missing = [stride for stride in LEVEL_STRIDES.values() if stride not in reductions]
    if missing:
        raise ValueError(
            f"backbone '{TIMM_PREFIX}{model}': its features have strides {reductions}, none at {missing}; "
            "levels 1, 2, 3 need features at stride 4, 8 and 16. Choose a convolutional or hierarchical "
            "model, e.g. timm/resnet18, timm/convnext_tiny, timm/efficientnet_b0."
        )
    indices = {
        level: max(i for i, r in enumerate(reductions) if r == stride) for level, stride in LEVEL_STRIDES.items()
    }
    return indices, len(reductions) - 1


def _timm_features(model: str, **kwargs) -> nn.Module:
    """``timm.create_model(model, features_only=True, **kwargs)`` with random weights; ValueError naming the model."""
    timm = import_timm()
    if not model or not timm.is_model(model):
        raise ValueError(
            f"backbone '{TIMM_PREFIX}{model}': timm {timm.__version__} has no model {model!r} "
            "(timm.list_models() lists them)."
        )
    try:
        return timm.create_model(model, features_only=True, pretrained=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - timm raises many types for "no features"
        raise ValueError(
            f"backbone '{TIMM_PREFIX}{model}': timm cannot build it as a feature extractor "
            f"(features_only=True): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None


def timm_layout(model: str) -> Tuple[Dict[int, int], int, Dict[int, int], int]:
    """(level -> feature index, index of the last features, level -> channels, channels of the last features)."""
    try:
        with torch.device("meta"):  # only feature_info is read: no memory, no initialisation time
            info = _timm_features(model).feature_info
    except ValueError:  # some models cannot be built on the meta device; a real error repeats on the CPU
        info = _timm_features(model).feature_info
    indices, last = timm_level_indices(model, [info.reduction(i) for i in range(len(info))])
    return indices, last, {level: int(info.channels(i)) for level, i in indices.items()}, int(info.channels(last))


def _timm_weights_cache(model: str) -> Tuple[str, Optional[str]]:
    """(timm's cache folder for the pretrained weights of ``model``, the cached file or None if absent)."""
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(model)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import constants, try_to_load_from_cache
        except ImportError:  # pragma: no cover - timm then downloads from the url into torch.hub's cache
            hub_id = None
    if not hub_id:  # torch.hub reads its own cache without network
        return str(Path(torch.hub.get_dir()) / "checkpoints"), None
    repo, _, revision = hub_id.partition("@")
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    for filename in filenames:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return constants.HF_HUB_CACHE, found
    return constants.HF_HUB_CACHE, None


class TimmBackbone(FeatureExtractor):
    """Any timm model with features at stride 4, 8 and 16 (``features_only``).

    Levels 1/2/3 = its last feature map at stride 4/8/16; pooled = global average of
    its last feature map (final stage). Input mean/std from its pretrained config.
    ``weights``: ``"random"``, ``"imagenet"`` (timm's pretrained weights, from its cache
    or downloaded) or the path of a state dict of ``timm.create_model(model)``.
    """

    def __init__(
        self, model: str, levels: Sequence[int] = (1, 2, 3), weights: Optional[Union[str, os.PathLike]] = "random"
    ) -> None:
        super().__init__(levels)
        self.name = TIMM_PREFIX + model
        indices, last, self.channels, self.pooled_dim = timm_layout(model)
        out_indices = tuple(sorted({*indices.values(), last}))
        if weights is None or str(weights) == "random":
            self.net = _timm_features(model, out_indices=out_indices)
        elif str(weights) == "imagenet":
            self.net = self._pretrained(model, out_indices, None)
        else:
            self.net = self._pretrained(model, out_indices, Path(os.fspath(weights)).expanduser())
        slot = {index: n for n, index in enumerate(out_indices)}
        self._positions = {level: slot[index] for level, index in indices.items()}
        self._last = slot[last]
        self._nhwc = getattr(self.net, "output_fmt", "NCHW") == "NHWC"
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean") or IMAGENET_MEAN, cfg.get("std") or IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _pretrained(self, model: str, out_indices: Tuple[int, ...], path: Optional[Path]) -> nn.Module:
        timm = import_timm()
        if path is not None:  # check the file against the whole model first (timm loads features leniently)
            full = timm.create_model(model, pretrained=False)
            classifiers = full.pretrained_cfg.get("classifier") or ()
            classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
            heads = {f"{c}.{p}" for c in classifiers for p in ("weight", "bias")}  # any number of classes will do
            state = read_state_dict(path, self.name, reader=timm.models.load_state_dict)  # timm's reader for weight files
            state = {k: v for k, v in state.items() if k not in heads}
            try:
                result = full.load_state_dict(state, strict=False)
                wrong = [*result.unexpected_keys, *(k for k in result.missing_keys if k not in heads)]
                if wrong:
                    raise RuntimeError(f"{len(wrong)} keys missing or unexpected, e.g. {', '.join(wrong[:5])}")
            except RuntimeError as err:
                detail = " ".join(line.strip() for line in str(err).splitlines()[0:3])[:600]
                raise ValueError(f"weights from {path} do not fit backbone {self.name!r}: {detail}") from None
            del full, state
            overlay, cache = {"file": str(path)}, None
        else:
            cache, cached = _timm_weights_cache(model)
            overlay = {"file": cached} if cached else {}
        try:
            return timm.create_model(
                model, features_only=True, out_indices=out_indices, pretrained=True,
                pretrained_cfg_overlay=overlay or None,
            )
        except Exception as err:  # noqa: BLE001 - downloads fail in many ways
            if path is not None:
                raise ValueError(
                    f"weights from {path} do not fit backbone {self.name!r}: {type(err).__name__}: {err}"
                ) from None
            raise RuntimeError(
                f"could not get timm's pretrained weights of {model!r} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). timm looks for them in its cache folder "
                f"{cache} and downloads them when they are not there, which needs network. Without network, "
                f"fill that cache on a machine with network (python -c \"import timm; timm.create_model("
                f"'{model}', pretrained=True)\") and copy it over, or pass a weights file "
                f"(--model.weights PATH: a state dict of timm.create_model('{model}'), .pth/.pt/.safetensors), "
                "or --model.weights random (tests and timing only)."
            ) from None

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _features(self, x: Tensor, net: nn.Module) -> Tuple[Dict[int, Tensor], Tensor]:
        outputs = list(net(x))
        if self._nhwc:
            outputs = [o.permute(0, 3, 1, 2) for o in outputs]
        taps = {level: outputs[slot] for level, slot in self._positions.items()}
        return taps, outputs[self._last].mean(dim=(2, 3))
