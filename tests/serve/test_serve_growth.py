"""``POST /normal``: a real server on loopback adds confirmed-good images to its bank, swaps it without failing a
request, keeps the grown bank across a restart, and refuses a missing or wrong token and bad images without a change.

A tiny generated set (64 -> crop 48, every position searched, thresholds from a few leave-one-out maps) keeps each
update at a few seconds on 2 CPUs. The expected scores come from the in-process
:meth:`~lightning_ad.inference.detector.Detector.add_normal` on the same images.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from conftest import ServerProcess, encoded, fit_checkpoint, make_mvtec, textured

pytest.importorskip("litserve", reason="the server needs the [serve] extra: pip install -e '.[serve]'")

from lightning_ad.errors import ConfigurationError  # noqa: E402
from lightning_ad.inference.checkpoint import file_sha256  # noqa: E402
from lightning_ad.inference.detector import Detector  # noqa: E402
from lightning_ad.serve.client import Client, free_port  # noqa: E402
from lightning_ad.serve.growth import TOKEN_ENV, check_bearer, choose_served  # noqa: E402
from lightning_ad.serve.server import resolve_token, serve_main  # noqa: E402

pytestmark = pytest.mark.slow

TOKEN = "growth-test-token-0123456789abcdef"
#: Scores of the same image against the same bank agree to this much across batches (an image's distance to its own
#: copy in the bank comes out near 0.01, not 0, by float rounding, a little differently in each batch).
ABS = 0.05


# ---------------------------------------------------------------------- data, checkpoint, server


def good_images(seed: int, count: int) -> List[Tuple[str, bytes]]:
    """``count`` new good pictures (PNG) of the tiny set's kind, named ``g<seed>_<i>.png``."""
    rng = np.random.default_rng(seed)
    return [(f"g{seed}_{i}.png", encoded(textured(rng, 64), "PNG")) for i in range(count)]


def near_copy(data: bytes, seed: int) -> bytes:
    """A good picture a little off ``data`` (another image's content, close to it in the features)."""
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    noise = np.random.default_rng(seed).integers(-3, 4, rgb.shape)
    return encoded(np.clip(rgb + noise, 0, 255).astype(np.uint8), "PNG")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):

    from lightning_ad import MVTecDataModule

    base = tmp_path_factory.mktemp("growth")
    root = make_mvtec(base / "data", n_train=6, n_good=1, n_bad=1, size=64)
    dm = MVTecDataModule(str(root), category="widget", image_size=64, crop_size=48, batch_size=4, num_workers=0)
    fitted = fit_checkpoint(base / "fit", dm, few_shot_below=0, search_radius=None, threshold_samples=4,
                            image_threshold_samples=4)
    folder = base / "models"
    folder.mkdir()
    origin = folder / "fit.ckpt"
    shutil.copyfile(fitted, origin)
    probes = [(f"probe{i}.png", data) for i, (_, data) in enumerate(good_images(99, 4))]
    env = dict(os.environ, **{TOKEN_ENV: TOKEN})
    state = {"base": base, "origin": origin, "grown": folder / "fit.grown.ckpt", "probes": probes, "env": env,
             "origin_sha": file_sha256(origin), "starts": 0}
    state["server"] = start(state)
    try:
        yield state
    finally:
        state["server"].stop()
        check_clean(state["server"])
    assert file_sha256(origin) == state["origin_sha"], "the served checkpoint was written"


def start(state: Dict) -> ServerProcess:
    """The same command every time (the token in the environment); a fresh working folder for each start."""
    state["starts"] += 1
    return ServerProcess(state["origin"], state["base"] / f"server{state['starts']}", "--max_batch_size", "4",
                         "--batch_timeout", "0.02", env=state["env"])


def check_clean(server: ServerProcess) -> None:
    assert not any(server.run_dir.iterdir()), f"the server wrote into its working folder: {list(server.run_dir.iterdir())}"
    assert not any(server.tmpdir.iterdir()), f"the server left temporary files: {list(server.tmpdir.iterdir())}"


def folder_state(folder: Path) -> Dict[str, Tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def info(url: str) -> Dict:
    with Client(url) as client:
        status, answer = client.request("GET", "/info")
    assert status == 200, answer
    return answer


def served_detector(state: Dict) -> Detector:
    """The bank the server says it serves, loaded here."""
    return Detector.from_checkpoint(state["origin"].parent / info(state["server"].url)["checkpoint"], batch_size=4)


def probe_answers(url: str, probes: List[Tuple[str, bytes]]) -> List[Dict]:
    with Client(url) as client:
        answers = [client.predict(data, filename=name) for name, data in probes]
    assert all(status == 200 for status, _ in answers), answers
    return [answer for _, answer in answers]


def post(url: str, images: List[Tuple[str, bytes]], token: str = TOKEN) -> Tuple[int, Dict]:
    with Client(url, timeout=300) as client:
        return client.add_normal(images, token=token)


def section(path: Path) -> Dict:
    return torch.load(path, map_location="cpu", weights_only=True)["lightning_ad"]


# ---------------------------------------------------------------------- refusals


def test_token_missing_or_wrong_changes_nothing(setup):
    url, folder = setup["server"].url, setup["origin"].parent
    before_files, before_info = folder_state(folder), info(url)
    before = probe_answers(url, setup["probes"][:1])
    images = good_images(1, 2)
    with Client(url) as client:
        status, answer = client.add_normal(images)  # no Authorization header
        assert status == 401 and answer["error"] == "unauthorized", answer
        status, answer = client.request("POST", "/normal", b"x", "image/png", {"Authorization": f"Basic {TOKEN}"})
        assert status == 401, answer
        status, answer = client.add_normal(images, token=TOKEN[:-1] + "X")
        assert status == 403 and answer["error"] == "forbidden", answer
        status, answer = client.add_normal(images, token=TOKEN + "0")
        assert status == 403, answer
    assert folder_state(folder) == before_files
    assert info(url) == before_info
    assert probe_answers(url, setup["probes"][:1]) == before


def test_bad_images_get_a_400_naming_the_item_and_change_nothing(setup):
    url, folder = setup["server"].url, setup["origin"].parent
    before_files, before_info = folder_state(folder), info(url)
    (name, good), = good_images(2, 1)
    cases = {
        "truncated": ([(name, good), ("cut.png", good[: len(good) // 2])], 400, "corrupt_image", "image 2 of 2: 'cut.png'"),
        "not_an_image": ([("notes.png", b"hello, not a picture" * 10), (name, good)], 400, "not_an_image",
                         "image 1 of 2: 'notes.png'"),
        "folder_in_name": ([("../x.png", good)], 400, "bad_filename", "image 1 of 1"),
        "too_many": ([(f"{i}.png", good) for i in range(17)], 400, "bad_request", "at most 16 images"),
    }
    with Client(url) as client:
        for case, (images, status_wanted, code, words) in cases.items():
            status, answer = client.add_normal(images, token=TOKEN)
            assert (status, answer["error"]) == (status_wanted, code), (case, answer)
            assert words in answer["detail"], (case, answer)
        status, answer = client.request("POST", "/normal", json.dumps({"images": []}).encode(), "application/json",
                                        {"Authorization": f"Bearer {TOKEN}"})
        assert status == 400 and "no image" in answer["detail"], answer
        assert client.health() == (200, "ok")
    assert folder_state(folder) == before_files
    assert info(url) == before_info
    probe_answers(url, setup["probes"])


# ---------------------------------------------------------------------- updates


def test_an_update_swaps_the_bank(setup):
    """/info and the probe's answer show the old bank until the update answers, the grown bank after it; the answer
    equals the in-process add_normal; the grown file records where it came from; a repeat adds nothing."""
    url = setup["server"].url
    probe = setup["probes"][0]
    old = served_detector(setup)
    before, before_info = probe_answers(url, [probe])[0], info(url)
    assert before["score"] == pytest.approx(old([probe[1]])[0].score, rel=1e-5)
    assert before["bank_size"] == before_info["bank_size"] == old.model.bank_size
    images = good_images(3, 2) + [("probe_copy.png", probe[1])]
    expected = old.add_normal([data for _, data in images], say=lambda line: None)

    status, answer = post(url, images)
    assert status == 200, answer
    assert (answer["added"], answer["skipped"]) == (3, 0)
    assert answer["bank_size"] == old.model.bank_size + 3 and answer["checkpoint"] == "fit.grown.ckpt"
    assert answer["workers"] == answer["workers_serving"] == 1
    assert answer["thresholds"]["image"] == pytest.approx(expected.image_threshold, rel=1e-6)

    after, after_info = probe_answers(url, [probe])[0], info(url)
    assert after["bank_size"] == after_info["bank_size"] == old.model.bank_size + 3
    assert after["score"] == pytest.approx(expected([probe[1]])[0].score, rel=1e-4, abs=ABS)
    assert after["score"] < before["score"] / 10  # the probe itself is in the bank now
    assert after_info["checkpoint"] == "fit.grown.ckpt" and after_info["bank_changed"] is not None
    assert after_info["bank_changed"] != before_info["bank_changed"]
    assert after_info["adding"]["enabled"] is True and after_info["adding"]["updates"] == before_info["adding"]["updates"] + 1
    assert after_info["thresholds"] == answer["thresholds"]

    meta = section(setup["grown"])
    assert Path(meta["grown_from"]) == setup["origin"].resolve()
    assert meta["grown_from_sha256"] == setup["origin_sha"] == file_sha256(setup["origin"])
    assert meta["bank_size"] == answer["bank_size"] and meta["bank_changed"] == after_info["bank_changed"]

    files = folder_state(setup["origin"].parent)
    status, again = post(url, images)  # the same images: already in the bank
    assert status == 200 and (again["added"], again["skipped"]) == (0, 3), again
    assert again["bank_size"] == answer["bank_size"]
    assert any("'probe_copy.png'" in note and "already in the bank" in note for note in again["notes"]), again["notes"]
    assert folder_state(setup["origin"].parent) == files  # nothing written
    assert info(url) == after_info


def test_concurrent_updates_are_serialised(setup):
    """Two clients post different images at the same moment: both answers hold, one builds on the other, and the
    bank ends with all four images."""
    url = setup["server"].url
    old = served_detector(setup)
    batches = [good_images(10, 2), good_images(11, 2)]
    gate = threading.Barrier(2)

    def send(images):
        gate.wait()
        return post(url, images)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(send, batches))
    assert [status for status, _ in answers] == [200, 200], answers
    assert [a["added"] for _, a in answers] == [2, 2]
    assert sorted(a["bank_size"] for _, a in answers) == [old.model.bank_size + 2, old.model.bank_size + 4]
    now = info(url)
    assert now["bank_size"] == old.model.bank_size + 4
    expected = old.add_normal([data for batch in batches for _, data in batch], say=lambda line: None)
    got = probe_answers(url, setup["probes"])
    for answer, det in zip(got, expected([data for _, data in setup["probes"]])):
        assert answer["score"] == pytest.approx(det.score, rel=1e-4, abs=ABS)
    assert section(setup["grown"])["bank_size"] == now["bank_size"]


def test_a_restart_with_the_same_command_serves_the_grown_bank(setup):
    status, answer = post(setup["server"].url, good_images(20, 1))
    assert status == 200 and answer["added"] == 1, answer
    before_info, before = info(setup["server"].url), probe_answers(setup["server"].url, setup["probes"])
    setup["server"].stop()
    check_clean(setup["server"])
    setup["server"] = start(setup)
    url = setup["server"].url
    log = setup["server"].log.read_text()
    assert f"serving the grown bank {setup['grown']} ({before_info['bank_size']} images" in log, log[-2000:]
    now = info(url)
    assert now["checkpoint"] == "fit.grown.ckpt" and now["bank_size"] == before_info["bank_size"]
    assert now["bank_changed"] == before_info["bank_changed"] and now["thresholds"] == before_info["thresholds"]
    assert now["adding"]["updates"] == 0  # updates since this start
    for a, b in zip(probe_answers(url, setup["probes"]), before):
        assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=ABS) and a["bank_size"] == b["bank_size"]
    status, again = post(url, good_images(20, 1))  # the grower starts from the grown bank
    assert status == 200 and again["added"] == 0 and again["bank_size"] == now["bank_size"], again
    assert file_sha256(setup["origin"]) == setup["origin_sha"]


def test_load_check_no_request_fails_and_answers_change_only_at_swaps(setup):
    """8 clients score continuously while 20 images are added in 4 updates: no request fails; each answer is the
    score of exactly one bank version (the in-process detector's), each client sees the versions in order, and a
    request sent after an update answered is scored by that bank or a later one."""
    url = setup["server"].url
    probes = [(f"load{i}.png", data) for i, (_, data) in enumerate(good_images(98, 4))]
    base = served_detector(setup)
    batches = []
    for k in range(4):  # each update holds a near copy of one probe, so that the probe's answer moves
        batches.append(good_images(30 + k, 4) + [(f"near{k}.png", near_copy(probes[k][1], k))])
    versions = [base]
    for batch in batches:
        versions.append(versions[-1].add_normal([data for _, data in batch], say=lambda line: None))
    expected = {v.model.bank_size: [d.score for d in v([data for _, data in probes])] for v in versions}
    assert len(expected) == 5 and len({tuple(np.round(s, 4)) for s in expected.values()}) == 5

    stop = threading.Event()
    records: List[List[Tuple[float, int, int, float]]] = [[] for _ in range(8)]
    failures: List[str] = []

    def client(c: int) -> None:
        with Client(url, timeout=120) as conn:
            i = c
            while not stop.is_set():
                p = i % len(probes)
                sent = time.monotonic()
                try:
                    status, answer = conn.predict(probes[p][1], filename=probes[p][0])
                except Exception as err:  # noqa: BLE001
                    failures.append(f"client {c}: {type(err).__name__}: {err}")
                    continue
                if status != 200:
                    failures.append(f"client {c}: {status} {answer}")
                    continue
                records[c].append((sent, p, answer["bank_size"], answer["score"]))
                i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    swaps = []
    try:
        time.sleep(1.0)
        for k, batch in enumerate(batches):
            status, answer = post(url, batch)
            assert status == 200 and answer["added"] == 5, answer
            assert answer["bank_size"] == versions[k + 1].model.bank_size and answer["workers_serving"] == 1
            swaps.append((time.monotonic(), answer["bank_size"]))
            time.sleep(0.5)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=180)
    elapsed = time.monotonic() - started
    assert not failures, failures[:5]
    count = sum(len(r) for r in records)
    per_version = {size: sum(1 for r in records for _, _, s, _ in r if s == size) for size in expected}
    print(f"\nload check: {count} requests by 8 clients in {elapsed:.1f} s, 0 failed, 4 updates of 5 images; "
          f"answers per bank size {per_version}")
    for c, rows in enumerate(records):
        assert rows, f"client {c} got no answer"
        sizes = [size for _, _, size, _ in rows]
        assert sizes == sorted(sizes), f"client {c} saw the bank versions out of order: {sizes}"
        for sent, p, size, score in rows:
            assert size in expected, (c, size)
            assert score == pytest.approx(expected[size][p], rel=1e-4, abs=ABS), (c, p, size, score)
            done = [new for when, new in swaps if when < sent]
            assert size >= (done[-1] if done else base.model.bank_size), (c, sent, size, swaps)
    assert sum(1 for n in per_version.values() if n) >= 3, per_version  # scoring went on during the updates
    assert per_version[versions[-1].model.bank_size] > 0


# ---------------------------------------------------------------------- the grown file at start, the token


def _write_section(source: Path, target: Path, **changes) -> None:
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["lightning_ad"].update(changes)
    torch.save(checkpoint, target)


def test_which_checkpoint_a_start_serves(setup, tmp_path, monkeypatch, capsys):
    origin = tmp_path / "fit.ckpt"
    shutil.copyfile(setup["origin"], origin)
    grown = tmp_path / "fit.grown.ckpt"
    assert choose_served(origin, grown, adding=True) == (origin, None)  # no grown file yet
    Detector.from_checkpoint(origin).add_normal(good_images(40, 1)[0][1], save_to=grown, say=lambda line: None)
    served, note = choose_served(origin, grown, adding=True)
    assert served == grown and note.startswith(f"lightning-ad serve: serving the grown bank {grown} (7 images")
    # grown from an earlier version of the checkpoint: left aside
    _write_section(grown, grown, grown_from_sha256="0" * 64)
    served, note = choose_served(origin, grown, adding=True)
    assert served == origin and "earlier version" in note and "the next POST /normal replaces it" in note
    # grown from another checkpoint, not a checkpoint, the served file itself: the start stops
    _write_section(grown, grown, grown_from=str(tmp_path / "other.ckpt"))
    with pytest.raises(ConfigurationError, match="was not grown from"):
        choose_served(origin, grown, adding=True)
    grown.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigurationError, match="cannot be read"):
        choose_served(origin, grown, adding=True)
    with pytest.raises(ConfigurationError, match="is the served checkpoint"):
        choose_served(origin, origin, adding=True)
    # the command line says so and ends with status 2 (its parsing and start, in this process)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        serve_main(["--ckpt_path", str(origin), "--port", str(free_port())])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "cannot be read as a lightning_ad checkpoint" in err, err[-2000:]


def test_token_rules():
    assert resolve_token(None, {}) is None
    assert resolve_token(None, {TOKEN_ENV: ""}) is None
    assert resolve_token(None, {TOKEN_ENV: TOKEN}) == TOKEN
    assert resolve_token(TOKEN, {}) == TOKEN == resolve_token(TOKEN, {TOKEN_ENV: TOKEN})
    with pytest.raises(ValueError, match="both set"):
        resolve_token(TOKEN, {TOKEN_ENV: TOKEN + "x"})
    for bad in ("short", "has a space in it 0123", "é" * 20):
        with pytest.raises(ValueError, match="16 or more"):
            resolve_token(bad, {})
    assert check_bearer(None, f"Bearer {TOKEN}").status == 403
    assert check_bearer(TOKEN, None).status == 401
    assert check_bearer(TOKEN, TOKEN).status == 401  # no scheme
    assert check_bearer(TOKEN, f"Bearer {TOKEN[:-1]}").status == 403
    assert check_bearer(TOKEN, f"bearer  {TOKEN} ") is None
