"""Fixed "same" padding (lightning_ad.core.padding): the same network at the crop's size, and no Pad in a graph."""

from __future__ import annotations

import warnings

import pytest
import torch

from lightning_ad.core.backbones import build_backbone
from lightning_ad.core.padding import ConstantPadConv, fix_same_padding

timm = pytest.importorskip("timm")


def lite0():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return build_backbone("efficientnet_lite0", (1, 2, 3), weights="random").eval()


def kinds(net):
    names = [type(m).__name__ for m in net.modules()]
    return names.count("Conv2dSame"), names.count("ConstantPadConv")


def test_fixed_padding_is_the_same_network_at_its_size():
    net = lite0()
    fixed = fix_same_padding(net, (224, 224))
    assert kinds(net) == (5, 0) and kinds(fixed) == (0, 5)  # the original is left as it was
    assert list(fixed.state_dict()) == list(net.state_dict())  # the same parameter names
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (pyramid, pooled), (fixed_pyramid, fixed_pooled) = net(x), fixed(x)
    assert torch.equal(pooled, fixed_pooled) and all(torch.equal(a, b) for a, b in zip(pyramid, fixed_pyramid))
    # the pads are those of 224: an odd size pads differently ("same" pads 1 at the end of 224, 0 of 225)
    assert fixed.net.conv_stem.pads == (0, 1, 0, 1)
    assert fix_same_padding(net, (225, 225)).net.conv_stem.pads == (1, 1, 1, 1)


def test_a_network_without_run_time_padding_is_returned_as_it_is():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_backbone("resnet18", (1, 2, 3), weights="random")
    assert fix_same_padding(net, (224, 224)) is net


def test_exported_convolutions_carry_their_padding(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    fixed = fix_same_padding(lite0(), (96, 128))
    path = tmp_path / "net.onnx"
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(fixed, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
        expected = fixed(x)[0]
    graph = onnx.load(str(path)).graph
    assert "Pad" not in {node.op_type for node in graph.node}
    pads = sorted(tuple(a.ints) for node in graph.node if node.op_type == "Conv" for a in node.attribute if a.name == "pads")
    assert (0, 0, 1, 1) in pads  # [top, left, bottom, right]: TensorFlow's "same" pads the end of an even side
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    for level, (a, b) in enumerate(zip(got, expected)):
        error = (torch.from_numpy(a) - b).abs().max() / b.abs().max()
        assert error < 1e-5, (level, float(error))  # float32 rounding (measured: 1.3e-6 at most)
    assert isinstance(fixed.net.conv_stem, ConstantPadConv)
