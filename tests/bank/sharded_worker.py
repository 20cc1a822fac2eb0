"""One process of a sharded-bank run for tests/bank/test_sharded_equality.py (CPU, gloo, 1 thread).

    python sharded_worker.py RANK WORLD STORE PHASE OUT KAPPA SHARDING STORAGE RADIUS (pixels, none or auto)

``STORAGE`` and ``RADIUS`` may be comma-separated lists of one length: the processes then run each pair in turn
(one launch for several settings), each in ``OUT/<storage>-<radius>``.

``STORE``: a new file for the rendezvous (a file store: no process serves it, so ranks may exit
in any order; with a TCP store, a rank still closing after rank 0 left was seen to abort).
Each step prints a line, and a fatal signal prints every thread's Python stack (``faulthandler``),
so a failing run says where it stopped. Once its files are written and the group is destroyed, a
process leaves with ``os._exit``: C++ destructors at interpreter exit once aborted a rank in CI
("terminate called without an active exception", a thread destroyed while joinable) after its work
was done, which is gloo's teardown, not the bank's behaviour under test.

``fit+test``: both in the same processes, the test on a new model that loads the state written by the fit (as a
separate ``test`` run would, without starting the processes again). ``fit``: extract the training images one at a time (so features do not depend on the batch),
take the rows a ``DistributedSampler`` would give this rank (padding repeats included), stream
them into the bank, and save the state dict (rank 0) to ``OUT/state.pt``. ``test``: load it,
score test images ``RANK::WORLD`` one per call (uneven counts: ranks drain each other), and
save every image's score and map (rank 0) to ``OUT/scores<WORLD>.pt``. World 1 with sharding
``replicated`` and storage ``memory`` is the reference.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

N_TRAIN, N_TEST, SIZE = 10, 5, 64


def images():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(N_TRAIN, 3, SIZE, SIZE, generator=gen) * 0.3 + 0.35
    test = torch.rand(N_TEST, 3, SIZE, SIZE, generator=gen) * 0.3 + 0.35
    test[1, :, 20:34, 20:34] = 1.0
    return train, test


def sampler_rows(count: int, rank: int, world: int) -> list:
    """The dataset indices ``DistributedSampler(shuffle=False)`` gives ``rank``: padded by repeating the first."""
    total = -(-count // world) * world
    padded = list(range(count)) + list(range(total - count))
    return padded[rank::world]


def step(rank: int, text: str) -> None:
    print(f"rank {rank}: {text}", flush=True)


def main(argv: list) -> None:
    """One process's run; ``argv``: the arguments after the script's name."""
    rank, world, store, phase, out, kappa, sharding, storages, radii = argv[:9]
    rank, world, kappa, out = int(rank), int(world), int(kappa), Path(out)
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        step(rank, "joined the group")
    pairs = list(zip(storages.split(","), radii.split(",")))
    for storage, radius in pairs:
        folder = out / f"{storage}-{radius}" if len(pairs) > 1 else out
        folder.mkdir(parents=True, exist_ok=True)
        run(rank, world, phase, folder, kappa, sharding, storage,
            {"none": None, "auto": "auto"}.get(radius) if radius in ("none", "auto") else float(radius))
    if world > 1:
        from lightning_ad.distributed import end_process_group

        end_process_group()  # no process leaves while another still talks to it
        step(rank, "left the group")


def run(rank: int, world: int, phase: str, out: Path, kappa: int, sharding: str, storage: str, radius) -> None:
    """One setting's ``phase`` in this process (see the module docstring)."""
    from lightning_ad.bank import finish_stream
    from lightning_ad.core.spade import Features, SpadeModel
    from lightning_ad.distributed import gather_objects

    def new_model() -> SpadeModel:
        return SpadeModel(image_k=3, gallery_k=3, kappa=kappa, bank_sharding=sharding, bank_storage=storage,
                          bank_dir=str(out / "bank"), search_radius=radius).eval()

    model = new_model()
    train, test = images()
    if phase in ("fit", "fit+test"):
        rows = sampler_rows(N_TRAIN, rank, world)
        extracted = [model.extract(train[row : row + 1]) for row in rows]
        if model.bank.streams:
            writer = model.bank.writer(str(out / "bank"), rank)
            for row, features in zip(rows, extracted):
                writer.append(torch.tensor([row]), features.pooled, features.pyramid, (SIZE, SIZE))
            finish_stream(writer, model.bank)
        else:  # the reference: an ordinary in-memory bank, one process
            model.set_bank(Features([torch.cat([f.pyramid[i] for f in extracted]) for i in range(3)],
                                    torch.cat([f.pooled for f in extracted])), (SIZE, SIZE), torch.tensor(rows))
        if radius == "auto":  # decided as Lightning's fit does: each process its rows, gathered in row order
            from lightning_ad.core.calibration import decide_search_radius

            decide_search_radius(model)
            step(rank, f"search radius decided: {model.search_radius}")
        if rank == 0:
            torch.save(model.state_dict(), out / "state.pt")
        step(rank, f"bank written ({storage}, radius {radius})")
    if phase in ("test", "fit+test") or world == 1:
        if phase != "fit":  # the bank as a checkpoint gives it, in a model of its own
            if world > 1:
                dist.barrier()  # rank 0 has written the state
            model = new_model()
            model.load_state_dict(torch.load(out / "state.pt", weights_only=True))
        mine = list(range(rank, N_TEST, world))
        results = [(i, *model(test[i : i + 1])) for i in mine]
        model.end_scoring()
        step(rank, "scored")
        parts = gather_objects(([(i, s.clone(), m.clone()) for i, s, m in results], int(model.bank.held().sum())))
        if rank == 0:
            ordered = sorted((item for part, _ in parts for item in part), key=lambda item: item[0])
            torch.save({"index": [i for i, _, _ in ordered], "scores": torch.cat([s for _, s, _ in ordered]),
                        "maps": torch.cat([m for _, _, m in ordered]), "held": [held for _, held in parts]},
                       out / f"scores{world}.pt")
        step(rank, "results gathered")


if __name__ == "__main__":
    faulthandler.enable()
    main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
