"""``lightning-ad serve``: a real server process on loopback gives the Detector's numbers and refuses bad requests with a 4xx.

The server runs as a subprocess (``python -m lightning_ad.serve``) on a free loopback port,
with its own empty working folder and ``TMPDIR``: both must stay empty. With the real data
(MVTec AD bottle) the checkpoint is fitted on a few bottle images and the bottle test images
are posted; without it, on a tiny generated set.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import struct
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from conftest import MAX_BYTES, MAX_MEGAPIXELS, REPO, bottle_dir, require_real
from PIL import Image

pytest.importorskip("litserve", reason="the server needs the [serve] extra: pip install -e '.[serve]'")

from lightning_ad.data.inputs import as_rgb_uint8  # noqa: E402
from lightning_ad.inference.detector import Detector  # noqa: E402
from lightning_ad.serve.answers import regions  # noqa: E402
from lightning_ad.serve.client import Client, free_port, multipart  # noqa: E402

pytestmark = pytest.mark.slow

#: Limits the test server runs with (small, so that the over-limit bodies stay small too).


# ---------------------------------------------------------------------- fixtures (the server: conftest.served)


@pytest.fixture(scope="module")
def detector(served):
    return Detector.from_checkpoint(served["ckpt"], batch_size=4)


@pytest.fixture(scope="module")
def expected(served, detector):
    return {label(path): det for path, det in zip(served["images"], detector([str(p) for p in served["images"]]))}


def label(path: Path) -> str:
    """A file name unique among the posted images (bottle test folders reuse 000.png)."""
    return f"{path.parent.name}_{path.name}"


def health_ok(url: str) -> None:
    with Client(url, timeout=30) as client:
        assert client.health() == (200, "ok")


def assert_same(answer: Dict, det, name: str) -> None:
    assert answer["score"] == pytest.approx(det.score, rel=1e-5), name
    assert answer["decision"] == det.decision, name
    assert answer["verdict"] == {True: "anomalous", False: "normal", None: "unknown"}[det.decision]
    assert answer["normalized_score"] == pytest.approx(det.normalized_score, rel=1e-5)
    assert answer["thresholds"] == {"image": pytest.approx(det.image_threshold), "pixel": pytest.approx(det.pixel_threshold)}
    assert (answer["image_size"]["height"], answer["image_size"]["width"]) == det.size
    assert isinstance(answer["bank_size"], int) and answer["bank_size"] > 0
    assert [(b["x"], b["y"], b["width"], b["height"], b["area"]) for b in answer["boxes"]] == [
        (b["x"], b["y"], b["width"], b["height"], b["area"]) for b in regions(det.mask, det.anomaly_map)]


# ---------------------------------------------------------------------- the good path


def test_health_info_and_page(served, detector):
    url = served["url"]
    with Client(url) as client:
        assert client.health() == (200, "ok")
        status, info = client.request("GET", "/info")
        assert status == 200
        server = info.pop("server")
        assert info.pop("adding") == {"enabled": False, "endpoint": "POST /normal", "updates": 0,
                                      "grown_ckpt": served["ckpt"].stem + ".grown.ckpt"}
        assert info.pop("checkpoint") == served["ckpt"].name
        expected = json.loads(json.dumps(detector.info))
        expected.setdefault("bank_changed", detector._meta.get("bank_changed"))
        assert info == expected and info["bank_size"] == detector.model.bank_size
        assert server["max_batch_size"] == 4 and server["max_bytes"] == MAX_BYTES and server["max_megapixels"] == MAX_MEGAPIXELS
        status, page = client.request("GET", "/")
        assert status == 200 and "<title>lightning_ad" in page
        for asset in ("/static/app.js", "/static/style.css"):
            status, text = client.request("GET", asset)
            assert status == 200 and len(text) > 100
            assert "http://" not in text and "https://" not in text  # nothing from a CDN
        assert "http://" not in page and "https://" not in page
        status, _ = client.request("GET", "/static/../server.py")
        assert status == 404
        # an icon, so that a browser logs no 404 for /favicon.ico
        assert '<link rel="icon" href="/static/favicon.svg"' in page
        for icon in ("/static/favicon.svg", "/favicon.ico"):
            status, svg = client.request("GET", icon)
            assert status == 200 and svg.startswith("<svg") and svg.rstrip().endswith("</svg>")


def test_scores_equal_the_detector(served, expected):
    """Every test image, posted by 4 clients at once (so LitServe batches them), scores as the Detector."""
    images = served["images"]

    def post(path: Path):
        with Client(served["url"]) as client:
            return label(path), client.predict(path.read_bytes(), filename=label(path), content_type="image/png")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, images * 2))
    assert len(answers) == 2 * len(images)
    for name, (status, answer) in answers:
        assert status == 200, answer
        assert answer["filename"] == name
        assert_same(answer, expected[name], name)
        assert "overlay_png" not in answer
    decisions = {expected[label(p)].decision for p in images}
    if bottle_dir().is_dir():
        assert decisions == {True, False}, "bottle: expected both verdicts among good and broken bottles"


def test_json_and_raw_bodies_and_overlay(served, expected, detector):
    path = served["images"][-1]
    data = path.read_bytes()
    det = expected[label(path)]
    with Client(served["url"]) as client:
        status, answer = client.request("POST", "/predict", json.dumps(
            {"image": base64.b64encode(data).decode(), "filename": label(path), "overlay": True}).encode(), "application/json")
        assert status == 200 and answer["filename"] == label(path)
        assert_same(answer, det, path.name)
        status, raw = client.request("POST", "/predict?overlay=1", data, "image/png")
        assert status == 200 and raw["filename"] is None
        assert_same(raw, det, path.name)
        status, url_form = client.request("POST", "/predict", json.dumps(
            {"image": "data:image/png;base64," + base64.b64encode(data).decode()}).encode(), "application/json")
        assert status == 200 and url_form["score"] == pytest.approx(det.score, rel=1e-5)
    # the overlay is the Detection's own (PNG is lossless; float rounding of the map between batch
    # sizes may move a few pixels to the next colour of the map)
    reference = det.overlay(as_rgb_uint8(str(path))).astype(int)
    for got in (answer, raw):
        overlay = np.asarray(Image.open(io.BytesIO(base64.b64decode(got["overlay_png"]))).convert("RGB")).astype(int)
        assert overlay.shape == reference.shape
        assert (overlay != reference).any(axis=2).mean() < 0.005
        assert np.abs(overlay - reference).mean() < 0.5
    # the inspected box is the crop mapped back: the finite part of the map
    finite = np.isfinite(det.anomaly_map)
    box = answer["inspected"]
    assert finite[box["y"] : box["y"] + box["height"], box["x"] : box["x"] + box["width"]].all()
    assert finite.sum() == box["width"] * box["height"]


def readme_curl_lines() -> str:
    """The README's bash block of curl lines for the server, as written (comments and all)."""
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S) if "curl " in b]
    assert len(blocks) == 1, f"README.md: {len(blocks)} bash blocks with curl lines"
    return blocks[0]


def test_the_readme_curl_lines_work_on_a_bottle_image(served, detector, tmp_path):
    """Exactly the README's curl lines (the server's port put in place of 8000), run by bash in a folder
    where ``bottle`` is the real data: each answers the Detector's detection of the image. The JSON line
    used to fail with 'Argument list too long' (a photo's base64 in one argument)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the README's curl lines cannot be run here")
    bottle = require_real("mvtec_ad", "bottle")
    script = readme_curl_lines()
    assert "127.0.0.1:8000" in script
    script = script.replace("127.0.0.1:8000", served["url"].split("//", 1)[1])
    (tmp_path / "bottle").symlink_to(bottle)
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answers, text, position = [], done.stdout, 0
    while position < len(text.rstrip()):
        answer, position = json.JSONDecoder().raw_decode(text, position)
        answers.append(answer)
    assert len(answers) == script.count("curl "), done.stdout[:2000]
    (det,) = detector([str(bottle / "test" / "broken_large" / "000.png")])
    for answer in answers:
        assert "error" not in answer, answer
        assert_same(answer, det, "000.png")
    assert answers[0]["filename"] == "000.png" and answers[0]["overlay_png"]


def test_images_of_other_sizes_and_modes(served, detector):
    """A grey JPEG of another size and a 16-bit PNG score as the Detector scores them (maps at their own size)."""
    rgb = as_rgb_uint8(str(served["images"][0]))
    grey = np.asarray(Image.fromarray(rgb).convert("L").resize((300, 200)))
    jpeg = io.BytesIO()
    Image.fromarray(grey).save(jpeg, "JPEG", quality=90)
    sixteen = io.BytesIO()
    Image.fromarray(grey.astype(np.uint16) * 257).save(sixteen, "PNG")
    with Client(served["url"]) as client:
        for name, data in (("grey.jpg", jpeg.getvalue()), ("grey16.png", sixteen.getvalue())):
            status, answer = client.predict(data, filename=name)
            assert status == 200, answer
            det = detector(Image.open(io.BytesIO(data)))[0]
            assert answer["image_size"] == {"width": 300, "height": 200}
            assert_same(answer, det, name)


# ---------------------------------------------------------------------- bad requests


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 40_000) -> bytes:
    """A 1-bit PNG that declares ``side`` x ``side`` pixels (1.6 gigapixels) in a few hundred bytes."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side // 8 + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def png_bytes(h: int, w: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def bad_requests(good: bytes) -> Dict[str, Tuple[bytes, str, str, int, str]]:
    """name -> (body, content type, path, expected status, expected error code)."""
    def file(data: bytes, filename: str = "x.png", ctype: str = "image/png") -> Tuple[bytes, str]:
        return multipart([("file", filename, data, ctype)])

    noise = np.random.default_rng(0).integers(0, 256, MAX_BYTES + 10, dtype=np.uint8).tobytes()
    cases = {
        "not_an_image": (*file(b"hello, this is not a picture\n" * 20), 400, "not_an_image"),
        "truncated": (*file(good[: len(good) // 2]), 400, "corrupt_image"),
        "truncated_header": (*file(good[:40]), 400, None),
        "zero_bytes": (*file(b""), 400, "empty_file"),
        "over_bytes": (*file(noise), 413, "too_large"),
        "over_bytes_raw": (noise, "image/png", 413, "too_large"),
        "over_megapixels": (*file(png_bytes(1000, 1200)), 413, "too_many_pixels"),
        "decompression_bomb": (*file(bomb_png()), 413, "decompression_bomb"),
        "wrong_content_type": (good, "text/plain", 415, "unsupported_media_type"),
        "no_content_type": (good, "", 415, "unsupported_media_type"),
        "wrong_part_type": (*file(good, ctype="text/html"), 415, "unsupported_media_type"),
        "parent_folder_name": (*file(good, "../../etc/passwd.png"), 400, "bad_filename"),
        "absolute_name": (*file(good, "/tmp/x.png"), 400, "bad_filename"),
        "windows_name": (*file(good, "..\\..\\x.png"), 400, "bad_filename"),
        "json_parent_folder_name": (json.dumps({"image": base64.b64encode(good).decode(), "filename": "../x.png"}).encode(),
                                    "application/json", 400, "bad_filename"),
        "malformed_json": (b'{"image": ', "application/json", 400, "bad_request"),
        "bad_base64": (json.dumps({"image": "***not base64***"}).encode(), "application/json", 400, "bad_request"),
        "json_without_image": (b'{"picture": "x"}', "application/json", 400, "bad_request"),
        "multipart_without_file": (*multipart([], {"overlay": "1"}), 400, "bad_request"),
        "multipart_two_files": (*multipart([("a", "a.png", good, "image/png"), ("b", "b.png", good, "image/png")]), 400, "bad_request"),
        "multipart_cut": (file(good)[0][:-200], file(good)[1], 400, None),
        "gif": (*file(b"GIF89a" + b"\x00" * 50, "x.gif", "image/gif"), 400, "not_an_image"),
    }
    return {name: (body, ctype, "/predict", status, code) for name, (body, ctype, status, code) in cases.items()}


BAD_CASES = sorted(bad_requests(b"").keys())


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_request_gets_a_4xx_and_the_server_goes_on(served, case):
    good = served["images"][0].read_bytes()
    body, ctype, path, expected_status, expected_code = bad_requests(good)[case]
    with Client(served["url"]) as client:
        status, answer = client.request("POST", path, body, ctype or None)
    assert status == expected_status, (case, answer)
    assert isinstance(answer, dict) and answer.get("detail"), answer  # a JSON error naming the problem
    if expected_code:
        assert answer["error"] == expected_code, answer
    assert answer["status"] == status
    health_ok(served["url"])


def test_bad_requests_in_a_batch_do_not_fail_the_good_ones(served, expected):
    """Truncated files pass the gate (their header is fine) and reach the batch: they get their own 400."""
    images = served["images"]
    jobs = []
    for i, path in enumerate(images * 2):
        data = path.read_bytes()
        jobs.append((label(path), data))
        if i % 2 == 0:
            jobs.append((None, data[: len(data) // 2]))

    def post(job):
        name, data = job
        with Client(served["url"]) as client:
            return name, client.predict(data, filename=name or "cut.png", content_type="image/png")

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, jobs))
    for name, (status, answer) in answers:
        if name is None:
            assert status == 400 and answer["error"] == "corrupt_image", answer
        else:
            assert status == 200, answer
            assert_same(answer, expected[name], name)
    health_ok(served["url"])


def test_adding_images_is_off_without_a_token(served, detector):
    """A server started without --normal_token or LIGHTNING_AD_NORMAL_TOKEN refuses POST /normal with 403, whatever
    the token sent, and writes nothing."""
    folder = served["ckpt"].parent
    before = sorted(p.name for p in folder.iterdir())
    data = served["images"][0].read_bytes()
    with Client(served["url"]) as client:
        for token in (None, "anything-at-all-0123456789"):
            status, answer = client.add_normal([("x.png", data)], token=token)
            assert status == 403 and answer["error"] == "adding_off", answer
            assert "start the server with --normal_token or LIGHTNING_AD_NORMAL_TOKEN" in answer["detail"]
        status, info = client.request("GET", "/info")
        assert info["bank_size"] == detector.model.bank_size and info["adding"]["enabled"] is False
    assert sorted(p.name for p in folder.iterdir()) == before
    health_ok(served["url"])


def test_serve_command_line_errors(tmp_path, monkeypatch, capsys):
    """Bad options and a missing checkpoint end with status 2 and a message, before a server starts or a file is
    written. (The command's own parsing, run in this process: ``lightning_ad.serve.server.serve_main``.)"""
    from lightning_ad.serve.growth import TOKEN_ENV
    from lightning_ad.serve.server import serve_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(TOKEN_ENV, raising=False)

    def run(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            serve_main(list(args))
        assert exit_.value.code == 2, args
        return capsys.readouterr().err

    assert "does not exist" in run("--ckpt_path", str(tmp_path / "none.ckpt"), "--port", str(free_port()))
    assert "--port 80" in run("--ckpt_path", "x.ckpt", "--port", "80")
    assert "max_megapixels" in run("--ckpt_path", "x.ckpt", "--max_megapixels", "0")
    short = run("--ckpt_path", "x.ckpt", "--normal_token", "short")
    assert "--normal_token" in short and "16 or more" in short
    assert list(tmp_path.iterdir()) == []

