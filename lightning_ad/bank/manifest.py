"""The file manifest of a disk or sharded bank: format, SHA-256 of the files, and its encoding in the state dict."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..errors import CheckpointError

__all__ = ["MANIFEST_FORMAT", "file_sha256", "encode_manifest", "decode_manifest"]

#: Version of the file manifest held in the checkpoint.
MANIFEST_FORMAT = 1
_HASH_BLOCK = 16 * 2**20


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in blocks (never whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def encode_manifest(manifest: Dict[str, Any]) -> Tensor:
    """A manifest (shards' ``index`` as tensors) as a uint8 tensor of JSON, for the state dict."""
    plain = {**manifest, "shards": [{**shard, "index": [int(i) for i in shard["index"].tolist()]}
                                    for shard in manifest["shards"]]}
    return torch.tensor(list(json.dumps(plain).encode()), dtype=torch.uint8)


def decode_manifest(value: Tensor) -> Optional[Dict[str, Any]]:
    """The manifest held in a state dict's ``manifest`` tensor (None when empty)."""
    if value.numel() == 0:
        return None
    try:
        manifest = json.loads(value.cpu().numpy().tobytes().decode())
        for shard in manifest["shards"]:
            shard["index"] = torch.tensor(shard["index"], dtype=torch.long)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"the bank file manifest in this checkpoint cannot be read ({err}).") from None
    return manifest
