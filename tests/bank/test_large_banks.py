"""Pieces that keep a large bank's memory bounded: the image-level kNN in slabs, the writer's growing buffers."""

from __future__ import annotations

import pytest
import torch

from lightning_ad.bank import LevelFile, MemoryBank
from lightning_ad.core.knn import knn, slab_knn
from lightning_ad.errors import CheckpointError


def test_slab_knn_finds_the_neighbours_of_one_search():
    gen = torch.Generator().manual_seed(0)
    gallery = torch.randn(103, 16, generator=gen).half()
    queries = torch.randn(9, 16, generator=gen)
    exclude = torch.tensor([0, 5, 17, 34, 35, 70, 102, -1, 51])
    for k, ex in ((1, None), (6, None), (6, exclude), (40, exclude)):
        whole = knn(queries, gallery, k, chunk_bytes=2**20, exclude=ex)
        slabs = slab_knn(queries, gallery, k, chunk_bytes=2**20, exclude=ex, slab=10)  # 11 slabs of 9 or 10 rows
        assert torch.equal(slabs.indices, whole.indices) and torch.equal(slabs.distances, whole.distances), (k, ex)
    assert ex is not None and not bool((slabs.indices == exclude[:, None]).any())


def test_bank_writer_keeps_every_batch_in_order(tmp_path):
    bank = MemoryBank(levels=(1,), channels=(2,), pooled_dim=3, dtype=torch.float16)
    writer = bank.writer(str(tmp_path), 0)
    gen = torch.Generator().manual_seed(0)
    ids, pooled = [], []
    for first in range(0, 700, 7):  # 100 batches: the buffers grow several times
        index = torch.arange(first, first + 7).flip(0)
        vectors = torch.randn(7, 3, generator=gen)
        writer.append(index, vectors, [torch.randn(7, 2, 4, 4, generator=gen)], (16, 16))
        ids.append(index)
        pooled.append(vectors)
    assert torch.equal(writer.close()["index"], torch.cat(ids))
    assert torch.equal(writer.local_pooled(3), torch.cat(pooled).half().float())


def test_level_file_reads_the_rows_asked_and_names_a_truncated_file(tmp_path):
    rows = torch.randn(6, 2, 3, 4).half()
    path = tmp_path / "level1.rank0.bin"
    path.write_bytes(rows.numpy().tobytes())
    level = LevelFile(path, 6, (2, 3, 4), torch.float16)
    asked = torch.tensor([5, 0, 3, 3])  # any order, repeats allowed
    assert torch.equal(level[asked], rows[asked])
    assert level[torch.tensor([], dtype=torch.long)].shape == (0, 2, 3, 4)
    with pytest.raises(IndexError, match="level1.rank0.bin"):
        level[torch.tensor([6])]
    path.write_bytes(rows[:4].numpy().tobytes())  # cut short after the bank was written
    with pytest.raises(CheckpointError, match="level1.rank0.bin.*truncated"):
        level[torch.tensor([1, 4])]
