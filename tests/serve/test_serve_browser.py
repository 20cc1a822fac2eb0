"""The inspection page in a real browser: headless Chromium, a real server process on loopback.

Chromium comes from the system (``apt-get install -y chromium``; or set ``LIGHTNING_AD_CHROMIUM``
to a Chromium/Chrome executable) and is driven with Playwright (``pip install playwright``;
Playwright's own browser download is not used). The test skips, saying why, only when no
browser or no driver is found.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import bottle_dir, make_mvtec

pytest.importorskip("litserve", reason="the server needs the [serve] extra: pip install -e '.[serve]'")

from lightning_ad.serve.client import Client  # noqa: E402

pytestmark = pytest.mark.slow

#: Flags for a sandbox-less container with no network (the page needs none).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def find_chromium() -> str:
    candidates = [os.environ.get("LIGHTNING_AD_CHROMIUM")] + [
        shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no Chromium found (apt-get install -y chromium, or set LIGHTNING_AD_CHROMIUM to a Chromium/Chrome executable)")


def page_images(base: Path) -> list:
    """A defective and a good picture, both named ``000.png``, in two folders (symlinks: the data is never
    copied): the page must tell their cards apart."""
    base.mkdir(parents=True)
    bottle = bottle_dir()
    if bottle.is_dir():
        picks = {"broken_large": bottle / "test" / "broken_large" / "000.png", "good": bottle / "test" / "good" / "000.png"}
    else:
        root = make_mvtec(base / "data", n_train=0, n_good=1, n_bad=1, size=64, seed=5)
        picks = {"defect": root / "widget" / "test" / "defect" / "000.png", "good": root / "widget" / "test" / "good" / "000.png"}
    out = []
    for folder, target in picks.items():
        (base / folder).mkdir()
        (base / folder / "000.png").symlink_to(target)
        out.append(base / folder / "000.png")
    return out


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the page"
        time.sleep(0.1)


def test_page_shows_the_api_verdicts_and_scores(served, tmp_path):
    executable = find_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="no browser driver: pip install playwright "
                                                                 "(it drives the system Chromium; no browser download)")
    images = page_images(tmp_path / "upload")
    server = served["server"]
    with Client(server.url) as client:
        api = [client.predict(p.read_bytes(), filename=p.name, content_type="image/png") for p in images]
    assert all(status == 200 for status, _ in api), api
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        except Exception as err:  # noqa: BLE001 - a browser that cannot start here is a missing browser
            pytest.skip(f"Chromium at {executable} does not start: {str(err).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            external, console, failed = [], [], []
            page.on("request", lambda r: external.append(r.url) if not r.url.startswith((server.url, "data:", "blob:")) else None)
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(server.url + "/", wait_until="load")
            # (the page's Content-Security-Policy forbids eval: wait with selectors and polled evaluations)
            page.wait_for_selector("#model:has-text('threshold')", timeout=20_000)
            page.set_input_files("#files", [str(p) for p in images])
            page.wait_for_selector("article.result[data-state=done] >> nth=1", timeout=60_000)
            wait_until(lambda: page.eval_on_selector_all(
                "article.result img", "imgs => imgs.length === 2 && imgs.every(i => i.complete && i.naturalWidth > 0)"))
            page.wait_for_timeout(500)  # the browser asks for the page's icon on its own schedule
            cards = page.eval_on_selector_all("article.result", """cards => cards.map(c => ({
                filename: c.dataset.filename, index: c.dataset.index, title: c.querySelector('h2 .name').innerText,
                verdict: c.dataset.verdict, score: c.dataset.score,
                threshold: c.dataset.threshold, text: c.innerText,
                overlay: c.querySelector('img') ? [c.querySelector('img').naturalWidth, c.querySelector('img').naturalHeight] : null}))""")
            screenshot = tmp_path / "serve_page.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    assert external == [], f"the page fetched something from elsewhere: {external}"
    assert console == [] and failed == [], f"the browser logged errors: {console} {failed}"  # e.g. a 404 for /favicon.ico
    # two uploads of 000.png from different folders: distinct titles, numbered in the order given
    assert [c["filename"] for c in cards] == ["000.png", "000.png"]
    assert [c["title"] for c in cards] == ["#1 · 000.png", "#2 · 000.png"]
    for card in cards:
        _, answer = api[int(card["index"]) - 1]
        assert card["verdict"] == answer["verdict"], card
        # the page shows the float it received, not a rounded copy; its request may be batched with another,
        # which moves float32 sums in the last digits
        assert float(card["score"]) == pytest.approx(answer["score"], rel=1e-5), card
        assert float(card["threshold"]) == answer["thresholds"]["image"]
        assert answer["verdict"].upper() in card["text"].upper()
        shown = re.search(r"score ([-+0-9.e]+) · threshold ([-+0-9.e]+)", card["text"])  # 4 significant digits
        assert shown, card["text"]
        assert float(shown.group(1)) == pytest.approx(answer["score"], rel=1e-3)
        assert float(shown.group(2)) == pytest.approx(answer["thresholds"]["image"], rel=1e-3)
        assert card["overlay"] == [answer["image_size"]["width"], answer["image_size"]["height"]]
    verdicts = {answer["verdict"] for _, answer in api}
    if bottle_dir().is_dir():
        assert verdicts == {"anomalous", "normal"}, api
