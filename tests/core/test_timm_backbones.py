"""``timm/<model>`` backbones: levels from feature_info, weight sources, clear errors, a CLI run end to end."""

from __future__ import annotations

import csv
import math

import pytest
import timm
import torch
from conftest import REPO, run

from lightning_ad.core.backbones import TimmBackbone, backbone_channels, build_backbone

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _random(name: str, levels=(1, 2, 3)) -> TimmBackbone:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = build_backbone(name, levels, weights="random")
    assert isinstance(model, TimmBackbone)
    return model


@pytest.mark.parametrize(
    "model, channels, pooled",
    [("resnet18", {1: 64, 2: 128, 3: 256}, 512), ("mobilenetv3_small_050", {1: 8, 2: 16, 3: 24}, 288)],
)
@pytest.mark.parametrize("levels", [(1, 2, 3), (2,), (1, 3)])
def test_random_weights_shapes_and_channels(model, channels, pooled, levels):
    name = f"timm/{model}"
    backbone = _random(name, levels)
    assert backbone.name == name and backbone.pooled_dim == pooled
    assert backbone.level_channels() == [channels[level] for level in levels]
    assert backbone_channels(name, levels) == (backbone.level_channels(), backbone.pooled_dim)
    with torch.no_grad():
        pyramid, vector = backbone(torch.rand(2, 3, 96, 64))
    strides = {1: 4, 2: 8, 3: 16}
    assert [tuple(p.shape) for p in pyramid] == [(2, channels[lv], 96 // strides[lv], 64 // strides[lv]) for lv in levels]
    assert tuple(vector.shape) == (2, pooled)
    # frozen and always in eval mode
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not any(m.training for m in backbone.modules())


def test_levels_are_the_last_features_at_each_stride_and_pooled_is_the_last_stage(tmp_path):
    """resnet18: layer1/2/3 at stride 4/8/16, pooled = mean of layer4; ImageNet mean/std input."""
    reference = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("timm/resnet18", weights=str(path))
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        pyramid, pooled = backbone(x)
        _, intermediates = reference.forward_intermediates((x - IMAGENET_MEAN) / IMAGENET_STD, indices=[1, 2, 3, 4])
    for ours, theirs in zip(pyramid, intermediates[:3]):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert torch.allclose(pooled, intermediates[3].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_local_file(tmp_path, suffix):
    """A saved random model loads and gives its own features (mobilenetv3: levels = blocks 0, 1, 3; pooled = block 5)."""
    reference = timm.create_model("mobilenetv3_small_050", pretrained=False).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(path))
    else:
        torch.save(reference.state_dict(), path)
    loaded = build_backbone("timm/mobilenetv3_small_050", weights=str(path))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        pyramid, pooled = loaded(x)
        _, intermediates = reference.forward_intermediates((x - IMAGENET_MEAN) / IMAGENET_STD, indices=[1, 2, 3, 4])
    for ours, theirs in zip(pyramid, intermediates[:3]):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert torch.allclose(pooled, intermediates[3].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # not a fresh random initialisation
        assert not torch.allclose(_random("timm/mobilenetv3_small_050")(x)[1], pooled)


def test_bad_weight_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("timm/resnet18", weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth.*could not be read"):
        build_backbone("timm/resnet18", weights=str(bad))
    other = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), other)
    with pytest.raises(ValueError, match="do not fit backbone 'timm/resnet18'"):
        build_backbone("timm/resnet18", weights=str(other))
    # a fine-tuned model with another number of classes: the features fit
    finetuned = timm.create_model("resnet18", pretrained=False, num_classes=2)
    path = tmp_path / "finetuned.pth"
    torch.save(finetuned.state_dict(), path)
    assert torch.equal(build_backbone("timm/resnet18", weights=str(path)).net.conv1.weight, finetuned.conv1.weight)


@pytest.mark.parametrize(
    "name, match",
    [
        ("timm/vit_tiny_patch16_224", r"timm/vit_tiny_patch16_224.*stride 4, 8 and 16"),
        ("timm/levit_128s", r"timm/levit_128s.*none at \[4, 8\]"),
        ("timm/no_such_model_xyz", r"timm/no_such_model_xyz.*has no model"),
        ("timm/", r"backbone='timm/' is not known"),
    ],
)
def test_models_without_stride_4_8_16_features_or_unknown_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        backbone_channels(name)
    with pytest.raises(ValueError, match=match):
        build_backbone(name, weights="random")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub in offline mode with an empty cache folder (no network is tried)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_imagenet_without_network_gives_a_clear_error(offline_hub):
    with pytest.raises(RuntimeError) as info:
        build_backbone("timm/resnet18", weights="imagenet")
    message = str(info.value)
    assert "'resnet18'" in message and str(offline_hub) in message
    assert "--model.weights PATH" in message and "--model.weights random" in message


def test_imagenet_weights_come_from_the_local_cache_offline(offline_hub):
    """A cached file in huggingface_hub's layout is found without any network."""
    from safetensors.torch import save_file

    cfg = timm.models.get_pretrained_cfg("resnet18")
    reference = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.normal_(reference.conv1.weight)
    revision = "0" * 40
    repo = offline_hub / ("models--" + cfg.hf_hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file(reference.state_dict(), str(repo / "snapshots" / revision / "model.safetensors"))
    backbone = build_backbone("timm/resnet18", weights="imagenet")
    assert torch.equal(backbone.net.conv1.weight, reference.conv1.weight)


def test_cli_fit_and_test_with_a_timm_backbone(tmp_path):
    """The demo config with timm/resnet18 (random weights, 64 px): fit, test, metrics, checkpoint."""
    out = tmp_path / "out"
    args = [
        "fit", "--config", str(REPO / "configs" / "spade_lite0_demo.yaml"),
        "--model.backbone", "timm/resnet18", "--model.weights", "random",
        "--model.image_k", "3", "--model.gallery_k", "3",
        "--data.init_args.root", str(tmp_path / "demo"),
        "--data.init_args.image_size", "64", "--data.init_args.crop_size", "64",
        "--data.init_args.num_workers", "0",
        "--trainer.default_root_dir", str(out), "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "CSVLogger", "--trainer.logger.save_dir", str(out),
    ]
    result = run(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RANDOM weights" in result.stderr
    (metrics_file,) = sorted(out.rglob("metrics.csv"))
    with open(metrics_file) as handle:
        rows = list(csv.DictReader(handle))
    metrics = {k: float(v) for row in rows for k, v in row.items() if k.startswith("test/") and v}
    for name in ("test/image_auroc", "test/pixel_auroc", "test/pro"):
        assert name in metrics, sorted(metrics)
        assert math.isfinite(metrics[name]) and 0.0 <= metrics[name] <= 1.0, (name, metrics[name])
    (ckpt,) = sorted(out.rglob("*.ckpt"))
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["backbone"] == "timm/resnet18"
    assert checkpoint["lightning_ad"]["backbone"] == "timm/resnet18"
