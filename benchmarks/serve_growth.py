"""Scoring under load while the bank grows: ``POST /normal`` against ``lightning-ad serve`` on loopback.

    python benchmarks/serve_growth.py --data-root ../shared/data/mvtec_ad --category bottle \\
        --train-images 20 --clients 8 --updates 4 --per-update 5

A checkpoint is fitted on the first ``--train-images`` good training images (symlinked, never
copied; or ``--ckpt_path``, copied into a temporary folder so that the grown checkpoint lands
there). A server is started with a token; ``--clients`` threads, each with one keep-alive
connection, score the probe images (the category's test images, ``--per-group`` of each folder)
without pause, while ``--updates`` requests to ``POST /normal`` add ``--per-update`` further good
training images each. Then the same updates are replayed in process
(:meth:`~lightning_ad.inference.detector.Detector.add_normal`) for the expected scores.

It prints one table: requests, failures, updates, the answers scored by each bank version (its
size), latency while an update was running and while none was, each update's duration, and
whether every answer equals the in-process score of the bank version it names, each client seeing
the versions in order and never an older bank after an update answered. It exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_ad.inference.detector import Detector  # noqa: E402
from lightning_ad.serve.client import Client, free_port, stop_server, wait_until_healthy  # noqa: E402
from lightning_ad.serve.growth import TOKEN_ENV  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import fit_on  # noqa: E402  (benchmarks/serve.py)
from serve import test_images as probes  # noqa: E402

TOKEN = "benchmark-token-" + os.urandom(12).hex()


def fit(train: List[Path], work: Path, image_size: int, crop_size: int) -> Path:
    """A checkpoint whose bank holds every image of ``train`` (no test split)."""
    return fit_on(train, work, image_size, crop_size, normal_test_split=0.0)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--ckpt_path", type=Path, default=None, help="a fitted checkpoint (default: fit one first)")
    parser.add_argument("--train-images", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--per-group", type=int, default=2, help="probe images per test folder")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--per-update", type=int, default=5, help="images added by each update")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds of scoring before, between and after the updates")
    args = parser.parse_args(argv)

    good = sorted((args.data_root / args.category / "train" / "good").glob("*.png"))
    needed = args.train_images + args.updates * args.per_update
    if len(good) < needed:
        parser.error(f"{args.category}: {len(good)} good training images, {needed} needed")
    added = [(p.name, p.read_bytes()) for p in good[args.train_images:needed]]
    batches = [added[k * args.per_update:(k + 1) * args.per_update] for k in range(args.updates)]
    probe_images = probes(args.data_root, args.category, args.per_group)

    with tempfile.TemporaryDirectory(prefix="serve_growth_") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        source = args.ckpt_path or fit(good[:args.train_images], work / "fit", args.image_size, args.crop_size)
        fit_s = time.perf_counter() - started
        (work / "models").mkdir()
        ckpt = work / "models" / "fit.ckpt"
        shutil.copyfile(source, ckpt)
        (work / "cwd").mkdir()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, **{TOKEN_ENV: TOKEN}, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(work / "server.log", "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "lightning_ad.serve", "--ckpt_path", str(ckpt), "--port", str(port),
                                        "--max_batch_size", str(args.max_batch_size), "--timeout", "300"],
                                       cwd=work / "cwd", env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if not wait_until_healthy(url, lambda: process.poll() is None, 300):
                print((work / "server.log").read_text()[-3000:], file=sys.stderr)
                return 1
            run = load(url, probe_images, batches, args.clients, args.pause)
        finally:
            stop_server(process)

        # the same updates in process: the score each bank version gives each probe
        detector = Detector.from_checkpoint(ckpt, batch_size=args.max_batch_size)
        versions = [detector]
        for batch in batches:
            versions.append(versions[-1].add_normal([data for _, data in batch], say=lambda line: None))
        expected = {v.model.bank_size: [d.score for d in v([data for _, data in probe_images])] for v in versions}

    return report(args, run, expected, versions[0].model.bank_size, fit_s, len(probe_images))


def load(url: str, probe_images: List[Tuple[str, bytes]], batches: List[List[Tuple[str, bytes]]], clients: int,
         pause: float) -> Dict:
    stop = threading.Event()
    records: List[List[Tuple[float, float, int, int, float]]] = [[] for _ in range(clients)]
    failures: List[str] = []

    def client(c: int) -> None:
        with Client(url, timeout=300) as conn:
            i = c
            while not stop.is_set():
                p = i % len(probe_images)
                sent = time.monotonic()
                try:
                    status, answer = conn.predict(probe_images[p][1], filename=probe_images[p][0])
                except Exception as err:  # noqa: BLE001
                    failures.append(f"client {c}: {type(err).__name__}: {err}")
                    continue
                if status != 200:
                    failures.append(f"client {c}: {status} {str(answer)[:200]}")
                else:
                    records[c].append((sent, time.monotonic(), p, answer["bank_size"], answer["score"]))
                i += 1

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    updates = []
    try:
        time.sleep(pause)
        for batch in batches:
            start = time.monotonic()
            with Client(url, timeout=3600) as conn:
                status, answer = conn.add_normal(batch, token=TOKEN)
            end = time.monotonic()
            if status != 200:
                failures.append(f"update: {status} {answer}")
            updates.append((start, end, answer.get("bank_size"), answer.get("added")))
            time.sleep(pause)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=600)
    return {"records": records, "failures": failures, "updates": updates, "seconds": time.monotonic() - began}


def report(args: argparse.Namespace, run: Dict, expected: Dict[int, List[float]], first: int, fit_s: float,
           n_probes: int) -> int:
    records, updates = run["records"], run["updates"]
    rows = [r for client in records for r in client]
    sizes = sorted(expected)
    per_version = {size: sum(1 for r in rows if r[3] == size) for size in sizes}

    def busy(sent: float, done: float) -> bool:
        return any(sent < end and done > start for start, end, _, _ in updates)

    def pct(values: List[float], q: float) -> str:
        if not values:
            return "-"
        values = sorted(values)
        return f"{1000 * values[min(len(values) - 1, int(q * len(values)))]:.0f}"

    during = [done - sent for sent, done, _, _, _ in rows if busy(sent, done)]
    outside = [done - sent for sent, done, _, _, _ in rows if not busy(sent, done)]
    wrong, order, stale = 0, 0, 0
    for client in records:
        seen = [r[3] for r in client]
        order += seen != sorted(seen)
        for sent, _, p, size, score in client:
            want = expected.get(size, [float("nan")] * n_probes)[p]
            wrong += not abs(score - want) <= 1e-4 * abs(want) + 0.05
            done = [new for start, end, new, _ in updates if end < sent and new is not None]
            stale += size < (done[-1] if done else first)
    failures = run["failures"]
    print(f"\n{args.category}: bank of {first} images ({args.image_size} -> {args.crop_size}, K = 5; fit {fit_s:.0f} s), "
          f"{n_probes} probe images, {args.clients} clients, max_batch_size {args.max_batch_size}, {len(updates)} updates "
          f"of {args.per_update} images, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print("| requests | failed | updates | answers per bank size | p50 / p95 ms, no update running | "
          "p50 / p95 ms, during an update | update seconds | answers = in-process score of their bank | "
          "versions in order | older bank after a swap |")
    print("|---:|---:|---:|---|---|---|---|---|---|---|")
    print(f"| {len(rows) + len(failures)} | {len(failures)} | {len(updates)} | "
          + ", ".join(f"{size}: {n}" for size, n in per_version.items()) + " | "
          f"{pct(outside, 0.5)} / {pct(outside, 0.95)} | {pct(during, 0.5)} / {pct(during, 0.95)} | "
          + ", ".join(f"{end - start:.1f}" for start, end, _, _ in updates) + " | "
          f"{len(rows) - wrong}/{len(rows)} | {len(records) - order}/{len(records)} clients | {stale} |")
    for line in failures[:10]:
        print("failure:", line)
    ok = not failures and not wrong and not order and not stale and all(u[2] is not None for u in updates)
    print("\nall checks hold" if ok else "\nCHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
