"""Round-1 state dicts (``bank_pooled``, ``bank_level1`` ...): their keys renamed to :class:`~lightning_ad.bank.memory_bank.MemoryBank`'s."""

from __future__ import annotations

from typing import Dict

from torch import Tensor

__all__ = ["rename_legacy_keys"]


def rename_legacy_keys(state_dict: Dict[str, Tensor], prefix: str) -> None:
    """Map a round-1 state dict (``bank_pooled``, ``bank_level1`` ...) onto :class:`MemoryBank`'s keys, in place."""
    renames = {"bank_index": "bank.index", "bank_image_size": "bank.image_size", "bank_pooled": "bank.pooled"}
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        local = key[len(prefix):]
        if local in renames:
            state_dict[prefix + renames[local]] = state_dict.pop(key)
        elif local.startswith("bank_level"):
            state_dict[prefix + "bank.level" + local[len("bank_level"):]] = state_dict.pop(key)
