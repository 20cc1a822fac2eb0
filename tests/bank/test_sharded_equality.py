"""A sharded bank on several processes (CPU, gloo) scores bitwise as the replicated in-memory bank.

Each run is ``tests/bank/sharded_worker.py`` on 1, 2 or 3 processes: features are extracted one image
at a time (so they do not depend on how images are batched), each process writes the rows the
``DistributedSampler`` gives it (10 training images: 3 processes pad with 2 repeats), and test
images are split unevenly (5 over 2 or 3 processes), so processes serve each other's searches.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sharded_worker
import torch
from conftest import REPO
from sharded_worker import N_TEST, N_TRAIN

WORKER = Path(__file__).with_name("sharded_worker.py")


def run(out: Path, phase: str, world: int, kappa: int, sharding: str = "sharded", storage: str = "disk", radius: str = "8") -> None:
    """The worker on ``world`` processes (one: in this process, as it needs no process group)."""
    out.mkdir(parents=True, exist_ok=True)
    store = out / f"store-{uuid.uuid4().hex}"
    if world == 1:
        threads = torch.get_num_threads()
        try:
            sharded_worker.main(["0", "1", str(store), phase, str(out), str(kappa), sharding, storage, radius])
        finally:
            torch.set_num_threads(threads)
        return
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(rank), str(world), str(store), phase, str(out), str(kappa),
                               sharding, storage, radius], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    failed = [f"{phase} on {world} process(es), rank {rank}, exit {proc.returncode}:\n{text[-3000:]}" for rank, (proc, text) in enumerate(zip(procs, outputs)) if proc.returncode]
    assert not failed, "\n".join(failed)


def results(out: Path, world: int) -> dict:
    return torch.load(out / f"scores{world}.pt", weights_only=True)


def assert_bitwise(got: dict, expected: dict, case: str = "") -> None:
    assert got["index"] == expected["index"] == list(range(N_TEST)), case
    assert torch.equal(got["scores"], expected["scores"]), case
    assert torch.equal(got["maps"], expected["maps"]), case


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Scores and maps of the replicated in-memory bank on one process, per kappa (window of 8 px), and
    for kappa 3 with the global search (``"3-global"``)."""
    base = tmp_path_factory.mktemp("reference")
    out = {}
    for kappa in (1, 3):
        run(base / f"k{kappa}", "fit", 1, kappa, "replicated", "memory")
        out[kappa] = results(base / f"k{kappa}", 1)
    run(base / "global", "fit", 1, 3, "replicated", "memory", radius="none")
    out["3-global"] = results(base / "global", 1)
    run(base / "auto", "fit", 1, 3, "replicated", "memory", radius="auto")
    out["3-auto"] = results(base / "auto", 1)
    return out


def test_sharded_bank_with_kappa_above_one_on_two_processes(reference, tmp_path):
    """Bitwise the replicated bank, from memory and from disk, with the window, the global search and ``auto``
    (the two processes then decide the radius one process decides); one launch runs the four in turn."""
    cases = [("memory", "8"), ("disk", "8"), ("disk", "none"), ("disk", "auto")]
    run(tmp_path, "fit+test", 2, 3, storage=",".join(s for s, _ in cases), radius=",".join(r for _, r in cases))
    for storage, radius in cases:
        got = results(tmp_path / f"{storage}-{radius}", 2)
        assert got["held"] == [5, 5], (storage, radius)  # each process holds only its share
        expected = {"8": reference[3], "none": reference["3-global"], "auto": reference["3-auto"]}[radius]
        assert_bitwise(got, expected, f"{storage}, radius {radius}")
    assert not torch.equal(reference[3]["maps"], reference[1]["maps"])  # kappa 3 is not kappa 1
    assert not torch.equal(reference[3]["maps"], reference["3-global"]["maps"])  # the window is not the global search


def test_three_process_sharded_fit_and_test_equal_one_process(reference, tmp_path):
    run(tmp_path, "fit+test", 3, 1)
    got = results(tmp_path, 3)
    assert sorted(got["held"]) == [3, 3, 4] and sum(got["held"]) == N_TRAIN  # padding repeats dropped
    assert_bitwise(got, reference[1])
    # the 3-process fit's checkpoint in 2 processes and in 1
    for world in (2, 1):
        run(tmp_path, "test", world, 1)
        assert_bitwise(results(tmp_path, world), reference[1])
