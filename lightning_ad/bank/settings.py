"""The bank's accepted settings: storage precision, storage, sharding and placement, by name."""

from __future__ import annotations

from typing import Dict

import torch

__all__ = ["BANK_DTYPES", "BANK_STORAGES", "BANK_SHARDINGS", "BANK_DEVICES", "dtype_name"]

#: Accepted names of the bank storage precision.
BANK_DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
BANK_STORAGES = ("memory", "disk")
BANK_SHARDINGS = ("replicated", "sharded")
BANK_DEVICES = ("auto", "host", "accelerator")


def dtype_name(dtype: torch.dtype) -> str:
    """The accepted name of a bank storage precision."""
    return next(name for name, value in BANK_DTYPES.items() if value == dtype)
