"""Completing a streamed (disk or sharded) bank from every process's writer: a collective."""

from __future__ import annotations

from typing import Any

from ..distributed import first_occurrences, gather_objects, gather_rows, rank_and_world
from ..errors import ConfigurationError

__all__ = ["finish_stream"]


def finish_stream(writer: Any, bank: Any) -> None:
    """Complete a streamed (disk or sharded) bank from every process's :class:`~lightning_ad.bank.disk.BankWriter`.

    Ids and pooled vectors (small) are gathered to every process, the sampler's padding repeats
    dropped and the rows ordered by id; the file manifests are gathered in rank order; the
    pyramid rows never travel. Collective: every process calls it.
    """
    shard = writer.close()
    info = (writer.image_size, writer.shapes) if writer.shapes is not None else None
    known = next((s for s in gather_objects(info) if s is not None), None)
    if known is None:
        raise ConfigurationError("fit saw no training batch: the bank cannot be built (check limit_train_batches).")
    image_size, shapes = known
    device = bank.index.device
    index = gather_rows(shard["index"].to(device))
    pooled = gather_rows(writer.local_pooled(bank.pooled_dim).to(device))
    keep = first_occurrences(index)
    shards = gather_objects(shard)
    rank, processes = rank_and_world()
    bank.attach(index[keep], pooled[keep], tuple(image_size), bank.make_manifest(shards, shapes),
                own=writer.kept_levels() if bank.sharding == "sharded" else None, rank=rank, processes=processes,
                verify=False)
