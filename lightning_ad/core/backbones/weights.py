"""State-dict files: read one (PyTorch or safetensors), and load it into a network.

Errors name the file and the backbone, and say what to pass instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor, nn

__all__ = ["read_state_dict", "load_into"]


def read_state_dict(path: Path, backbone: str, reader: Optional[Callable[[str], Any]] = None) -> Dict[str, Tensor]:
    """The tensors of a state-dict file (``.pth``/``.pt``, ``.safetensors``; a checkpoint's ``state_dict``
    or ``model`` entry), for ``backbone`` (named in errors).

    ``reader``: reads the file (given as a string) in place of torch / safetensors (``timm/<model>``:
    the reader timm itself uses for weight files).
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"weights={str(path)!r} for backbone {backbone!r}: no such file. Pass 'imagenet', 'random' "
            "or the path of a state-dict file (.pth/.pt/.safetensors)."
        )
    try:
        if reader is not None:
            state = reader(str(path))
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"weights file {str(path)!r} for backbone {backbone!r} could not be read as a PyTorch "
            f"state dict ({type(err).__name__}: {err}). Use a .pth/.pt state dict saved by torch.save "
            "or a .safetensors file."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict of tensors.")
    return state


def load_into(model: nn.Module, state: Dict[str, Tensor], source: str, backbone: str) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch is a ValueError naming ``source`` and ``backbone``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[0:3])
        detail = detail if len(detail) <= 600 else detail[:600] + " ..."
        raise ValueError(f"weights from {source} do not fit backbone {backbone!r}: {detail}") from None
