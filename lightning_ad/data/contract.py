"""The input contract: how a photo becomes the model's input (resize to ``image_size``, then centre crop to ``crop_size``).

A checkpoint stores it as ``{"image_size": [H, W], "crop_size": [h, w] or None}`` (its ``input`` entry);
:class:`InputContract` is that dict as one frozen value, read and written by :meth:`InputContract.from_dict`
and :meth:`InputContract.as_dict`, so checkpoints keep the dict form both ways. Everything that serves the
contract (the :class:`~lightning_ad.data.transforms.Preprocess` of the datamodules and the
:class:`~lightning_ad.inference.detector.Detector`, the geometry of :mod:`lightning_ad.inference.geometry`)
takes it from here.

>>> contract = InputContract.from_dict({"image_size": [256, 256], "crop_size": [224, 224]})
>>> contract.crop, contract.as_dict()
((224, 224), {'image_size': [256, 256], 'crop_size': [224, 224]})
>>> InputContract.of({"image_size": [64, 96], "crop_size": None}).crop
(64, 96)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .transforms import Preprocess

__all__ = ["InputContract", "ContractLike"]


@dataclass(frozen=True)
class InputContract:
    """Resize to ``image_size`` ``(H, W)``, then centre crop to ``crop_size`` ``(h, w)`` (None: no crop).

    Sizes are stored as tuples of ints whatever sequence they are given as; an empty ``crop_size`` is None.
    """

    image_size: Tuple[int, int]
    crop_size: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        crop = self.crop_size
        object.__setattr__(self, "crop_size", tuple(int(v) for v in crop) if crop else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InputContract":
        """The contract of its dict form ``{"image_size": [H, W], "crop_size": [h, w] or None}`` (a missing
        ``crop_size``: no crop)."""
        return cls(data["image_size"], data.get("crop_size"))

    @classmethod
    def of(cls, contract: "ContractLike") -> "InputContract":
        """``contract`` itself, or the contract of its dict form."""
        return contract if isinstance(contract, InputContract) else cls.from_dict(contract)

    @classmethod
    def from_preprocess(cls, preprocess: Preprocess) -> "InputContract":
        """The contract a :class:`~lightning_ad.data.transforms.Preprocess` serves (a crop the size of the resized
        image is no crop)."""
        image_size, crop_size = tuple(preprocess.image_size), tuple(preprocess.crop_size)
        return cls(image_size, None if crop_size == image_size else crop_size)

    def as_dict(self) -> Dict[str, Any]:
        """The dict form a checkpoint stores (lists of ints; ``crop_size`` None when there is no crop)."""
        return {"image_size": list(self.image_size), "crop_size": list(self.crop_size) if self.crop_size else None}

    @property
    def crop(self) -> Tuple[int, int]:
        """``(h, w)`` of what the model sees: the crop, or the resized image when there is none."""
        return self.crop_size or self.image_size  # type: ignore[return-value]

    def preprocess(self) -> Preprocess:
        """The :class:`~lightning_ad.data.transforms.Preprocess` that applies this contract to ``[H, W, 3]`` uint8 arrays."""
        return Preprocess(list(self.image_size), list(self.crop_size) if self.crop_size else None)


#: An :class:`InputContract` or its dict form (what a checkpoint stores).
ContractLike = Union[InputContract, Mapping[str, Any]]

