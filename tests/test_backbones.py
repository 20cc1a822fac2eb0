"""Backbones: the offline weights really are ImageNet weights; shapes, freezing, weight sources."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import matplotlib
import pytest
import timm
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from lightning_ad.backbones import BACKBONES, EfficientNetLite0, _lite0_weights_file, build_backbone, validate_levels

MILITARY_UNIFORM = 652  # ImageNet class index


def _grace_hopper(resize: int) -> torch.Tensor:
    """Matplotlib's sample photo of Grace Hopper in uniform, resized and centre-cropped to 224."""
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = Image.open(path).convert("RGB")
    return TF.to_tensor(TF.center_crop(TF.resize(image, resize), 224)).unsqueeze(0)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    model = build_backbone("efficientnet_lite0")
    assert isinstance(model, EfficientNetLite0)
    return model


def test_lite0_classifies_a_real_photo(lite0):
    with torch.no_grad():
        probs = lite0.classify(_grace_hopper(224)).softmax(-1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs[MILITARY_UNIFORM]) > 0.25
    with torch.no_grad():  # the method's own preprocessing (256 -> 224) keeps it in the top 3
        top3 = lite0.classify(_grace_hopper(256)).topk(3).indices[0].tolist()
    assert MILITARY_UNIFORM in top3


def test_lite0_random_weights_do_not_classify():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = build_backbone("efficientnet_lite0", weights="random")
    with torch.no_grad():
        probs = model.classify(_grace_hopper(224)).softmax(-1)[0]
    assert float(probs.max()) < 0.05


def _package_state() -> dict:
    return torch.load(_lite0_weights_file(), map_location="cpu", weights_only=True)


def test_lite0_is_timm_tf_efficientnet_lite0_with_the_package_weights(lite0):
    """Logits = a plain timm tf_efficientnet_lite0 with the package's tensors (same order); taps = its features_only."""
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = dict(zip(reference.state_dict().keys(), _package_state().values()))
    reference.load_state_dict(state)
    reference.eval()
    features = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(1, 2, 3))
    features.load_state_dict({k: v for k, v in state.items() if k in features.state_dict()})
    features.eval()
    assert features.feature_info.reduction() == [4, 8, 16]
    x = torch.rand(2, 3, 224, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pyramid, pooled = lite0(x)
        assert torch.allclose(lite0.classify(x), reference((x - 0.5) / 0.5), rtol=1e-5, atol=1e-5)
        assert torch.allclose(pooled, reference.forward_features((x - 0.5) / 0.5).mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
        for ours, theirs in zip(pyramid, features((x - 0.5) / 0.5)):
            assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    # the weights really are the package's: the head is not timm's random initialisation
    assert torch.equal(lite0.net.classifier.weight, _package_state()["_fc.weight"])


def test_lite0_features_match_the_former_hand_written_network(lite0):
    """Values the hand-written EfficientNet-Lite0 (replaced by timm's) gave on the photo: the README figures rest on them."""
    with torch.no_grad():
        x = _grace_hopper(224)
        pyramid, pooled = lite0(x)
        top = lite0.classify(x).topk(3)
    assert top.indices[0].tolist() == [652, 667, 906]
    assert torch.allclose(top.values[0], torch.tensor([7.5266, 6.0944, 6.0059]), atol=2e-4)
    means = [float(p.abs().mean()) for p in pyramid] + [float(pooled.abs().mean())]
    assert means == pytest.approx([6.769978, 6.291373, 5.628454, 0.206216], rel=1e-5)
    assert pooled[0, :4].tolist() == pytest.approx([0.364495, 0.0, 0.078899, 0.103574], abs=1e-5)


def test_lite0_weight_files_in_both_layouts(lite0, tmp_path):
    """A file in timm's layout or in the package's (also checkpoints fitted before the timm rewrite) loads."""
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = lite0(x)[1]
    timm_layout = tmp_path / "lite0_timm.pth"
    torch.save(lite0.net.state_dict(), timm_layout)
    for path in (timm_layout, _lite0_weights_file()):
        model = build_backbone("efficientnet_lite0", weights=str(path))
        with torch.no_grad():
            assert torch.equal(model(x)[1], expected)
    with pytest.warns(UserWarning, match="RANDOM"):
        model = build_backbone("efficientnet_lite0", weights="random")
    model.load_state_dict(_package_state())  # the former network's own keys
    with torch.no_grad():
        assert torch.equal(model(x)[1], expected)
    other = tmp_path / "other.pth"
    torch.save({k: v for k, v in list(lite0.net.state_dict().items())[:-2]}, other)
    with pytest.raises(ValueError, match="do not fit backbone 'efficientnet_lite0'"):
        build_backbone("efficientnet_lite0", weights=str(other))


@pytest.mark.parametrize("levels", [(1, 2, 3), (2,), (1, 3)])
def test_pyramid_shapes(lite0, levels):
    model = build_backbone("efficientnet_lite0", levels)
    with torch.no_grad():
        pyramid, pooled = model(torch.rand(2, 3, 224, 160))
    strides = {1: 4, 2: 8, 3: 16}
    channels = {1: 24, 2: 40, 3: 112}
    assert [tuple(p.shape) for p in pyramid] == [(2, channels[lv], 224 // strides[lv], 160 // strides[lv]) for lv in levels]
    assert tuple(pooled.shape) == (2, 1280)


def test_frozen_and_always_eval(lite0):
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    x = torch.rand(1, 3, 64, 64)
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    lite0(x)  # BatchNorm statistics must not move
    assert all(torch.equal(before[k], v) for k, v in lite0.state_dict().items())


def test_resnet_from_local_file_and_shapes(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.nn.init.normal_(net.fc.weight)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    model = build_backbone("resnet18", (1, 2, 3), weights=str(path))
    assert torch.equal(model.net.fc.weight, net.fc.weight)
    with torch.no_grad():
        pyramid, pooled = model(torch.rand(1, 3, 64, 64))
    assert [p.shape[1] for p in pyramid] == [64, 128, 256]
    assert [p.shape[-1] for p in pyramid] == [16, 8, 4]
    assert pooled.shape == (1, 512)


def test_wide_resnet_channels():
    with pytest.warns(UserWarning, match="RANDOM"):
        model = build_backbone("wide_resnet50_2", (1, 2, 3), weights="random")
    assert model.level_channels() == [256, 512, 1024] and model.pooled_dim == 2048


def test_offline_imagenet_download_gives_clear_error(monkeypatch):
    import torchvision

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"--model.weights /path/to/resnet18-.*\.pth"):
        build_backbone("resnet18", weights="imagenet")


def test_bad_names_levels_and_files(tmp_path):
    with pytest.raises(ValueError, match="backbone='vgg'.*efficientnet_lite0.*timm/<model>"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="pyramid levels"):
        validate_levels([0, 4])
    with pytest.raises(ValueError, match="distinct"):
        validate_levels([1, 1])
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("resnet18", weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        build_backbone("resnet18", weights=str(bad))
    other = tmp_path / "other.pth"
    torch.save({"x": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="do not fit backbone 'resnet18'"):
        build_backbone("resnet18", weights=str(other))
    assert set(BACKBONES) >= {"efficientnet_lite0", "resnet18", "wide_resnet50_2"}
