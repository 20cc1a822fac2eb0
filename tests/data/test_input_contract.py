"""The input contract as one frozen value: its dict form (what a checkpoint stores) both ways, and its geometry."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lightning_ad.data.contract import InputContract
from lightning_ad.data.transforms import Preprocess
from lightning_ad.errors import CheckpointError
from lightning_ad.inference import checkpoint as ckpt
from lightning_ad.inference.geometry import PhotoPreprocess, map_resize_matrices, restore_map


def test_the_dict_form_goes_both_ways():
    stored = {"image_size": [256, 320], "crop_size": [224, 288]}
    contract = InputContract.from_dict(stored)
    assert contract == InputContract((256, 320), (224, 288)) == InputContract.of(contract)
    assert contract.image_size == (256, 320) and contract.crop_size == (224, 288) and contract.crop == (224, 288)
    assert contract.as_dict() == stored and json.loads(json.dumps(contract.as_dict())) == stored
    uncropped = InputContract.from_dict({"image_size": [64, 64], "crop_size": None})
    assert uncropped.crop_size is None and uncropped.crop == (64, 64)
    assert uncropped.as_dict() == {"image_size": [64, 64], "crop_size": None}
    assert InputContract.from_dict({"image_size": (64, 64)}) == uncropped  # no crop_size: no crop
    with pytest.raises(dataclasses.FrozenInstanceError):
        contract.image_size = (1, 1)  # type: ignore[misc]


def test_preprocess_and_the_datamodule_rule():
    contract = InputContract((64, 80), (48, 48))
    assert repr(contract.preprocess()) == repr(Preprocess([64, 80], [48, 48]))
    assert InputContract((64, 64)).preprocess().output_size == (64, 64)
    # a datamodule's Preprocess: a crop the size of the resized image is no crop (as fit records it)
    assert InputContract.from_preprocess(Preprocess(64, 48)) == InputContract((64, 64), (48, 48))
    assert InputContract.from_preprocess(Preprocess(64, None)) == InputContract((64, 64), None)

    class Data:
        preprocess = Preprocess([64, 80], 48)

    assert ckpt.input_contract(Data()) == {"image_size": [64, 80], "crop_size": [48, 48]}
    assert ckpt.input_contract(object()) is None
    assert ckpt.contract_mismatch(InputContract((64, 80), (48, 48)), ckpt.input_contract(Data())) is None
    assert "crop_size=None" in ckpt.contract_mismatch({"image_size": [64, 80], "crop_size": [48, 48]},
                                                      {"image_size": [64, 80], "crop_size": None})


def test_a_checkpoint_section_is_read_with_or_without_its_contract():
    meta = {"input": {"image_size": [64, 64], "crop_size": [48, 48]}, "image_size": [48, 48]}
    assert ckpt.fitted_contract(meta) == InputContract((64, 64), (48, 48))
    assert ckpt.saved_contract(meta) == {"image_size": [64, 64], "crop_size": [48, 48]}
    older = {"image_size": [48, 48]}  # before the contract was recorded: the bank's size, no crop
    assert ckpt.fitted_contract(older) == InputContract((48, 48), None)
    assert ckpt.saved_contract(older) == {"image_size": [48, 48], "crop_size": None}
    with pytest.raises(CheckpointError, match="records no input size"):
        ckpt.fitted_contract({})


def test_geometry_takes_either_form():
    contract = InputContract((64, 64), (48, 48))
    for a, b in zip(map_resize_matrices((100, 70), contract), map_resize_matrices((100, 70), contract.as_dict())):
        assert torch.equal(a, b)
    small = torch.rand(2, 48, 48)
    torch.testing.assert_close(restore_map(small, (30, 50), contract), restore_map(small, (30, 50), contract.as_dict()),
                               rtol=0, atol=0, equal_nan=True)
    photo = torch.randint(0, 256, (1, 90, 70, 3), dtype=torch.uint8)
    assert torch.equal(PhotoPreprocess(contract)(photo), PhotoPreprocess(contract.as_dict())(photo))


def test_map_rule_without_crop_is_plain_bilinear():
    contract = {"image_size": [48, 40], "crop_size": None}
    rows, cols, valid = map_resize_matrices((100, 70), contract)
    small = torch.rand(48, 40, dtype=torch.float64)
    expected = torch.nn.functional.interpolate(small[None, None], size=(100, 70), mode="bilinear", align_corners=False)[0, 0]
    assert valid.all()
    assert torch.allclose(rows @ small @ cols.T, expected, atol=1e-12)
