"""Load test of ``lightning-ad serve`` on loopback, against the in-process ``Detector``.

    python benchmarks/serve.py --data-root ../shared/data/mvtec_ad --category bottle \\
        --clients 8 --requests 96 --bad-every 6 --batch-sizes 1 8

For each ``--batch-sizes`` value a server process (``python -m lightning_ad.serve``) is started
on a free loopback port with that ``--max_batch_size``; ``--clients`` threads, each with one
keep-alive connection, send ``--requests`` requests in all (a fixed number, so the run is
bounded): the category's test images as multipart files, and every ``--bad-every``-th request a
bad one (truncated PNG, text body, zero bytes, a file name with ``..``, a decompression bomb).
It prints requests/s, p50/p95/p99 latency and the error count, next to the in-process
``Detector`` (images/s, decoding included, at batch size 1 and the same batch size), and
asserts that every good request got 200 with the Detector's score and decision and every
bad one a 4xx.

Without ``--ckpt_path`` a checkpoint is fitted first on ``--train-images`` training images
(symlinked into a temporary folder, never copied) at ``--image-size`` / ``--crop-size``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from lightning_ad.inference.detector import Detector  # noqa: E402
from lightning_ad.serve.client import Client, free_port, multipart, stop_server, wait_until_healthy  # noqa: E402


def fit(data_root: Path, category: str, work: Path, n_train: int, image_size: int, crop_size: int) -> Path:
    """A checkpoint fitted on the first ``n_train`` good images of ``category`` (the folder's default test split)."""
    return fit_on(sorted((data_root / category / "train" / "good").glob("*.png"))[:n_train], work, image_size, crop_size)


def fit_on(images: List[Path], work: Path, image_size: int, crop_size: int, **folder: Any) -> Path:
    """A checkpoint fitted on ``images`` (linked into ``work/train``, never copied; ``folder``: more
    ``FolderDataModule`` arguments), K = 5, through a plain Trainer."""
    import pytorch_lightning as pl

    from lightning_ad import FolderDataModule, Spade

    train = work / "train"
    train.mkdir(parents=True)
    for path in images:
        (train / path.name).symlink_to(path.resolve())  # a relative target would resolve from the link
    dm = FolderDataModule(normal_dir=str(train), mask_pattern=None, image_size=image_size, crop_size=crop_size,
                          batch_size=16, num_workers=0, **folder)
    trainer = pl.Trainer(default_root_dir=str(work / "run"), max_epochs=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Spade(image_k=5, gallery_k=5), datamodule=dm)
    (ckpt,) = sorted((work / "run").rglob("*.ckpt"))
    return ckpt


def test_images(data_root: Path, category: str, per_group: int) -> List[Tuple[str, bytes]]:
    out = []
    for group in sorted(p for p in (data_root / category / "test").iterdir() if p.is_dir()):
        for path in sorted(group.glob("*.png"))[:per_group]:
            out.append((f"{group.name}_{path.name}", path.read_bytes()))
    return out


def bomb_png(side: int = 40_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


def bad_requests(good: bytes) -> List[Tuple[str, bytes, str]]:
    """``(name, body, content type)`` of requests that must get a 4xx."""
    def file(data: bytes, filename: str = "x.png") -> Tuple[bytes, str]:
        return multipart([("file", filename, data, "image/png")])

    return [("truncated", *file(good[: len(good) // 2])), ("text_body", b"not an image", "text/plain"),
            ("zero_bytes", *file(b"")), ("parent_folder_name", *file(good, "../../x.png")), ("bomb", *file(bomb_png()))]


class Server:
    def __init__(self, ckpt: Path, work: Path, batch_size: int, batch_timeout: float, timeout: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        work.mkdir(parents=True, exist_ok=True)
        self.log = open(work / f"server_b{batch_size}.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lightning_ad.serve", "--ckpt_path", str(ckpt), "--port", str(self.port),
             "--max_batch_size", str(batch_size), "--batch_timeout", str(batch_timeout),
             "--timeout", str(timeout)],
            cwd=work, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(work)))
        if not wait_until_healthy(self.url, lambda: self.process.poll() is None, 300):
            self.stop()
            raise SystemExit(f"server not ready after 300 s or exited: see {self.log.name}")

    def stop(self) -> None:
        stop_server(self.process)
        self.log.close()


def in_process(ckpt: Path, images: List[Tuple[str, bytes]], batch_size: int, rounds: int) -> float:
    """Images/s of ``Detector`` in this process, decoding from bytes included (after one warm-up batch)."""
    detector = Detector.from_checkpoint(ckpt, batch_size=batch_size)
    detector([Image.open(io.BytesIO(images[0][1]))])
    start = time.perf_counter()
    count = 0
    for _ in range(rounds):
        detector([Image.open(io.BytesIO(data)) for _, data in images])
        count += len(images)
    return count / (time.perf_counter() - start)


def load(url: str, jobs: List[Tuple[str, bool, bytes, str]], clients: int, expected: Dict[str, Tuple[float, Optional[bool]]]) -> Dict:
    """Send ``jobs`` (name, is_good, body, content type) from ``clients`` threads; check every answer."""
    lock = threading.Lock()
    cursor = [0]
    latencies: List[float] = []
    problems: List[str] = []
    statuses: Dict[str, int] = {"good_ok": 0, "bad_4xx": 0}

    def worker() -> None:
        with Client(url, timeout=120) as client:
            while True:
                with lock:
                    if cursor[0] >= len(jobs):
                        return
                    name, good, body, ctype = jobs[cursor[0]]
                    cursor[0] += 1
                start = time.perf_counter()
                try:
                    status, answer = client.request("POST", "/predict", body, ctype)
                except OSError as err:
                    status, answer = -1, str(err)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if good:
                        score, decision = expected[name]
                        if status == 200 and abs(answer["score"] - score) <= 1e-5 * abs(score) and answer["decision"] == decision:
                            statuses["good_ok"] += 1
                        else:
                            problems.append(f"good {name}: {status} {str(answer)[:200]}")
                    elif 400 <= status < 500:
                        statuses["bad_4xx"] += 1
                    else:
                        problems.append(f"bad {name}: {status} {str(answer)[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000

    return {"requests": len(jobs), "wall_s": wall, "rps": len(jobs) / wall, "p50": pct(0.50), "p95": pct(0.95),
            "p99": pct(0.99), "mean": statistics.fmean(latencies) * 1000, "errors": len(problems), "problems": problems,
            **statuses}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--ckpt_path", type=Path, default=None, help="a fitted checkpoint (default: fit one first)")
    parser.add_argument("--train-images", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--per-group", type=int, default=4, help="test images per test folder")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--bad-every", type=int, default=6, help="every n-th request is a bad one")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--server-timeout", type=float, default=120.0,
                        help="seconds a request may wait in the server (LitServe answers 504 after it)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the images for the in-process figure")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
        work = Path(tmp)
        ckpt = args.ckpt_path or fit(args.data_root, args.category, work / "fit", args.train_images, args.image_size, args.crop_size)
        images = test_images(args.data_root, args.category, args.per_group)
        reference = Detector.from_checkpoint(ckpt, batch_size=8)
        expected = {name: (d.score, d.decision) for (name, _), d in
                    zip(images, reference([Image.open(io.BytesIO(data)) for _, data in images]))}
        bad = bad_requests(images[0][1])
        jobs = []
        for i in range(args.requests):
            if args.bad_every and i % args.bad_every == args.bad_every - 1:
                name, body, ctype = bad[(i // args.bad_every) % len(bad)]
                jobs.append((name, False, body, ctype))
            else:
                name, data = images[i % len(images)]
                jobs.append((name, True, *multipart([("file", name, data, "image/png")])))
        rows = []
        for batch_size in args.batch_sizes:
            local = in_process(ckpt, images, batch_size, args.rounds)
            server = Server(ckpt, work / "server", batch_size, args.batch_timeout, args.server_timeout)
            try:
                load(server.url, jobs[: args.clients], args.clients, expected)  # warm-up
                result = load(server.url, jobs, args.clients, expected)
            finally:
                server.stop()
            rows.append((batch_size, local, result))
            for problem in result["problems"][:10]:
                print("PROBLEM", problem, file=sys.stderr)

    n_bad = sum(1 for job in jobs if not job[1])
    print(f"\n{args.category}: {len(images)} test images, {args.image_size}->{args.crop_size}, {args.requests} requests "
          f"({n_bad} bad) from {args.clients} clients, batch_timeout {args.batch_timeout}s, {os.cpu_count()} CPU(s)\n")
    print("| max_batch_size | requests/s | p50 ms | p95 ms | p99 ms | errors | good 200 + correct | bad 4xx | in-process Detector images/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch_size, local, r in rows:
        print(f"| {batch_size} | {r['rps']:.2f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['errors']} | "
              f"{r['good_ok']}/{len(jobs) - n_bad} | {r['bad_4xx']}/{n_bad} | {local:.2f} (batch {batch_size}) |")
    failed = [r for _, _, r in rows if r["errors"]]
    assert not failed, f"{sum(r['errors'] for r in failed)} requests were answered wrongly (see PROBLEM lines)"


if __name__ == "__main__":
    main()
