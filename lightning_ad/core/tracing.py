"""Whether code runs inside a trace for export (TorchScript or ONNX): then tensors are built with ops a graph holds;
and :func:`with_onnx_symbolic`, for a computation that ONNX should run as an operator of its own."""

from __future__ import annotations

from typing import Any, Type

import torch

__all__ = ["exporting", "with_onnx_symbolic"]


def exporting() -> bool:
    """True inside ``torch.jit.trace`` or ``torch.onnx.export``.

    >>> exporting()
    False
    """
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def with_onnx_symbolic(function: Type[torch.autograd.Function], *args: Any) -> Any:
    """``function``'s result on ``args``: inside ``torch.onnx.export`` as its ``symbolic`` (the ONNX operators it
    names), elsewhere by calling its ``forward`` directly (eagerly, and inside a TorchScript trace, which then records
    the ops rather than a Python call it could not save)."""
    if torch.onnx.is_in_onnx_export():
        return function.apply(*args)
    return function.forward(None, *args)
