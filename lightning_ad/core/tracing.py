"""Whether code runs inside a trace for export (TorchScript or ONNX): then tensors are built with ops a graph holds."""

from __future__ import annotations

import torch

__all__ = ["exporting"]


def exporting() -> bool:
    """True inside ``torch.jit.trace`` or ``torch.onnx.export``.

    >>> exporting()
    False
    """
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
