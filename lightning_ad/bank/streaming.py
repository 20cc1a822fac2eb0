"""Completing a streamed (disk or sharded) bank from every process's writer: a collective."""

from __future__ import annotations

from typing import Any

import torch

from ..distributed import first_occurrences, gather_objects, gather_rows, rank_and_world
from ..errors import ConfigurationError
from .rows import shapes_seen_by_any_process

__all__ = ["finish_stream"]


def finish_stream(writer: Any, bank: Any, extend: bool = False) -> None:
    """Complete a streamed (disk or sharded) bank from every process's :class:`~lightning_ad.bank.disk.BankWriter`.

    Ids and pooled vectors (small) are gathered to every process, the sampler's padding repeats
    dropped and the rows ordered by id; the file manifests are gathered in rank order; the
    pyramid rows never travel. ``extend``: the new rows join the bank's (whose files stay as they are: the
    manifest lists their shards first, so a row already in the bank keeps its place). Collective: every
    process calls it.
    """
    old = bank.external_state() if extend and len(bank) else None
    shard = writer.close()
    info = (writer.image_size, writer.shapes) if writer.shapes is not None else None
    known = shapes_seen_by_any_process(info)
    image_size, shapes = known
    device = bank.index.device
    index = gather_rows(shard["index"].to(device))
    pooled = gather_rows(writer.local_pooled(bank.pooled_dim).to(device))
    shards = gather_objects(shard)
    own = writer.kept_levels() if bank.sharding == "sharded" and old is None else None
    if old is not None:
        if [list(s) for s in old["shapes"]] != [list(s) for s in shapes] or tuple(old["image_size"]) != tuple(image_size):
            raise ConfigurationError(
                f"the new images give features of {[list(s) for s in shapes]} at {list(image_size)} pixels; the bank holds "
                f"{old['shapes']} at {list(old['image_size'])}: prepare them as the bank's were (image_size, crop_size).")
        index, pooled = torch.cat([old["index"].to(device), index]), torch.cat([old["pooled"].to(device).float(), pooled.float()])
        shards = list(old["shards"]) + list(shards)
    keep = first_occurrences(index)
    rank, processes = rank_and_world()
    bank.attach(index[keep], pooled[keep], tuple(image_size), bank.make_manifest(shards, shapes),
                own=own, rank=rank, processes=processes, verify=False)
