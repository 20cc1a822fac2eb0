"""TensorFlow-style "same" padding fixed for one input size: constant pads an exported graph can fold.

timm's ``tf_*`` networks (the EfficientNet-Lite backbones among them) pad each strided
convolution by an amount computed from its input's size at run time (``Conv2dSame``). Traced,
that is a ``Pad`` whose amounts are computed in the graph, which ONNX Runtime cannot merge into
the convolution: it runs a separate pass over the activation, and its blocked (NCHWc)
convolutions convert their layout around it. The backbone of an exported detector always sees
the contract's crop, so every such pad is known at export: :func:`fix_same_padding` writes them as
constants: in an ONNX graph, the convolution's own (asymmetric) ``pads``, with no ``Pad`` before it
(eagerly and in TorchScript, a constant pad then the convolution: the same numbers).
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .tracing import with_onnx_symbolic

__all__ = ["ConstantPadConv", "fix_same_padding"]


class _PaddedConv2d(torch.autograd.Function):
    """``conv2d(pad(x, (left, right, top, bottom)))``; in ONNX one ``Conv`` with ``pads`` ``[top, left, bottom, right]``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Tuple[int, int],  # noqa: D102
                dilation: Tuple[int, int], groups: int, pads: Tuple[int, int, int, int]) -> Tensor:
        return F.conv2d(F.pad(x, pads), weight, bias, stride, 0, dilation, groups)

    @staticmethod
    def symbolic(g: Any, x: Any, weight: Any, bias: Any, stride: Tuple[int, int], dilation: Tuple[int, int],  # noqa: D102
                 groups: int, pads: Tuple[int, int, int, int]) -> Any:
        left, right, top, bottom = pads
        kernel = weight.type().sizes()[2:]
        inputs = [x, weight] + ([] if bias is None else [bias])
        return g.op("Conv", *inputs, kernel_shape_i=list(kernel), strides_i=list(stride), dilations_i=list(dilation),
                    group_i=groups, pads_i=[top, left, bottom, right])


class ConstantPadConv(nn.Conv2d):
    """A convolution after constant zero padding ``pads`` ``(left, right, top, bottom)``; its parameters keep
    the names of the convolution it replaces (:meth:`of`)."""

    pads: Tuple[int, int, int, int]

    @classmethod
    def of(cls, conv: nn.Conv2d, pads: Sequence[int]) -> "ConstantPadConv":
        """``conv``'s weights (shared, not copied) after ``pads``."""
        fixed = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=0,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
        fixed.weight, fixed.bias = conv.weight, conv.bias
        fixed.pads = tuple(int(p) for p in pads)  # type: ignore[assignment]
        return fixed.train(conv.training)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return with_onnx_symbolic(_PaddedConv2d, x, self.weight, self.bias, self.stride, self.dilation, self.groups, self.pads)


def _same_pads(size: Tuple[int, int], conv: nn.Conv2d) -> List[int]:
    """timm's ``pad_same`` amounts for an input of ``size`` ``(h, w)``: ``[left, right, top, bottom]``."""
    from timm.layers.padding import get_same_padding

    (top, bottom), (left, right) = [
        (total // 2, total - total // 2)
        for total in (get_same_padding(int(length), kernel, stride, dilation)
                      for length, kernel, stride, dilation in zip(size, conv.kernel_size, conv.stride, conv.dilation))]
    return [left, right, top, bottom]


def fix_same_padding(backbone: nn.Module, input_size: Tuple[int, int]) -> nn.Module:
    """``backbone`` itself when it has no run-time "same" padding; else a copy in which each timm ``Conv2dSame``
    is a :class:`ConstantPadConv` with the pads it computes for inputs ``[B, 3, *input_size]`` (the same function
    for that size; another size is not padded as "same" would).

    Example:
        >>> import timm
        >>> net = timm.create_model("tf_efficientnet_lite0", features_only=True, pretrained=False).eval()
        >>> fixed = fix_same_padding(net, (224, 224))
        >>> type(fixed.conv_stem).__name__, fixed.conv_stem.pads
        ('ConstantPadConv', (0, 1, 0, 1))
        >>> x = torch.rand(1, 3, 224, 224)
        >>> all(torch.equal(a, b) for a, b in zip(net(x), fixed(x)))
        True
    """
    try:
        from timm.layers import Conv2dSame
    except ImportError:  # no timm: no Conv2dSame to fix
        return backbone
    names = [name for name, module in backbone.named_modules() if isinstance(module, Conv2dSame)]
    if not names:
        return backbone
    fixed = copy.deepcopy(backbone)
    # the sizes each convolution sees, from one forward pass of a throwaway copy (hooks never reach `fixed`)
    probe = copy.deepcopy(backbone)
    sizes: Dict[str, Tuple[int, int]] = {}
    for name in names:
        probe.get_submodule(name).register_forward_pre_hook(
            lambda _module, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
    device = next((tensor.device for tensor in probe.parameters()), torch.device("cpu"))
    with torch.no_grad():
        probe(torch.zeros(1, 3, int(input_size[0]), int(input_size[1]), device=device))
    missing = sorted(set(names) - set(sizes))
    if missing:  # e.g. a network that runs a derived copy of its layers without their hooks
        raise RuntimeError(f"fix_same_padding: the convolutions {missing} did not run on an input of {tuple(input_size)}; "
                           "their padding cannot be fixed.")
    for name in names:
        conv = fixed.get_submodule(name)
        parent, _, attr = name.rpartition(".")
        setattr(fixed.get_submodule(parent) if parent else fixed, attr, ConstantPadConv.of(conv, _same_pads(sizes[name], conv)))
    return fixed
