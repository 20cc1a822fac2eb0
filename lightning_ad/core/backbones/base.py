"""The frozen extractors' base class and the pyramid levels they tap.

A level ``l`` is a feature map at stride :data:`LEVEL_STRIDES` ``[l]`` (1, 2, 3 = stride 4, 8,
16 input pixels). :class:`FeatureExtractor` maps images ``[B, 3, H, W]`` in [0, 1] to the
pyramid ``[B, C_l, H / s_l, W / s_l]`` of the requested levels and the pooled last layer
``[B, D]``, frozen and in eval mode.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from torch import Tensor, nn

from ..folding import fold_batchnorm
from ..tracing import exporting

__all__ = ["LEVEL_STRIDES", "IMAGENET_MEAN", "IMAGENET_STD", "validate_levels", "FeatureExtractor"]

#: Pyramid level -> stride (in input pixels) of its feature map.
LEVEL_STRIDES: Dict[int, int] = {1: 4, 2: 8, 3: 16}
#: ImageNet mean and standard deviation per RGB channel, of images in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def validate_levels(levels: Sequence[int]) -> Tuple[int, ...]:
    """Check pyramid levels (a non-empty subset of 1, 2, 3) and return them sorted."""
    try:
        out = tuple(sorted({int(level) for level in levels}))
    except (TypeError, ValueError):
        raise ValueError(
            f"layers={levels!r}: pyramid levels must be integers among {sorted(LEVEL_STRIDES)} "
            "(1 = stride 4, 2 = stride 8, 3 = stride 16)."
        ) from None
    if not out or any(level not in LEVEL_STRIDES for level in out) or len(out) != len(list(levels)):
        raise ValueError(
            f"layers={list(levels)!r}: pyramid levels must be distinct integers among "
            f"{sorted(LEVEL_STRIDES)} (1 = stride 4, 2 = stride 8, 3 = stride 16), e.g. [1, 2, 3]."
        )
    return out


class FeatureExtractor(nn.Module):
    """Base class of the frozen extractors (see :mod:`lightning_ad.core.backbones`).

    Subclasses set ``name``, ``channels`` (level -> channels), ``pooled_dim`` and
    implement :meth:`normalize` and :meth:`_features`.
    """

    name: str = ""
    channels: Dict[int, int] = {}
    pooled_dim: int = 0
    #: Whether ``net`` may run with its BatchNorm folded into its convolutions (:mod:`lightning_ad.core.folding`):
    #: only for networks whose registration order is their data flow.
    folds_batchnorm: bool = False

    def __init__(self, levels: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        self.levels = validate_levels(levels)

    def freeze(self) -> None:
        """Stop gradients for every parameter and switch to eval mode."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Frozen on purpose: BatchNorm statistics belong to the ImageNet weights.
        return super().train(False)

    def normalize(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _features(self, x: Tensor, net: nn.Module) -> Tuple[Dict[int, Tensor], Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inference_net(self) -> nn.Module:
        """``net`` as it runs: with its BatchNorm folded where the class allows (a derived copy, rebuilt whenever a
        weight is replaced, moved or changed in place; never part of the state dict). Traced into a graph, the
        network as loaded (a folded copy built inside a trace gave wrong ONNX outputs)."""
        if not self.folds_batchnorm or exporting():
            return self.net  # a graph holds the network as loaded (ONNX Runtime folds it itself)
        tensors = [*self.net.parameters(), *self.net.buffers()]
        # an inference tensor (made under torch.inference_mode) has no version counter and cannot change in place
        key = tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype) for t in tensors)
        cached = self.__dict__.get("_folded")
        if cached is None or cached[0] != key:
            cached = (key, fold_batchnorm(self.net))
            self.__dict__["_folded"] = cached  # a plain attribute: not a registered submodule
        return cached[1]

    def forward(self, images: Tensor) -> Tuple[List[Tensor], Tensor]:
        """Images ``[B, 3, H, W]`` in [0, 1] -> (pyramid list in level order, pooled ``[B, D]``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        taps, pooled = self._features(self.normalize(images), self.inference_net())
        return [taps[level] for level in self.levels], pooled

    def level_channels(self) -> List[int]:
        """Channels of each requested level, in level order."""
        return [self.channels[level] for level in self.levels]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, levels={self.levels}, channels={self.level_channels()}, pooled_dim={self.pooled_dim}"
