"""What a :class:`~lightning_ad.bank.memory_bank.MemoryBank` loads: the check that a state dict's bank fits
the configured model, and the level files of a disk or sharded bank.

* :func:`check_fits`: the one refusal of a bank fitted with other levels, channels, pooled size or (for a
  bank in files) dtype, whether the state dict holds the levels themselves or a file manifest
  (:class:`~lightning_ad.errors.CheckpointError` naming every difference and what to configure).
* :func:`map_shard`: one shard's level files, found (at their recorded path, else by name in the bank
  folder), checked (size and SHA-256) and read by rows on demand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import CheckpointError
from .disk import LevelFile
from .manifest import file_sha256
from .settings import dtype_name

__all__ = ["check_fits", "bank_file", "map_shard"]


def _pooled_problems(bank: Any, pooled: Optional[Tensor]) -> List[str]:
    if pooled is None or pooled.ndim != 2 or pooled.shape[1] != bank.pooled_dim:
        return [f"pooled size {None if pooled is None else tuple(pooled.shape[1:])} ({bank.owner}: {bank.pooled_dim})"]
    return []


def _manifest_problems(bank: Any, manifest: Dict[str, Any], incoming: Dict[str, Tensor]) -> List[str]:
    """What differs in a bank held in files: levels, channels (of the files' shapes), dtype, pooled size."""
    problems = []
    if list(manifest.get("levels", [])) != list(bank.levels):
        problems.append(f"levels {manifest.get('levels')} (configured: {list(bank.levels)})")
    shapes = manifest.get("shapes", [])
    if [int(s[-1]) for s in shapes] != list(bank.channels):
        problems.append(f"channels {[s[-1] for s in shapes]} ({bank.owner}: {list(bank.channels)})")
    if manifest.get("dtype") != dtype_name(bank.dtype):
        problems.append(f"bank_dtype {manifest.get('dtype')!r} (configured: {dtype_name(bank.dtype)!r})")
    return problems + _pooled_problems(bank, incoming.get("pooled"))


def _tensor_problems(bank: Any, incoming: Dict[str, Tensor]) -> List[str]:
    """What differs in a bank held in the state dict: levels, pooled size, channels, and rows per tensor."""
    levels_in = sorted(int(k[len("level"):]) for k in incoming if k.startswith("level"))
    problems = []
    if levels_in != list(bank.levels):
        problems.append(f"levels {levels_in} (configured: {list(bank.levels)})")
    problems += _pooled_problems(bank, incoming["pooled"])
    for level, channels in zip(bank.levels, bank.channels):
        value = incoming.get(f"level{level}")
        if value is not None and (value.ndim != 4 or value.shape[-1] != channels):
            problems.append(f"level {level} has {value.shape[-1] if value.ndim else '?'} channels ({bank.owner}: {channels})")
    sizes = {int(v.shape[0]) for k, v in incoming.items() if k not in ("image_size", "manifest")}
    if len(sizes) > 1:
        problems.append(f"bank tensors disagree on the number of images {sorted(sizes)}")
    return problems


def check_fits(bank: Any, incoming: Dict[str, Tensor], manifest: Optional[Dict[str, Any]] = None) -> None:
    """Refuse the bank of a state dict (``incoming``: its entries without the bank's prefix) that does not fit
    ``bank`` (a :class:`~lightning_ad.bank.memory_bank.MemoryBank`): its levels, channels and pooled size, and,
    for a bank held in files (``manifest``, decoded), their dtype."""
    problems = _tensor_problems(bank, incoming) if manifest is None else _manifest_problems(bank, manifest, incoming)
    if problems:
        settings = "backbone and layers" if manifest is None else "backbone, layers and bank_dtype"
        raise CheckpointError(
            f"the memory bank in this state dict does not fit the configured model (backbone={bank.owner!r}, "
            f"layers={list(bank.levels)}): " + "; ".join(problems)
            + f". Configure the {settings} the bank was fitted with, or fit again.")


def bank_file(entry: Dict[str, Any], directory: Optional[str]) -> Path:
    """The file of a manifest entry: at its recorded path, else by its name in ``directory`` (the bank folder), or in
    the folder of ``directory`` that has the name of the folder it was recorded in (fit writes each bank's files into
    a ``bank-<id>`` folder of bank_dir)."""
    path = Path(entry["path"])
    if not path.is_file() and directory:
        beside = Path(directory) / Path(entry["path"]).parent.name / entry["name"]
        path = beside if beside.is_file() else Path(directory) / entry["name"]
    if not path.is_file():
        raise CheckpointError(
            f"bank file {entry['name']!r} is missing (recorded at {entry['path']!r}"
            + (f", not in bank_dir {directory!r}" if directory else "")
            + "). A disk or sharded bank's checkpoint needs its bank files: keep them where fit wrote them, "
            "or pass --model.bank_dir FOLDER holding them.")
    return path


def map_shard(shard: Dict[str, Any], shapes: Sequence[Tuple[int, int, int]], dtype: torch.dtype, directory: Optional[str],
              verify: bool) -> List[LevelFile]:
    """One shard's level files (``shapes``: ``(H_l, W_l, C_l)`` per level), read by rows on demand after checking
    their size and, with ``verify``, their SHA-256."""
    count = int(shard["index"].numel())
    tensors = []
    for entry, shape in zip(shard["files"], shapes):
        path = bank_file(entry, directory)
        size = path.stat().st_size
        element = torch.tensor([], dtype=dtype).element_size()
        expected = count * shape[0] * shape[1] * shape[2] * element
        if size != entry["bytes"] or size != expected:
            raise CheckpointError(
                f"bank file {str(path)!r} has {size} bytes, the checkpoint expects {entry['bytes']}: it is not "
                "the file this checkpoint was fitted with. Fit again, or restore the bank files.")
        if verify and file_sha256(path) != entry["sha256"]:
            raise CheckpointError(
                f"bank file {str(path)!r} does not match the checkpoint's SHA-256 ({entry['sha256'][:12]}...): it "
                "was changed or belongs to another fit. Fit again, or restore the bank files.")
        tensors.append(LevelFile(path, count, shape, dtype))
    return tensors
